"""The video DiT. Run: python -m pytest tests/test_model.py"""
from dataclasses import asdict, replace

import pytest
import torch

from flow import flow_loss, interpolate, velocity_target, x0_from_v
from model import (DiTConfig, Sampling, VideoDiT, add_lora, condition, load_checkpoint,
                   merged_state_dict, patchify, rope_angles, rotate, tokenize, unpatchify)

CFG = DiTConfig(width=64, depth=2, heads=2, frames=4, resolution=16)


def inputs(B=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, 3, CFG.frames, CFG.resolution, CFG.resolution, generator=g)
    cond = condition(torch.randn(B, 3, 2, 16, 16, generator=g), None, CFG.frames)
    ids, mask = tokenize(["a red circle on a black background", ""][:B], CFG.text_len)
    return x, torch.rand(B, generator=g), cond, ids, mask


def test_patchify_round_trip_and_token_layout():
    x = torch.randn(2, 3, 4, 16, 16)
    tokens = patchify(x, 2, 4)
    assert tokens.shape == (2, 2 * 4 * 4, 2 * 4 * 4 * 3)
    assert torch.equal(unpatchify(tokens, 3, 4, 16, 16, 2, 4), x)
    # token 0 holds the first 2 frames of the top-left 4x4 pixels
    assert torch.equal(tokens[0, 0].reshape(2, 4, 4, 3), x[0, :, :2, :4, :4].permute(1, 2, 3, 0))


def test_rotary_scores_depend_on_the_offset_only():
    """With 3-D rotary angles, q . k of two tokens depends on their (frame, row, column) offset,
    not on where they are; a rotation keeps the norm."""
    t, h, w, hd = 4, 8, 8, 48
    angles = rope_angles(t, h, w, hd)  # [N, hd / 2], tokens in (frame, row, column) order
    assert angles.shape == (t * h * w, hd // 2)
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, hd, generator=g)
    q_all = rotate(q.expand(1, 1, t * h * w, hd), angles)[0, 0]  # [N, hd]
    k_all = rotate(k.expand(1, 1, t * h * w, hd), angles)[0, 0]
    index = lambda f, r, c: (f * h + r) * w + c  # noqa: E731
    offset = (1, 2, -3)
    scores = [q_all[index(*p)] @ k_all[index(*(a + b for a, b in zip(p, offset)))]
              for p in [(0, 0, 3), (1, 4, 7), (2, 5, 5)]]
    torch.testing.assert_close(scores[1], scores[0])
    torch.testing.assert_close(scores[2], scores[0])
    other = q_all[index(0, 0, 3)] @ k_all[index(1, 2, 1)]  # another offset, another score
    assert not torch.allclose(other, scores[0])
    torch.testing.assert_close(q_all.norm(dim=-1), q.norm().expand(t * h * w))


def test_output_shape_and_exactly_zero_at_init():
    model = VideoDiT(CFG)
    x, t, cond, ids, mask = inputs()
    out = model(x, t, cond, ids, mask)
    assert out.shape == x.shape
    assert torch.equal(out, torch.zeros_like(out))


def test_x_prediction_and_the_u_vit_head_start_at_a_known_output():
    """adaLN-Zero's zero output layer: a v-predicting model with U-ViT's long skip and output
    convolution still predicts v = 0 at init; an x-predicting one predicts x0_hat = 0, so its
    velocity is x_t / t, and one Euler step to the data end lands on 0."""
    x, t, cond, ids, mask = inputs()
    head = VideoDiT(replace(CFG, long_skip=True, out_conv=True))
    assert torch.equal(head(x, t, cond, ids, mask), torch.zeros_like(x))
    t = torch.tensor([0.3, 0.8])
    v = VideoDiT(replace(CFG, prediction="x"))(x, t, cond, ids, mask)
    torch.testing.assert_close(v, x / t.view(-1, 1, 1, 1, 1))
    torch.testing.assert_close(x0_from_v(x, v, t), torch.zeros_like(x))


def test_a_checkpoint_loads_with_its_recorded_prediction_or_is_refused(tmp_path):
    old_cfg = asdict(CFG)
    del old_cfg["prediction"], old_cfg["long_skip"], old_cfg["out_conv"]  # before the levers
    for name, cfg in (("old", old_cfg), ("x", asdict(replace(CFG, prediction="x"))),
                      ("eps", asdict(replace(CFG, prediction="eps")))):
        torch.save({"model_cfg": cfg, "sampling": {}}, tmp_path / f"{name}.pt")
    assert load_checkpoint(str(tmp_path / "old.pt")).model_cfg.prediction == "v"
    assert load_checkpoint(str(tmp_path / "x.pt")).model_cfg.prediction == "x"
    with pytest.raises(ValueError, match="eps.pt: prediction 'eps'; this svi knows v and x"):
        load_checkpoint(str(tmp_path / "eps.pt"))


