"""Training and sampling end to end, on tiny settings. Run: python -m pytest tests/test_train.py"""
import os
from dataclasses import replace
import socket
import sys
from contextlib import nullcontext

import imageio.v3 as iio
import numpy as np
import pytest
import torch

import sample
import train
from data import DEFAULT_WORLD, ShapesSource, ShapesWorld, to_unit
from errors import vanish
from flow import euler_sample
from model import Sampling, condition, from_checkpoint, merged_state_dict, tokenize
from conftest import run, tiny_config


class Crash(Exception):
    pass


def run_with_crash(cfg, monkeypatch, at_step):
    """Run cfg, 'killed' right after the checkpoint of at_step, then resumed to the end."""
    save = train.save_checkpoint

    def save_then_crash(path, state):
        save(path, state)
        if state.step == at_step:
            raise Crash

    monkeypatch.setattr(train, "save_checkpoint", save_then_crash)
    with pytest.raises(Crash):
        train.main(cfg)
    monkeypatch.setattr(train, "save_checkpoint", save)
    cfg.resume = True
    return train.main(cfg)


def assert_same_run(a, b):
    for x, y in zip(a[:2], b[:2]):  # model and EMA
        for (name, p), q in zip(x.state_dict().items(), y.state_dict().values()):
            assert torch.equal(p, q), name
    for x, y in zip(a[2:5], b[2:5]):  # error banks
        assert torch.equal(x.count, y.count)
        assert (x.errors is None and y.errors is None) or torch.equal(x.errors, y.errors)
    if a[5] is not None:  # the rollout pool
        for (name, x), y in zip(a[5].state_dict().items(), b[5].state_dict().values()):
            assert torch.equal(x, y) if torch.is_tensor(x) else x == y, name


def test_resumed_run_is_bitwise_identical(tmp_path, monkeypatch):
    straight = train.main(tiny_config(tmp_path / "a", steps=6))
    resumed = run_with_crash(tiny_config(tmp_path / "b", steps=6, ckpt_every=3), monkeypatch, 3)
    assert_same_run(straight, resumed)
    assert len(open(tmp_path / "b" / "log.jsonl").readlines()) == 6


def test_resume_alone_goes_on_with_the_flags_the_run_began_with(tmp_path, monkeypatch):
    flags = dict(t_sampling="logit-normal", t_mean=0.8, cond_leak=0.5, prediction="x", steps=6)
    straight = train.main(tiny_config(tmp_path / "a", **flags))
    save = train.save_checkpoint

    def save_then_crash(path, state):
        save(path, state)
        if state.step == 3:
            raise Crash

    monkeypatch.setattr(train, "save_checkpoint", save_then_crash)
    with pytest.raises(Crash):
        train.main(tiny_config(tmp_path / "b", ckpt_every=3, **flags))
    monkeypatch.setattr(train, "save_checkpoint", save)
    cfg = train.parse_args(["--resume", "--out", str(tmp_path / "b")])  # no other flag
    assert (cfg.t_sampling, cfg.cond_leak, cfg.steps, cfg.frames) == ("logit-normal", 0.5, 6, 4)
    assert_same_run(straight, train.main(cfg))
    assert train.parse_args(["--resume", "--out", str(tmp_path / "b"), "--steps", "9"]).steps == 9


def test_a_run_exports_its_small_copy_at_every_checkpoint(tmp_path):
    export = tmp_path / "base.pt"
    cfg = tiny_config(tmp_path / "run", steps=4, ckpt_every=2, export=str(export))
    train.main(replace(cfg, steps=2))  # a long run, stopped
    assert torch.load(export, weights_only=True)["step"] == 2
    train.main(replace(cfg, resume=True))
    assert torch.load(export, weights_only=True)["step"] == 4


def test_erft_resume_is_bitwise_identical_bank_included(tmp_path, monkeypatch, base_ckpt):
    erft = dict(steps=6, erft=True, init_from=base_ckpt, p_clean=0.0, capacity=2, buckets=3,
                t_sampling="uniform")  # times in every bucket, so the banks fill
    straight = train.main(tiny_config(tmp_path / "a", **erft))
    resumed = run_with_crash(tiny_config(tmp_path / "b", ckpt_every=3, **erft), monkeypatch, 3)
    assert len(straight[2]) == 6 and len(straight[3]) == 6  # 3 buckets x 2, full
    assert_same_run(straight, resumed)


