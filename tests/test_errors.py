"""Error recycling. Run: python -m pytest tests/test_errors.py"""
import io

import torch

from errors import ErrorBank, conditioning_error, inject, one_step_errors, vanish
from flow import interpolate, noise_from_v, velocity_target, x0_from_v
from model import condition

G = lambda seed: torch.Generator().manual_seed(seed)


def test_one_step_errors_match_the_flow_steps_and_closed_forms():
    g = G(0)
    x_t, v_hat, v_star = (torch.randn(3, 3, 4, 8, 8, generator=g) for _ in range(3))
    t = torch.tensor([0.05, 0.5, 0.9])
    e_vid, e_noise = one_step_errors(v_hat, v_star, t)
    torch.testing.assert_close(e_vid, x0_from_v(x_t, v_hat, t) - x0_from_v(x_t, v_star, t))
    torch.testing.assert_close(e_noise, noise_from_v(x_t, v_hat, t) - noise_from_v(x_t, v_star, t))
    tt = t.view(3, 1, 1, 1, 1)
    torch.testing.assert_close(e_vid, -tt * (v_hat - v_star))
    torch.testing.assert_close(e_noise, (1 - tt) * (v_hat - v_star))


def test_errors_of_an_x_predicting_model_are_its_clean_clip_and_noise_misses():
    """With x-prediction the banked errors keep their closed forms: e_vid = x0_hat - x0, the
    network's own clean clip minus the real one, and e_noise = noise_hat - noise."""
    from dataclasses import replace as with_
    from model import DiTConfig, VideoDiT, tokenize
    torch.manual_seed(0)
    net = VideoDiT(DiTConfig(width=32, depth=1, heads=1, frames=4, resolution=8, prediction="x"))
    torch.nn.init.normal_(net.final_layer.weight, std=0.1)  # an x0_hat that is not zero
    raw = VideoDiT(with_(net.cfg, prediction="v"))  # the same weights, its output unconverted
    raw.load_state_dict(net.state_dict())
    g = G(1)
    x0, noise = (torch.randn(2, 3, 4, 8, 8, generator=g) for _ in range(2))
    t = torch.tensor([0.3, 0.9])
    x_t = interpolate(x0, noise, t)
    cond = condition(torch.randn(2, 3, 2, 8, 8, generator=g), None, 4)
    ids, mask = tokenize(["a", "b"], net.cfg.text_len)
    x0_hat = raw(x_t, t, cond, ids, mask)
    e_vid, e_noise = one_step_errors(net(x_t, t, cond, ids, mask), velocity_target(x0, noise), t)
    torch.testing.assert_close(e_vid, x0_hat - x0)
    noise_hat = (x_t - (1 - t.view(-1, 1, 1, 1, 1)) * x0_hat) / t.view(-1, 1, 1, 1, 1)
    torch.testing.assert_close(e_noise, noise_hat - noise)


def filled_bank(anchors=(0.9, 0.5, 0.1), capacity=4, replace="l2", per_bucket=4):
    bank = ErrorBank(torch.tensor(anchors), capacity, replace, dtype=torch.float32)
    for i, a in enumerate(anchors):
        bank.add(torch.randn(per_bucket, 3, 4, 8, 8, generator=G(i)), torch.full((per_bucket,), a))
    return bank


def test_bucket_is_the_nearest_anchor():
    bank = ErrorBank(torch.tensor([0.95, 0.6, 0.3, 0.0]), 2)
    assert bank.bucket_of(torch.tensor([1.0, 0.8, 0.7, 0.44, 0.46, 0.01])).tolist() == \
        [0, 0, 1, 2, 1, 3]


def test_capacity_is_respected():
    for replace in ("l2", "random", "fifo"):
        bank = filled_bank(capacity=3, replace=replace, per_bucket=10)
        assert bank.count.tolist() == [3, 3, 3] and len(bank) == 9


