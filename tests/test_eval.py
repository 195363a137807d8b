"""The drift metrics, on hand-built videos whose right value is known.
Run: python -m pytest tests/test_eval.py"""
import os

import imageio.v3 as iio
import numpy as np
import pytest
import torch

import diagnose
import eval as drift
import metrics
import train
from conftest import tiny_config
from data import BACKGROUNDS, COLOURS, KINDS, ShapesWorld, World
from errors import ErrorBank, vanish
from model import DiTConfig, Sampling, from_checkpoint

RED, BLUE = np.array(COLOURS["red"], np.uint8), np.array(COLOURS["blue"], np.uint8)
BLACK = np.array(BACKGROUNDS["black"], np.uint8)


def squares(positions, colours=(RED, BLUE), frames=6, size=32, side=5):
    """Frames of squares at positions[t][i] (top-left x, y) on black: uint8 [T, H, W, 3]."""
    video = np.zeros((frames, size, size, 3), np.uint8)
    for t in range(frames):
        for (x, y), colour in zip(positions(t), colours):
            video[t, y:y + side, x:x + side] = colour
    return video


def moving(t):  # two squares at constant velocity, no bounce
    return [(2 + 2 * t, 3), (20, 4 + t)]


def score(fake, real, **kw):
    return metrics.score_clip(fake, real, background=0, **kw)  # 0: black


def test_components_count_blobs_and_their_centroids():
    mask = np.zeros((10, 10), bool)
    mask[1:3, 1:4] = True    # 6 pixels, centroid (x 2.5, y 2.0): pixel i spans [i, i + 1)
    mask[6:9, 6:9] = True    # 9 pixels
    blobs = sorted(metrics.components(mask))
    assert [b.area for b in blobs] == [6, 9]
    assert np.allclose(blobs[0].centre, (2.5, 2.0)) and np.allclose(blobs[1].centre, (7.5, 7.5))


@pytest.mark.parametrize("world", ["simple", "easy", "medium", "hard"])
def test_every_whole_shape_of_every_world_gets_its_kind(world):
    for seed in range(30):
        w = ShapesWorld(seed, 32, world)
        index, _ = metrics.nearest_palette(w.frames(6))
        for i, truth in zip(index, w.truth):
            for colour, kind, visible in zip(truth["colour"], truth["kind"], truth["visible"]):
                if visible == 1.0:
                    ys, xs = np.nonzero(i == colour)
                    assert metrics.kind_of(ys, xs) == kind, (world, seed, truth["time"])


def test_a_shape_of_the_wrong_kind_is_counted():
    world = ShapesWorld(2, 32, n_shapes=1)
    world.kind[:] = KINDS.index("square")
    real = world.frames(4)
    world = ShapesWorld(2, 32, n_shapes=1)
    world.kind[:] = KINDS.index("triangle")
    fake = world.frames(4)  # the same shape, colour and path, another kind
    s = metrics.score_clip(fake, real, world.background)
    assert s["count"] == s["colours"] == 0 and s["kinds"] == 1 and s["match"] == 0
    assert metrics.score_clip(real, real, world.background)["kinds"] == 0


def test_the_real_video_scores_ideal():
    real = squares(moving)
    s = score(real, real)
    assert s["palette"] == s["count"] == s["colours"] == s["background"] == 0 and s["match"] == 1
    assert s["sharpness"] == s["motion"] == 1 and s["dynamics"] == pytest.approx(0, abs=1e-9)
    world = ShapesWorld(3, n_shapes=3)
    frames = world.frames(8)
    s = score(frames, frames)  # a world frame: its own background
    assert s["palette"] == 0 and s["count"] == 0 and s["colours"] == 0