def test_rollout_errors_are_banked_and_a_resumed_run_is_bitwise(tmp_path, monkeypatch, base_ckpt):
    erft = dict(steps=4, batch_size=4, erft=True, init_from=base_ckpt, p_clean=0.0,
                error_source="both", rollout_every=2, rollout_steps=2)
    straight = train.main(tiny_config(tmp_path / "a", **erft))
    resumed = run_with_crash(tiny_config(tmp_path / "b", ckpt_every=2, **erft), monkeypatch, 2)
    assert_same_run(straight, resumed)
    bank_roll = straight[4]  # steps 0 and 2, a quarter of the batch each: the m motion frames
    assert len(bank_roll) == 2 and bank_roll.errors.shape[2:] == (3, 2, 16, 16)
    stored = bank_roll.errors[0, :2].float()
    assert torch.isfinite(stored).all() and (stored.abs().amax(dim=(1, 2, 3, 4)) > 0).all()


@pytest.mark.parametrize("chain", [0.0, 1.0])
def test_a_chained_rollout_starts_from_motion_frames_carrying_a_banked_error(tmp_path, chain):
    cfg = tiny_config(tmp_path, batch_size=4, erft=True, error_source="rollout",
                      rollout_chain=chain, rollout_steps=2)
    run = train.build(cfg, "cpu")
    run.bank_roll.add(torch.full((1, 3, 2, 16, 16), 0.5), torch.zeros(1))  # one banked error
    seen, forward = [], run.ema.forward
    run.ema.forward = lambda x, t, cond, *a, **k: seen.append(cond) or forward(x, t, cond, *a, **k)
    procs = train.Procs(rank=0, ranks=1, device="cpu", micro=4, accum=1,
                        autocast=nullcontext())
    batch = train.make_batch(ShapesSource(16, 2, DEFAULT_WORLD), cfg, 4, np.random.default_rng(0),
                             torch.Generator().manual_seed(0), run.ema.cfg.text_len, "cpu")
    train.bank_rollout_errors(run, batch, cfg, procs)
    real = batch.cond[:1]  # a quarter of the batch rolls out; [1, 1 + C, T, H, W]
    assert len(seen) == 2 and all(torch.equal(c, seen[0]) for c in seen)  # one per sampler step
    assert torch.equal(seen[0][:, 1:, :2], real[:, 1:, :2] + 0.5 * chain)  # the motion slots
    assert torch.equal(seen[0][:, :1], real[:, :1])  # the mask
    assert torch.equal(seen[0][:, :, 2:], real[:, :, 2:])  # the anchor
    assert len(run.bank_roll) == 2


def fake_rollouts(monkeypatch) -> list:
    """train.generate_clip replaced by a stand-in whose clip is its condition frames + 0.5; the
    conditions it is given are recorded."""
    seen = []

    def stand_in(model, cond, prompts, control, noise, generator=None, **given):
        seen.append(cond.clone())
        return cond[:, 1:] + 0.5  # [n, C, T, H, W]

    monkeypatch.setattr(train, "generate_clip", stand_in)
    return seen


PROCS = train.Procs(rank=0, ranks=1, device="cpu", micro=4, accum=1, autocast=nullcontext())