def test_l2_replacement_evicts_the_most_similar_entry():
    bank = ErrorBank(torch.tensor([0.5]), 3, "l2", dtype=torch.float32)
    stored = torch.stack([torch.full((2, 2), v) for v in (0.0, 5.0, 10.0)])
    bank.add(stored, torch.full((3,), 0.5))
    bank.add(torch.full((1, 2, 2), 6.0), torch.tensor([0.5]))  # nearest to 5.0
    assert sorted(bank.errors[0, :, 0, 0].tolist()) == [0.0, 6.0, 10.0]


def test_fifo_replacement_evicts_the_oldest_entry():
    bank = ErrorBank(torch.tensor([0.5]), 2, "fifo", dtype=torch.float32)
    for v in (1.0, 2.0, 3.0):
        bank.add(torch.full((1, 2), v), torch.tensor([0.5]))
    assert sorted(bank.errors[0, :, 0].tolist()) == [2.0, 3.0]


def test_sampling_within_a_bucket_and_pooled_over_all():
    bank = ErrorBank(torch.tensor([0.9, 0.5, 0.1]), 4, dtype=torch.float32)
    assert bank.sample(torch.tensor([0.5]), G(0)) is None and bank.sample_pooled(1, G(0)) is None
    for i, a in enumerate((0.9, 0.5, 0.1)):  # bucket i holds the value i + 1 only
        bank.add(torch.full((2, 3), float(i + 1)), torch.full((2,), a))
    drawn = bank.sample(torch.tensor([0.88, 0.52, 0.12, 0.3]), G(1))
    assert drawn[:, 0].tolist() == [1.0, 2.0, 3.0, 2.0]
    pooled = bank.sample_pooled(200, G(2))[:, 0]
    assert set(pooled.tolist()) == {1.0, 2.0, 3.0}
    one = ErrorBank(torch.tensor([0.9, 0.1]), 2, dtype=torch.float32)
    one.add(torch.ones(1, 3), torch.tensor([0.9]))
    assert one.sample(torch.tensor([0.1]), G(0)).abs().sum() == 0  # empty bucket: no error


def test_state_round_trip_loads_with_weights_only():
    bank = filled_bank(replace="random", per_bucket=6)
    buffer = io.BytesIO()
    torch.save(bank.state_dict(), buffer)
    buffer.seek(0)
    other = ErrorBank(torch.tensor([0.0]), 4, "random", dtype=torch.float32)
    other.load_state_dict(torch.load(buffer, weights_only=True))
    assert torch.equal(other.errors, bank.errors) and torch.equal(other.count, bank.count)
    extra = torch.randn(5, 3, 4, 8, 8, generator=G(9))
    bank.add(extra, torch.full((5,), 0.5))
    other.add(extra, torch.full((5,), 0.5))
    assert torch.equal(other.errors, bank.errors)  # replacement continues identically
    assert torch.equal(bank.sample(torch.tensor([0.1, 0.9]), G(3)),
                       other.sample(torch.tensor([0.1, 0.9]), G(3)))


def batch():
    g = G(5)
    x0, noise = torch.randn(4, 3, 4, 8, 8, generator=g), torch.randn(4, 3, 4, 8, 8, generator=g)
    cond = condition(x0[:, :, :2], None, 4)
    return x0, noise, cond, torch.tensor([0.1, 0.4, 0.6, 0.95])


def test_injection_is_the_identity_with_empty_banks_or_clean_gates():
    x0, noise, cond, t = batch()
    empty = ErrorBank(torch.tensor([0.9, 0.5, 0.1]), 4)
    x_t, v, c, _ = inject(x0, noise, cond, t, empty, empty, G(0), p_img=1.0, p_vid=1.0,
                          p_noise=1.0, p_clean=0.0)
    assert torch.equal(x_t, interpolate(x0, noise, t))
    assert torch.equal(v, velocity_target(x0, noise))
    assert torch.equal(c, cond)
    full = filled_bank()
    x_t, v, c, clean = inject(x0, noise, cond, t, full, full, G(0), p_img=1.0, p_vid=1.0,
                              p_noise=1.0, p_clean=1.0)
    assert clean.all() and torch.equal(c, cond)
    assert torch.equal(x_t, interpolate(x0, noise, t))
    assert torch.equal(v, velocity_target(x0, noise))