def test_condition_layout():
    motion, anchor = torch.randn(1, 3, 2, 8, 8), torch.randn(1, 3, 8, 8)
    shot = condition(motion, anchor, 6)
    assert shot.shape == (1, 4, 6, 8, 8)
    assert torch.equal(shot[:, 0, :2], torch.ones(1, 2, 8, 8))      # mask marks motion slots
    assert torch.equal(shot[:, 0, 2:], torch.zeros(1, 4, 8, 8))
    assert torch.equal(shot[:, 1:, :2], motion)
    assert torch.equal(shot[:, 1:, 5], anchor)                        # anchor repeated
    film = condition(motion, None, 6)
    assert torch.equal(film[:, 1:, 2:], torch.zeros(1, 3, 4, 8, 8))   # zeros in film mode


def test_any_prompt_is_accepted():
    prompts = ["", "x" * 10000, "ünïcödé ✓ 視頻 🎥", "\x00\n\t"]
    ids, mask = tokenize(prompts, 16)
    assert ids.shape == (4, 17) and mask[:, 0].all()       # BOS always present
    assert mask[0].sum() == 1 and mask[1].sum() == 17      # empty -> BOS only; long -> cut
    model = VideoDiT(CFG)
    torch.nn.init.normal_(model.final_layer.weight)        # make the output depend on the text
    x, t, cond, _, _ = inputs(B=2)
    for pair in (prompts[:2], prompts[2:]):
        out = model(x, t, cond, *tokenize(pair, CFG.text_len))
        assert torch.isfinite(out).all()


def test_prompt_and_control_change_the_output():
    torch.manual_seed(0)
    model = VideoDiT(CFG)
    for p in model.parameters():  # leave the zero init, so every input can matter
        torch.nn.init.normal_(p, std=0.1)
    x, t, cond, ids, mask = inputs(B=1)
    base = model(x, t, cond, ids, mask)
    other = model(x, t, cond, *tokenize(["a blue square on a gray background"], CFG.text_len))
    control = torch.full((1, CFG.frames, 2), 0.3)
    steered = model(x, t, cond, ids, mask, control)
    assert not torch.allclose(base, other) and not torch.allclose(base, steered)


def test_rotary_positions_add_no_weights_and_can_be_left_out():
    """Rotary positions are on by default; --no-rope gives the same weights another function."""
    assert CFG.rope
    torch.manual_seed(0)
    with_rope = VideoDiT(CFG)
    for p in with_rope.parameters():
        torch.nn.init.normal_(p, std=0.1)
    without = VideoDiT(replace(CFG, rope=False))
    without.load_state_dict(with_rope.state_dict())  # strict: rope has no parameters
    x, t, cond, ids, mask = inputs()
    a, b = with_rope(x, t, cond, ids, mask), without(x, t, cond, ids, mask)
    assert a.shape == b.shape == x.shape and not torch.allclose(a, b)


def test_a_checkpoint_from_before_sampling_was_recorded_takes_it_from_training(tmp_path):
    torch.save({"model_cfg": asdict(CFG), "train_cfg": {"motion_frames": 3, "shift": 2.0}},
               tmp_path / "old.pt")  # nor did it name its world: the hard one, then the only
    sampling = load_checkpoint(str(tmp_path / "old.pt")).sampling
    assert sampling == Sampling(motion_frames=3, shift=2.0, world="hard")


def test_overfits_one_batch():
    torch.manual_seed(0)
    model = VideoDiT(CFG)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand(2, 3, 4, 16, 16, generator=g).round() * 2 - 1
    noise = torch.randn(x0.shape, generator=g)
    t = torch.tensor([0.3, 0.7])
    _, _, cond, ids, mask = inputs()
    losses = []
    for _ in range(150):
        loss = flow_loss(model(interpolate(x0, noise, t), t, cond, ids, mask),
                         velocity_target(x0, noise))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.05 * losses[0], (losses[0], losses[-1])


def test_lora_starts_as_the_base_and_merges_exactly():
    torch.manual_seed(0)
    base = VideoDiT(CFG)
    for p in base.parameters():
        torch.nn.init.normal_(p, std=0.05)
    x, t, cond, ids, mask = inputs()
    before = base(x, t, cond, ids, mask)
    adapted = add_lora(base, rank=4)
    torch.testing.assert_close(adapted(x, t, cond, ids, mask), before)
    trained = [n for n, p in adapted.named_parameters() if p.requires_grad]
    assert trained and all("lora_" in n for n in trained)
    for n, p in adapted.named_parameters():
        if n.endswith("lora_b"):
            torch.nn.init.normal_(p, std=0.1)
    after = adapted(x, t, cond, ids, mask)
    plain = VideoDiT(CFG)
    plain.load_state_dict(merged_state_dict(adapted.state_dict()))
    torch.testing.assert_close(plain(x, t, cond, ids, mask), after, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(after, before)