def test_the_pool_fills_with_spread_ages_and_rolls_each_video_on_from_its_own_frames(
        tmp_path, monkeypatch):
    cfg = tiny_config(tmp_path, p_pool=0.5, pool_size=5, pool_clips=3, pool_advance=2)
    run, seen = train.build(cfg, "cpu"), fake_rollouts(monkeypatch)
    pool = run.pool
    train.advance_pool(run, cfg, PROCS)
    assert pool.k.tolist() == [1, 2, 3, 1, 2] and [len(c) for c in seen] == [5, 3, 1]
    assert 0 < pool.film.sum() < 5  # both modes, as p_film = 0.5 draws them
    videos = [to_unit(ShapesWorld(int(seed), 16, DEFAULT_WORLD, control=bool(control)).frames(
        pool.length)) for seed, control in pool.keys.tolist()]  # each [C, 10, H, W], its own
    anchors = [v[:, :1].expand(-1, 2, -1, -1) * (not film) for v, film in zip(videos, pool.film)]
    for i, (video, anchor) in enumerate(zip(videos, anchors)):
        assert torch.equal(seen[0][i, 1:], torch.cat([video[:, :2], anchor], dim=1))  # clip 0
        assert torch.equal(seen[0][i, 0, :2], torch.ones(2, 16, 16))  # the mask
        assert torch.equal(pool.motion[i], anchor + 0.5)  # the last clip's last m frames
        s = 2 * int(pool.k[i])  # beside the real frames of the same times
        assert torch.equal(pool.real[i], video[:, s:s + 2])
    run.step, keys, motion = 4, pool.keys.clone(), pool.motion.clone()
    train.advance_pool(run, cfg, PROCS)  # entries 0 and 1 move on from their own frames
    assert torch.equal(seen[-1][:, 1:, :2], motion[:2]) and pool.k.tolist() == [2, 3, 3, 1, 2]
    train.advance_pool(run, cfg, PROCS)  # entry 2 is done with its 3 clips: a new video
    assert pool.k.tolist() == [2, 3, 1, 2, 2] and torch.equal(seen[-1][1, 1:, :2], motion[3])
    assert not torch.equal(pool.keys[2], keys[2]) and torch.equal(pool.keys[3:], keys[3:])


def test_a_pool_clip_is_conditioned_on_its_own_rollout_and_targets_the_real_next_clip(tmp_path):
    cfg = tiny_config(tmp_path, p_pool=0.5, pool_size=3, pool_clips=3, rollout_steps=2,
                      prediction="v")  # untrained, x-prediction draws zeros for every entry
    run = train.build(cfg, "cpu")
    train.advance_pool(run, cfg, PROCS)  # the model's own rollouts
    pool = run.pool
    draw = lambda p: train.make_batch(run.source, cfg, 4, np.random.default_rng(0),
                                      torch.Generator().manual_seed(0), 8, "cpu", p)
    own, plain = draw(pool), draw(None)
    for name in ("x0", "cond", "noise", "t"):  # round(0.5 x 4) = 2 clips are the pool's
        assert torch.equal(getattr(own, name)[2:], getattr(plain, name)[2:]), name
    for b in range(2):
        i = [i for i in range(3) if torch.equal(own.cond[b, 1:, :2], pool.motion[i])]
        assert len(i) == 1  # conditioned on one entry's own motion frames
        i = i[0]
        video = to_unit(run.source.video(pool.keys[i].tolist(), pool.length)[0])  # [C, 10, H, W]
        s = 2 * int(pool.k[i])
        assert torch.equal(own.x0[b], video[:, s:s + 4])  # its own video's real clip k
        assert not torch.equal(own.cond[b, 1:, :2], own.x0[b, :, :2])  # not the real frames
        anchor = video[:, :1].expand(-1, 2, -1, -1) * (not pool.film[i])
        assert torch.equal(own.cond[b, 1:, 2:], anchor)  # the anchor as usual
        assert torch.equal(own.cond[b, :1], plain.cond[b, :1])  # the mask untouched


def test_a_pool_run_with_erft_on_top_resumes_bitwise_pool_included(tmp_path, monkeypatch,
                                                                    base_ckpt):
    flags = dict(steps=6, batch_size=4, init_from=base_ckpt, p_pool=0.5, pool_size=3,
                 pool_clips=2, pool_advance=1, rollout_every=2, rollout_steps=2, erft=True,
                 p_clean=0.0)
    straight = train.main(tiny_config(tmp_path / "a", **flags))
    resumed = run_with_crash(tiny_config(tmp_path / "b", ckpt_every=3, **flags), monkeypatch, 3)
    assert_same_run(straight, resumed)
    assert straight[5].k.tolist() == [2, 1, 1] and len(straight[2]) > 0  # entry 1 started anew


def test_the_pool_skips_videos_too_short_for_its_clips_and_says_so(tmp_path, capsys):
    folder = tmp_path / "videos"
    folder.mkdir()
    frames = ShapesWorld(0, 16).frames(12)
    iio.imwrite(folder / "long.gif", frames, loop=0)
    iio.imwrite(folder / "short.gif", frames[:6], loop=0)
    flags = dict(data=str(folder), p_pool=0.5, pool_size=3, rollout_steps=2, steps=1)
    *_, pool = train.main(tiny_config(tmp_path / "run", pool_clips=3, **flags))  # 10 frames
    assert "1 of 2 videos are shorter than 10 frames (3 clips), skipped" in \
        capsys.readouterr().out
    assert [len(pool.source.videos[i]) for i in pool.keys[:, 0].tolist()] == [12] * 3
    with pytest.raises(SystemExit) as exit_info:  # 5 clips need 14 frames
        train.main(tiny_config(tmp_path / "run2", pool_clips=5, **flags))
    assert exit_info.value.code == 2 and "has the 14 frames" in capsys.readouterr().err