def test_growing_noise_and_colour_cast_score_monotonically_worse():
    real = squares(moving)
    rng = np.random.default_rng(0)
    noise = rng.normal(size=real.shape)
    palette, background = [], []
    for level in (0, 25, 40, 60, 90):
        noisy = np.clip(real + level * noise, 0, 255).astype(np.uint8)
        palette.append(score(noisy, real)["palette"])
        cast = np.clip(real.astype(int) + [level, level // 2, 0], 0, 255).astype(np.uint8)
        background.append(score(cast, real)["background"])
    assert all(a < b for a, b in zip(palette, palette[1:])), palette
    assert all(a < b for a, b in zip(background, background[1:])), background


def test_lost_split_and_recoloured_shapes():
    real = squares(moving)
    lost = squares(moving, colours=(RED,))  # the blue square is gone
    assert score(lost, real)["count"] == 1 and score(lost, real)["colours"] == 1
    assert score(lost, real)["match"] == 0
    half_lost = np.concatenate([real[:3], lost[3:]])  # the blue square leaves halfway
    assert score(half_lost, real)["match"] == 0.5 and score(half_lost, real)["count"] == 0.5
    split = squares(lambda t: moving(t) + [(2 + 2 * t, 20)], colours=(RED, BLUE, RED))
    assert score(split, real)["count"] == 1 and score(split, real)["colours"] == 0
    recoloured = squares(moving, colours=(RED, np.array(COLOURS["green"], np.uint8)))
    assert score(recoloured, real)["colours"] == 2 and score(recoloured, real)["count"] == 0


def test_frozen_and_blurred_videos():
    real = squares(moving)
    frozen = np.repeat(real[:1], len(real), axis=0)
    assert score(frozen, real)["motion"] == 0
    blurred = real.astype(float)
    blurred[:, 1:-1] = (blurred[:, :-2] + blurred[:, 1:-1] + blurred[:, 2:]) / 3
    assert score(blurred.astype(np.uint8), real)["sharpness"] < 0.8


def test_dynamics_residual_sees_jitter():
    real = squares(moving)
    jitter = squares(lambda t: [(2 + 2 * t + (t % 2) * 2, 3), (20, 4 + t)])
    assert score(jitter, real)["dynamics"] == pytest.approx((4 * 1 + 0) / 2, abs=1e-6)


def test_control_error_is_the_distance_to_the_keypoint():
    real = squares(moving)
    red = list(COLOURS).index("red")
    centres = np.array([(2 + 2 * t + 2.5, 3 + 2.5) for t in range(6)])  # the red square's centre
    assert score(real, real, control=(red, centres))["control"] == pytest.approx(0)
    assert score(real, real, control=(red, centres + [3, 4]))["control"] == pytest.approx(5)
    lost = squares(moving, colours=(BLUE,))
    assert score(lost, real, control=(red, centres))["control"] == 16  # half the frame


def test_first_clip_check_counts_rollouts_with_the_real_objects_in_clip_1():
    zeros = lambda: {metric: np.zeros((4, 2)) for metric in metrics.METRICS}
    scores = {"real": zeros(), "model": zeros()}
    scores["real"]["match"][:] = 1.0
    scores["model"]["match"][:, 0] = [1.0, 0.25, 0.5, 0.0]  # passes at >= 0.5: seeds 0 and 2
    text = drift.table(scores, "consistent", 2)
    assert "kinds in at least half its frames: real 4/4, model 2/4." in text


def test_quick_benchmark_writes_table_curves_and_video(tmp_path, base_ckpt):
    out = tmp_path / "eval"
    scores = drift.main(drift.parse_args(["--quick", "--ckpt", f"base={base_ckpt}",
                                          "--out", str(out)]))
    for setting in drift.SETTINGS:
        assert scores[setting]["base"]["palette"].shape == (2, 3)
        assert (scores[setting]["real"]["palette"] == 0).all()
        assert os.path.getsize(out / f"side_by_side_{setting}.mp4") > 0
        saved = np.load(out / f"scores_{setting}.npz")
        np.testing.assert_array_equal(saved["base/match"], scores[setting]["base"]["match"])
    results = (out / "results.md").read_text()
    assert "### creative" in results and "| palette | base |" in results
    assert "at least half its frames: real 2/2, base " in results
    twice = drift.main(drift.parse_args(["--quick", "--ckpt", f"base={base_ckpt}", "--draws", "2",
                                         "--setting", "consistent", "--out", str(out)]))
    np.testing.assert_array_equal(twice["consistent"]["base"]["palette"][:2],
                                  scores["consistent"]["base"]["palette"])  # noise seed 0 first
    assert twice["consistent"]["base"]["palette"].shape == (4, 3)
    assert os.path.getsize(out / "curves.png") > 0
    assert not np.isnan(scores["conditional"]["base"]["control"]).any()


def test_noise_seed_changes_the_samples_not_the_worlds(base_ckpt):
    model = from_checkpoint(base_ckpt)
    sampling = dict(steps=2, shift=1.0, guidance=1.0, eta=1.0)
    runs = [drift.evaluate({"m": model}, "consistent", 2, 1, sampling, noise_seed=seed)
            for seed in (0, 0, 1)]
    for metric in ("palette", "sharpness"):
        np.testing.assert_array_equal(runs[0]["m"][metric], runs[1]["m"][metric])  # seeded
        assert (runs[0]["m"][metric] != runs[2]["m"][metric]).any()  # another draw
        np.testing.assert_array_equal(runs[0]["real"][metric], runs[2]["real"][metric])


def test_the_video_shows_the_world_asked_for(tmp_path, base_ckpt):
    model = from_checkpoint(base_ckpt)
    sampling = dict(steps=2, shift=1.0, guidance=1.0, eta=1.0)
    path = str(tmp_path / "side.gif")
    drift.evaluate({"m": model}, "consistent", 3, 1, sampling, path, video_seed=2)
    shown = iio.imread(path)[:, ::4, :16 * 4:4].astype(float)  # [T, H, W, 3] the real panel
    worlds = [drift.real_world(s, "consistent", 1, 4, 2, 16).clips[0].frames for s in range(3)]
    gaps = [np.abs(shown - world).mean() for world in worlds]
    assert np.argmin(gaps) == 2 and gaps[2] < 2


def test_paired_difference_rows():
    scores = {name: {metric: np.zeros((3, 2)) for metric in metrics.METRICS}
              for name in ("real", "clean", "erft")}
    scores["clean"]["count"][:] = [[1, 2], [2, 4], [3, 6]]
    scores["erft"]["count"][:] = [[1, 1], [2, 3], [3, 5]]  # one less at clip 2 in every world
    text = drift.table(scores, "consistent", 2, versus="clean")
    # the same gap in every world: a paired interval of zero width
    assert "| count | erft - clean | -0.500 [-0.500, -0.500] | 0.000 [0.000, 0.000] | -1.000 " \
        "[-1.000, -1.000] |" in text
    assert "real - clean" not in text and "clean - clean" not in text


def test_bad_eval_flags(capsys):
    with pytest.raises(SystemExit) as exit_info:
        drift.main(drift.parse_args(["--ckpt", "x=missing.pt", "--seeds", "0", "--eta", "-1",
                                     "--versus", "y", "--shift", "-2", "--device", "meta",
                                     "--video-seed", "3", "--diagnostic", "errors",
                                     "--draws", "0"]))
    err = capsys.readouterr().err
    assert "--draws must be positive" in err
    assert "--device meta holds shapes" in err and "--diagnostic errors needs --bank" in err
    assert exit_info.value.code == 2
    assert "no such file" in err and "--seeds must be positive" in err
    assert "--eta must be in [0, 1]" in err and "--versus y: not one of the --ckpt names" in err
    assert "--shift must be positive" in err and "--video-seed must be in [0, --seeds)" in err


# -----------------------------------------------------------------------------
# The diagnostics, on stand-in models whose errors are known

class CopyModel(torch.nn.Module):
    """A stand-in for the DiT whose sampled clip is a known frame repeated, plus `offset` (in
    [-1, 1] units): the last motion frame (source "motion") or the anchor ("anchor"). Its
    velocity (x_t - target) / t makes every sampler step's clean estimate the target."""

    def __init__(self, source, offset, frames=4, resolution=16, m=2):
        super().__init__()
        self.cfg = DiTConfig(frames=frames, resolution=resolution, text_len=8)
        self.source, self.offset, self.sampling = source, offset, Sampling(motion_frames=m)
        self.anything = torch.nn.Parameter(torch.zeros(1))  # where the model lives
        self.text_encoder = lambda ids, mask: None  # prompts play no part

    def forward(self, x_t, t, cond, ids, mask, control=None, text=None):
        slot = self.sampling.motion_frames - 1 if self.source == "motion" else -1
        target = cond[:, 1:, slot, None].expand_as(x_t) + self.offset  # [B, C, T, H, W]
        return (x_t - target) / t.view(-1, 1, 1, 1, 1)


STILL = World(shapes=(1, 1), size=(0.2, 0.2), speed=(0.0, 0.0), backgrounds=1)  # black, still
SAMPLING = dict(steps=2, eta=1.0)


def test_headroom_is_the_gap_of_an_error_that_compounds():
    """Adding 0.04 per clip: teacher-forced, every clip is off by 0.04; free-running, clip k by
    0.04 k. The background metric (median colour's distance / 255) shows it, 0 for a copy."""
    models = {"drifts": CopyModel("motion", 0.04), "copies": CopyModel("motion", 0.0)}
    result = diagnose.headroom(models, "consistent", 2, SAMPLING, world=STILL)
    per_clip = 0.04 * 127.5 * np.sqrt(3) / 255
    forced = result["drifts"]["forced"]["background"].mean(0)
    free = result["drifts"]["free"]["background"].mean(0)
    np.testing.assert_allclose(forced, per_clip, atol=0.003)
    np.testing.assert_allclose(free, per_clip * np.array(diagnose.HEADROOM_CLIPS), rtol=0.03)
    assert result["copies"]["free"]["background"].max() == 0
    assert result["copies"]["forced"]["count"].max() == 0
    assert "| drifts | count |" in diagnose.headroom_table(result)


def test_the_teacher_forced_benchmark_sees_no_compounding_and_draws_stack_by_world():
    """--forced: each clip from the real frames before it, so an error added per clip stays one
    clip's; free-running it grows clip by clip. Two draws stack as [draws x seeds, chunks], and
    their intervals are over worlds (each world's draws averaged first)."""
    models = {"drifts": CopyModel("motion", 0.04)}
    per_clip = 0.04 * 127.5 * np.sqrt(3) / 255
    forced = drift.evaluate(models, "consistent", 2, 4, SAMPLING, world=STILL, forced=True)
    free = drift.evaluate(models, "consistent", 2, 4, SAMPLING, world=STILL)
    np.testing.assert_allclose(forced["drifts"]["background"], per_clip, atol=0.003)
    np.testing.assert_allclose(free["drifts"]["background"].mean(0), per_clip * np.arange(1, 5),
                               rtol=0.03)
    values = np.array([[1.0], [3.0], [2.0], [6.0]])  # draw 0 of worlds 0, 1, then draw 1
    (mean, half), _, _ = drift.summary(values, draws=2)
    assert mean == 3.0 and half == pytest.approx(1.96 * np.std([1.5, 4.5], ddof=1) / np.sqrt(2))


def test_response_slope_is_one_for_a_copy_and_zero_when_the_anchor_decides():
    models = {"motion": CopyModel("motion", 0.02), "anchor": CopyModel("anchor", 0.02)}
    result, unit = diagnose.response(models, "consistent", 3, SAMPLING, world=STILL)
    assert unit == pytest.approx(0.02 * 2, rel=1e-4)  # the offset after 1, 2, 3 clips: mean 2
    for source in ("rollout", "gaussian", "vanish"):  # a copy passes on what it is given: gain 1
        assert diagnose.slope(result["motion"][source]) == pytest.approx(1.0, abs=0.05), source
        assert abs(diagnose.slope(result["anchor"][source])) < 1e-3  # the anchor decides: gain 0
    put = result["motion"]["rollout"]["put"]
    np.testing.assert_allclose(put, np.array(diagnose.STRENGTHS) * unit, rtol=0.02)  # clipped at 1
    assert "| motion | rollout |" in diagnose.response_table(result, unit)


def test_response_counts_whether_an_erased_shape_comes_back():
    """Errors as large as a shape: erased (clipped at the black background), a copy of the motion
    frames loses the shape, a copy of the anchor keeps it. (Darker by 0.2 a clip: still on the
    palette, and the errors' unit 0.4 for a shape's RMS 0.5.)"""
    models = {"motion": CopyModel("motion", -0.2), "anchor": CopyModel("anchor", -0.2)}
    result, unit = diagnose.response(models, "consistent", 2, SAMPLING, world=STILL)
    assert unit == pytest.approx(0.4, rel=1e-4)
    assert result["motion"]["vanish"]["count"][0] == 0
    assert result["motion"]["vanish"]["count"][-1] == 1
    assert result["anchor"]["vanish"]["count"].max() == 0
    row = next(line for line in diagnose.response_table(result, unit).splitlines()
               if line.startswith("| motion | vanish |"))
    counts = row.split("|")[-2].split(" / ")  # the last column: count error at each size
    assert len(counts) == len(diagnose.STRENGTHS) and counts[0].strip() == "0.00" \
        and counts[-1].strip() == "1.00"


def test_error_statistics_per_bucket_on_known_errors():
    bank = ErrorBank(torch.tensor([0.9, 0.1]), 2, dtype=torch.float32)
    flat = torch.full((2, 3, 4, 8, 8), 0.5)                           # all energy at frequency 0
    checker = (torch.arange(8)[:, None] + torch.arange(8)).remainder(2) * 2 - 1.0  # [8, 8] +-1
    bank.add(flat, torch.tensor([0.9, 0.9]))
    bank.add(checker.expand(2, 3, 4, 8, 8) * 0.25, torch.tensor([0.1, 0.1]))
    roll = ErrorBank(torch.tensor([0.0]), 4, dtype=torch.float32)
    roll.add(torch.full((1, 3, 2, 8, 8), -0.75), torch.zeros(1))
    black = -torch.ones(1, 3, 4, 8, 8)  # no shape to lose
    clip2 = (checker.expand(3, 3, 4, 8, 8).clone(), black.expand(3, -1, -1, -1, -1))
    shape = drift.to_unit(ShapesWorld(0, 16, STILL).frames(4))[None]  # [1, C, T, H, W]
    rows = diagnose.error_stats(bank, {"clip 2": clip2, "lost": (vanish(shape), shape)}, black,
                             roll)
    assert [r[0] for r in rows] == ["banked, t = 0.90", "banked, t = 0.10",
                                    "banked rollout errors", "clip 2", "lost"]
    assert [r[1] for r in rows] == [2, 2, 1, 3, 1]
    np.testing.assert_allclose([r[2] for r in rows[:4]], [0.5, 0.25, 0.75, 1.0], rtol=1e-5)
    np.testing.assert_allclose([r[3] for r in rows[:4]], [1.0, 0.0, 1.0, 0.0], atol=1e-6)
    assert [r[4] for r in rows] == [0.0] * 4 + [1.0]  # each group on its own real frames
    assert "| clip 2 | 3 | 1.0000 | 0.000 | 0.000 |" in diagnose.errors_table(rows)


def test_shapes_lost_counts_the_shapes_an_error_erases():
    """On a still shape: its lost-shape error erases it in every frame, no error erases nothing,
    and error i goes on real clip i mod S."""
    real = drift.to_unit(ShapesWorld(0, 16, STILL).frames(4))[None]  # [1, C, T, H, W]
    erased = vanish(real)
    assert diagnose.shapes_lost(erased, real) == 1.0
    assert diagnose.shapes_lost(torch.zeros_like(real), real) == 0.0
    assert diagnose.shapes_lost(torch.cat([erased, torch.zeros_like(real)]), real) == 0.5
    two = torch.cat([real, -torch.ones_like(real)])  # error i on clip i mod 2: black has none
    assert diagnose.shapes_lost(torch.cat([erased, erased]), two) == 0.5
    assert diagnose.shapes_lost(erased[:, :, :2], real) == 1.0  # a window of the first frames


def test_each_diagnostic_is_one_command(tmp_path, base_ckpt, capsys):
    run = tmp_path / "erft"
    train.main(tiny_config(run, steps=2, erft=True, init_from=base_ckpt, p_clean=0.0))
    for name in ("headroom", "response", "errors"):
        out = tmp_path / name
        drift.main(drift.parse_args(["--diagnostic", name, "--ckpt", f"a={base_ckpt}",
                                     "--bank", str(run / "ckpt.pt"), "--seeds", "2",
                                     "--chunks", "2", "--sample-steps", "1", "--out", str(out)]))
        assert (out / f"{name}.md").exists() and (out / f"{name}.png").exists()
    train.main(tiny_config(tmp_path / "small", steps=1, erft=True, resolution=8, patch_s=2))
    with pytest.raises(SystemExit):  # a bank of other clip sizes: refused, one line
        drift.main(drift.parse_args(["--diagnostic", "errors", "--ckpt", f"a={base_ckpt}",
                                     "--bank", str(tmp_path / "small" / "ckpt.pt"),
                                     "--seeds", "2", "--chunks", "2", "--out", str(tmp_path)]))
    assert "its errors are clips of --frames 4 --resolution 8" in capsys.readouterr().err
    old = torch.load(run / "ckpt.pt", weights_only=True)
    del old["bank_vid"]["capacity"]  # banks saved before they recorded their sizes
    torch.save(old, tmp_path / "old.pt")
    with pytest.raises(SystemExit):
        drift.main(drift.parse_args(["--diagnostic", "errors", "--ckpt", f"a={base_ckpt}",
                                     "--bank", str(tmp_path / "old.pt"), "--out", str(tmp_path)]))
    assert "saved before banks recorded their capacity" in capsys.readouterr().err


def test_the_errors_diagnostic_puts_a_pools_errors_back_on_their_own_videos(tmp_path, base_ckpt):
    run = tmp_path / "pool"
    train.main(tiny_config(run, steps=1, init_from=base_ckpt, p_pool=0.5, pool_size=4,
                           pool_clips=2, rollout_steps=1))  # no --erft: a pool and no banks
    pool = torch.load(run / "ckpt.pt", weights_only=True)["pool"]
    groups = diagnose.pool_errors(pool)
    assert list(groups) == ["pool, clip 1", "pool, clip 2", "pool, clips 1-2"]  # 0, 2; 1, 3
    error, real = groups["pool, clip 2"]
    torch.testing.assert_close(real + error, pool["motion"][[1, 3]])  # own = real + error
    drift.main(drift.parse_args(["--diagnostic", "errors", "--ckpt", f"a={base_ckpt}", "--bank",
                                 str(run / "ckpt.pt"), "--seeds", "2", "--chunks", "2",
                                 "--sample-steps", "1", "--out", str(tmp_path / "out")]))
    table = (tmp_path / "out" / "errors.md").read_text()
    assert "| pool, clip 1 | 2 |" in table and "| pool, clips 1-2 | 4 |" in table
    assert "| rollout, clip 1 | 2 |" in table and "| two draws, clips 2-2 | 2 |" in table
    spread = float(table.split("| two draws, clip 1 | 2 | ")[1].split(" |")[0])
    assert spread > 0  # the second draw has noise of its own
    assert "banked, t" not in table


def test_teacher_forcing_conditions_clip_k_on_the_real_frames_just_before_it():
    T, m = 6, 2
    reals = [drift.real_world(seed, "consistent", 4, T, m, 16) for seed in range(2)]
    for k in (2, 3, 4):
        before = drift.motion_before(reals, k, T, m)  # [S, C, m, H, W]
        for s, w in enumerate(reals):
            previous = w.clips[k - 2].frames[-m:]  # the last m frames of real clip k - 1
            assert torch.equal(before[s], drift.to_unit(previous))
    assert torch.equal(drift.motion_before(reals, 1, T, m)[0], drift.to_unit(reals[0].first))