def test_injection_adds_errors_where_the_paper_says():
    x0, noise, cond, t = batch()
    bank_vid, bank_noise = filled_bank(), filled_bank()
    x_t, v, c, clean = inject(x0, noise, cond, t, bank_vid, bank_noise, G(0), p_img=1.0,
                              p_vid=1.0, p_noise=1.0, p_clean=0.0)
    assert not clean.any()
    g = G(0)  # replay inject's draws: gates, then e_vid, e_noise
    torch.rand(4, 4, generator=g)
    e_vid, e_noise = bank_vid.sample(t, g), bank_noise.sample(t, g)
    torch.testing.assert_close(x_t, interpolate(x0 + e_vid, noise + e_noise, t))
    torch.testing.assert_close(v, (noise + e_noise) - x0)  # the target points at the clean clip
    assert torch.equal(c[:, 0], cond[:, 0])                # mask untouched
    assert torch.equal(c[:, :, 2:], cond[:, :, 2:])        # only the motion slots change
    assert not torch.equal(c[:, 1:, :2], cond[:, 1:, :2])


def test_conditioning_errors_from_low_flow_times_or_from_either_bank():
    bank = ErrorBank(torch.tensor([0.9, 0.5, 0.1]), 4, dtype=torch.float32)
    frame = torch.arange(4.0).view(1, 1, 4, 1, 1)  # an error's value: 10 (bucket + 1) + frame
    for i, a in enumerate((0.9, 0.5, 0.1)):
        bank.add((10.0 * (i + 1) + frame).expand(2, 3, 4, 2, 2), torch.full((2,), a))
    low = conditioning_error([bank], 200, 2, G(0), t_max=0.5)  # [200, C, m, H, W]
    assert low.shape == (200, 3, 2, 2, 2)
    assert set((low[:, 0, 0, 0, 0] // 10).tolist()) == {2.0, 3.0}  # buckets 0.5 and 0.1 only
    assert (low[:, :, 1] - low[:, :, 0] == 1).all()  # a window of consecutive frames
    assert len(set(low[:, 0, 0, 0, 0].tolist())) == 6  # every start: frames 0-1, 1-2, 2-3
    assert conditioning_error([bank], 1, 2, G(0), t_max=0.05) is None  # no bucket that low
    rollout = ErrorBank(torch.tensor([0.0]), 8, dtype=torch.float32)
    rollout.add(torch.full((1, 3, 2, 2, 2), -1.0), torch.zeros(1))  # m frames already
    assert torch.equal(conditioning_error([rollout], 3, 2, G(2)),
                       torch.full((3, 3, 2, 2, 2), -1.0))
    mixed = conditioning_error([bank, rollout], 200, 2, G(1))[:, 0, 0, 0, 0]
    assert 60 < (mixed == -1).sum() < 140 and (mixed > 0).sum() == 200 - (mixed == -1).sum()


def test_vanish_erases_the_largest_shape_and_nothing_else():
    real = torch.full((1, 3, 2, 8, 8), -1.0)  # [S, C, m, H, W], a black background
    real[0, 0, :, :3, :3] = 1.0               # a red square, 9 pixels a frame
    real[0, 1, :, 5:7, 5:7] = 1.0             # a green one, 4 pixels
    erased = real + vanish(real)
    assert (erased[0, :, :, :3, :3] == -1).all()                 # red is gone
    assert torch.equal(erased[0, :, :, 3:], real[0, :, :, 3:])   # the rest is untouched
    assert vanish(torch.full((1, 3, 2, 8, 8), 0.5)).abs().max() == 0  # no shape: no error