@pytest.mark.parametrize("p_vanish, erased_clips", [(0.0, (0, 0)), (0.5, (1, 7)), (1.0, (8, 8))])
def test_lost_shape_errors_erase_a_shape_from_the_motion_frames_only(tmp_path, p_vanish,
                                                                     erased_clips):
    source = ShapesSource(16, 2, DEFAULT_WORLD)
    batch = train.make_batch(source, tiny_config(tmp_path), 8, np.random.default_rng(0),
                             torch.Generator().manual_seed(0), 8, "cpu")
    x0, plain = batch.x0, batch.cond
    cfg = tiny_config(tmp_path, p_vanish=p_vanish)
    batch = train.make_batch(source, cfg, 8, np.random.default_rng(0),
                             torch.Generator().manual_seed(0), 8, "cpu")
    same_x0, cond = batch.x0, batch.cond
    assert torch.equal(same_x0, x0) and torch.equal(cond[:, :, 2:], plain[:, :, 2:])  # anchor
    assert torch.equal(cond[:, :1], plain[:, :1])  # and mask untouched
    motion = x0[:, :, :2]  # [B, C, m, H, W], the target's first frames: every shape still there
    erased = [torch.equal(c, e) for c, e in zip(cond[:, 1:, :2], motion + vanish(motion))]
    kept = [torch.equal(c, m) for c, m in zip(cond[:, 1:, :2], motion)]
    assert all(a != b for a, b in zip(erased, kept))  # each clip's motion frames: one or the other
    assert erased_clips[0] <= sum(erased) <= erased_clips[1]


def test_conditional_leakage_noise_grows_with_flow_time_on_the_motion_frames_only(tmp_path):
    """--cond-leak S: the motion frames carry Gaussian noise of std S t, t the clip's flow time;
    x0, the flow time, the anchor and the mask are those of the plain batch."""
    source, draw = ShapesSource(16, 2, DEFAULT_WORLD), lambda cfg: train.make_batch(
        source, cfg, 64, np.random.default_rng(0), torch.Generator().manual_seed(0), 8, "cpu")
    plain_batch, leak = draw(tiny_config(tmp_path)), draw(tiny_config(tmp_path, cond_leak=0.5))
    x0, t, plain, cond = plain_batch.x0, plain_batch.t, plain_batch.cond, leak.cond
    assert torch.equal(leak.x0, x0) and torch.equal(leak.t, t)
    assert torch.equal(cond[:, :, 2:], plain[:, :, 2:]) and torch.equal(cond[:, :1], plain[:, :1])
    std = (cond - plain)[:, 1:, :2].flatten(1).std(dim=1)  # [B], over 2 x 3 x 16 x 16 values
    torch.testing.assert_close(std, 0.5 * t, atol=0.02, rtol=0.05)


def test_checkpoint_of_another_clip_size_is_rejected(tmp_path, base_ckpt, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train.main(tiny_config(tmp_path, init_from=base_ckpt, frames=6))
    assert exit_info.value.code == 2 and "--frames 4 --resolution 16" in capsys.readouterr().err


def test_grown_base_starts_as_the_base(tmp_path, base_ckpt, capsys):
    base = from_checkpoint(base_ckpt)
    depth = base.cfg.depth
    grown = train.main(tiny_config(tmp_path, init_from=base_ckpt, depth=depth + 2, steps=1,
                                   lr=0.0))[0].eval()  # lr 0: the weights as loaded
    assert len(grown.blocks) == depth + 2
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 4, 16, 16, generator=g)
    cond = condition(torch.randn(2, 3, 2, 16, 16, generator=g), None, 4)
    ids, mask = tokenize(["a red circle on a black background", ""], base.cfg.text_len)
    t = torch.rand(2, generator=g)
    with torch.no_grad():
        torch.testing.assert_close(grown(x, t, cond, ids, mask), base(x, t, cond, ids, mask))
    with pytest.raises(SystemExit) as exit_info:  # blocks are added, never dropped
        train.main(tiny_config(tmp_path / "less", init_from=base_ckpt, depth=depth - 1))
    assert exit_info.value.code == 2
    assert "can add blocks, not remove them" in capsys.readouterr().err


def test_lora_fine_tune_trains_adapters_only_and_samples(tmp_path, base_ckpt):
    export = tmp_path / "share" / "lora.pt"
    model, ema, *_ = train.main(tiny_config(tmp_path, lora_rank=2, init_from=base_ckpt,
                                              erft=True, lr=1e-2, export=str(export)))
    base = torch.load(base_ckpt, weights_only=True)["ema"]
    state = model.state_dict()
    assert all(torch.equal(state[k.replace("blocks.0.attn.qkv.", "blocks.0.attn.qkv.base.")], v)
               for k, v in base.items() if k.startswith("blocks.0.attn.qkv."))
    assert any(k.endswith("lora_b") and v.abs().sum() > 0 for k, v in state.items())
    sample.main(sample.parse_args(["--ckpt", str(tmp_path / "ckpt.pt"), "--chunks", "2",
                                   "--sample-steps", "2", "--out", str(tmp_path / "v.gif")]))
    # --export: the EMA alone, adapters folded in, half precision; it samples and fine-tunes
    shared = torch.load(export, weights_only=True)
    assert set(shared) == {"ema", "step", "model_cfg", "train_cfg", "sampling"}
    merged = merged_state_dict(ema.state_dict())
    assert shared["ema"].keys() == merged.keys()
    assert all(v.dtype == torch.float16 and torch.allclose(v.float(), merged[k], atol=1e-3)
               for k, v in shared["ema"].items())
    assert os.path.getsize(export) < 2.1 * sum(v.numel() for v in merged.values())  # 2 B each
    sample.main(sample.parse_args(["--ckpt", str(export), "--chunks", "2", "--sample-steps", "2",
                                   "--out", str(tmp_path / "w.gif")]))
    train.main(tiny_config(tmp_path / "again", init_from=str(export), steps=1))


def test_sampling_is_deterministic_and_counts_frames(tmp_path, base_ckpt):
    videos = []
    for name in ("a.gif", "b.gif", "c.gif"):
        seed = "1" if name == "c.gif" else "0"
        sample.main(sample.parse_args(["--ckpt", base_ckpt, "--chunks", "3", "--sample-steps", "3",
                                       "--out", str(tmp_path / name), "--seed", seed,
                                       "--mode", "film", "--guidance", "2"]))
        videos.append(iio.imread(tmp_path / name, index=None))
    assert len(videos[0]) == 3 * (4 - 2) + 2  # N (T - m) + m
    assert np.array_equal(videos[0], videos[1]) and not np.array_equal(videos[0], videos[2])
    strip = iio.imread(tmp_path / "a.png").astype(int)  # the last frames of clips 1, 2, 3
    assert strip.shape == (4 * 16, 3 * 4 * 16, 3) and sample.strip_clips(3) == [1, 2, 3]
    for tile, frame in zip(np.split(strip, 3, axis=1), videos[0][[3, 5, 7], ..., :3]):
        assert np.abs(tile - frame).mean() < 4  # (the gif's palette is coarser)
    assert sample.strip_clips(50) == [1, 10, 20, 30, 40, 50]


def test_the_checkpoint_records_how_to_sample_and_flags_override_it(tmp_path, base_ckpt):
    train.main(tiny_config(tmp_path, init_from=base_ckpt, steps=1, shift=3.0, sample_steps=5,
                           sample_eta="ancestral", guidance=1.5))
    model = from_checkpoint(str(tmp_path / "ckpt.pt"))
    assert model.sampling == Sampling(motion_frames=2, shift=3.0, steps=5, eta="ancestral",
                                      guidance=1.5, world=DEFAULT_WORLD)
    assert sample.sampling_of(model, steps=None, eta=0.0, shift=None) == \
        Sampling(2, 3.0, 5, 0.0, 1.5, DEFAULT_WORLD)  # None: the checkpoint's


@torch.no_grad()
def test_a_clip_encodes_its_prompts_once_and_samples_as_if_at_every_step(base_ckpt):
    model = from_checkpoint(base_ckpt)
    calls = []
    model.text_encoder.register_forward_hook(lambda *args: calls.append(1))
    g = torch.Generator().manual_seed(0)
    cond = condition(torch.rand(2, 3, 2, 16, 16, generator=g) * 2 - 1, None, 4)
    noise = torch.randn(2, 3, 4, 16, 16, generator=g)
    prompts = ["a red circle", "a blue square"]
    clip = sample.generate_clip(model, cond, prompts, None, noise, steps=5, guidance=2.0, eta=0.0)
    assert len(calls) == 2  # the prompts and the empty prompts, once each, not once per step
    texts = {True: tokenize(prompts, model.cfg.text_len), False: tokenize(["", ""], 64)}
    velocity = lambda x, t, c: model(x, t, cond, *texts[c])  # noqa: E731  encoded every step
    expected = euler_sample(velocity, noise, 5, model.sampling.shift, 2.0, 0.0)
    torch.testing.assert_close(clip, expected)


def test_prompt_file_and_control_file(tmp_path, base_ckpt):
    (tmp_path / "story.txt").write_text("a red circle on a black background\n\na blue square\n")
    np.savetxt(tmp_path / "path.txt", np.linspace(-0.5, 0.5, 10)[:, None].repeat(2, 1))
    sample.main(sample.parse_args(["--ckpt", base_ckpt, "--chunks", "4", "--sample-steps", "2",
                                   "--prompts", str(tmp_path / "story.txt"),
                                   "--control", str(tmp_path / "path.txt"),
                                   "--out", str(tmp_path / "v.mp4")]))
    assert len(iio.imread(tmp_path / "v.mp4", index=None)) == 4 * 2 + 2


def test_start_from_an_image_with_a_prompt(tmp_path, base_ckpt):
    iio.imwrite(tmp_path / "start.png", np.full((40, 50, 4), 200, np.uint8))  # RGBA, not square
    sample.main(sample.parse_args(["--ckpt", base_ckpt, "--chunks", "2", "--sample-steps", "2",
                                   "--image", str(tmp_path / "start.png"), "--prompt", "ü",
                                   "--out", str(tmp_path / "v.gif"), "--scale", "1"]))
    video = iio.imread(tmp_path / "v.gif", index=None)
    assert video.shape[:3] == (2 * 2 + 2, 16, 16)


@pytest.mark.parametrize("flags, message", [
    (["--steps", "0"], "--steps must be positive"),
    (["--motion-frames", "8"], "fewer than --frames"),
    (["--resolution", "30"], "--resolution by --patch-s 4"),
    (["--patch-t", "3"], "--frames must divide by --patch-t 3"),
    (["--width", "100", "--heads", "3"], "width 100 must divide by heads 3"),
    (["--preset", "Q"], "--preset: invalid choice: 'Q'"),
    (["--init-from", "missing.pt"], "no such file"),
    (["--data", "no/such/folder"], "no such folder"),
    (["--p-img", "1.5"], "within [0, 1]"),
    (["--resume", "--out", "nowhere"], "no checkpoint"),
    (["--world", "huge"], "--world: invalid choice: 'huge'"),
    (["--error-source", "dreams"], "--error-source: invalid choice: 'dreams'"),
    (["--img-t-max", "2"], "--img-t-max must be within [0, 1]"),
    (["--error-source", "rollout"], "--error-source and --img-t-max choose ERFT's errors"),
    (["--rollout-chain", "1.5"], "--rollout-chain must be within [0, 1]"),
    (["--erft", "--rollout-chain", "0.5"], "--rollout-chain chains rollout errors: add"),
    (["--erft", "--img-t-max", "0.01"], "--img-t-max 0.01 is below every bucket's flow time"),
    (["--p-vanish", "0.5", "--data", "."], "--p-vanish erases flat-coloured shapes: it needs"),
    (["--precision", "fp8"], "--precision: invalid choice: 'fp8'"),
    (["--prediction", "eps"], "--prediction: invalid choice: 'eps'"),
    (["--t-sampling", "beta"], "--t-sampling: invalid choice: 'beta'"),
    (["--cond-leak", "-1"], "--cond-leak 0 or more"),
    (["--p-pool", "1.5"], "--p-pool must be within [0, 1]"),
    (["--pool-clips", "0"], "--pool-clips must be positive"),
    (["--device", "meta"], "--device meta holds shapes, not values"),
    (["--device", "cuda"] if not torch.cuda.is_available() else ["--device", "nowhere"],
     "--device"),
])
def test_bad_training_flags_are_rejected_clearly(flags, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train.main(train.parse_args(flags))
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("flags, message", [
    (["--chunks", "0"], "--chunks must be positive"),
    (["--out", "video.avi"], "must end in .mp4 or .gif"),
    (["--ckpt", "missing.pt"], "no such file"),
    (["--control", "missing.txt"], "no such file"),
    (["--eta", "1.5"], "--eta must be in [0, 1] or ancestral"),
    (["--eta", "ddpm"], "--eta: a number in [0, 1] or ancestral, not 'ddpm'"),
    (["--sample-steps", "0"], "--sample-steps must be positive"),
    (["--shift", "-1"], "--shift must be positive"),
    (["--device", "meta"], "--device meta holds shapes, not values"),
])
def test_bad_sampling_flags_are_rejected_clearly(flags, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        sample.main(sample.parse_args(flags))
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def free_port() -> str:
    """A TCP port nobody listens on now, for torchrun's rendezvous."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def test_torchrun_banks_errors_of_both_ranks_during_warmup(tmp_path, base_ckpt):
    counts = {}
    for gather in (2, 0):
        out = tmp_path / f"gather{gather}"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
               "--master_port", free_port(), "train.py",
               "--init-from", base_ckpt, "--erft", "--p-clean", "0", "--steps", "2",
               "--batch-size", "4", "--frames", "4", "--resolution", "16", "--buckets", "1",
               "--capacity", "64", "--sample-every", "100", "--warmup-gather", str(gather),
               "--out", str(out), "--device", "cpu"]
        run(cmd)
        ckpt = torch.load(out / "ckpt.pt", weights_only=True)
        counts[gather] = int(ckpt["bank_vid"]["count"].sum())
        assert int(ckpt["bank_noise"]["count"].sum()) == counts[gather]
    # 2 steps x 2 clips per rank: rank 0 holds its own 4 errors, or all 8 when gathering
    assert counts == {2: 8, 0: 4}


def test_two_ranks_make_the_same_update_as_one_process_with_the_whole_batch(tmp_path, base_ckpt):
    common = ["train.py", "--init-from", base_ckpt, "--steps", "2", "--batch-size", "4",
              "--frames", "4", "--resolution", "16", "--sample-every", "100", "--device", "cpu",
              "--lr", "1e-2", "--warmup", "1"]
    run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
         "--master_port", free_port(), *common, "--out", str(tmp_path / "ddp")])
    # one process, the same 4 clips as two micro-batches of 2 (the ranks' shards), accumulated
    run([sys.executable, *common, "--micro-batch", "2", "--out", str(tmp_path / "one")])
    ddp, one = (torch.load(tmp_path / d / "ckpt.pt", weights_only=True)["model"]
                for d in ("ddp", "one"))
    base = torch.load(base_ckpt, weights_only=True)["ema"]
    assert any(not torch.equal(one[k], base[k]) for k in one)  # the weights did move
    for name in one:
        torch.testing.assert_close(ddp[name], one[name], atol=1e-6, rtol=1e-5, msg=name)


def test_gradient_checkpointing_gives_the_same_gradients():
    from model import DiTConfig, VideoDiT, condition, tokenize
    torch.manual_seed(0)
    model = VideoDiT(DiTConfig(width=64, depth=2, frames=4, resolution=16))
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.05)
    x = torch.randn(2, 3, 4, 16, 16)
    cond = condition(x[:, :, :2], None, 4)
    grads = []
    for ckpt in (False, True):
        model.grad_ckpt = ckpt  # as VideoDiT(cfg, grad_ckpt=True) sets it
        model.zero_grad()
        model(x, torch.rand(2, generator=torch.Generator().manual_seed(1)), cond,
              *tokenize(["a", "b"], 64)).square().mean().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


def test_noise_augmented_baseline_and_size_flags(tmp_path):
    model, *_ = train.main(tiny_config(tmp_path, cond_noise=0.3, width=32, depth=1,
                                            heads=1, patch_t=1, patch_s=2))
    sizes = (model.cfg.width, model.cfg.depth, model.cfg.patch_t, model.cfg.patch_s)
    assert sizes == (32, 1, 1, 2)
    assert os.path.exists(tmp_path / "ckpt.pt")
