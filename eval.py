"""
eval.py: the drift benchmark. Do long rollouts stay like the world, clip after clip?

    python eval.py --ckpt clean=runs/clean/ckpt.pt --ckpt erft=runs/erft/ckpt.pt --versus clean
    python eval.py --ckpt erft=runs/erft/ckpt.pt --setting creative --seeds 16 --chunks 50
    python eval.py --quick --ckpt base=out/ckpt.pt            # a small, fast run
    python eval.py --setting consistent --chunks 1 --seeds 64 --noise-seed 1 \
        --ckpt base=checkpoints/base.pt          # the first-clip check, another draw of noise
    python eval.py --diagnostic headroom --ckpt clean=runs/clean/ckpt.pt   # diagnose.py: why

In the paper's three settings, consistent (one prompt, shot mode), creative (a scene event and
a new prompt every EVENT_EVERY clips, film mode) and conditional (shape 0 follows a control
stream), every checkpoint rolls out --chunks clips from the first frames of the same synthetic
worlds, and each clip's new frames are scored against the real video by metrics.py: palette,
object count, colours, kinds, match, background, sharpness, motion, dynamics, control.

Outputs in --out: results.md (mean and 95% interval over seeds, first clip, last clip, drift;
how many rollouts have the real objects in clip 1), curves.png (each metric per clip),
side_by_side_SETTING.mp4 (real | each method, world --video-seed) and scores_SETTING.npz (every
value per seed and clip, keyed "method/metric").
"""
import argparse
import os
import warnings
from typing import NamedTuple

import numpy as np
import torch

from data import (DEFAULT_WORLD, WORLDS, ShapesWorld, VideoWriter, to_uint8, to_unit,
                  writable_folder)
from metrics import METRICS, score_clip
from model import condition, from_checkpoint
from sample import (add_sampler_flags, device_problems, fail, generate_clip, not_positive,
                    pick_device, rollout, sampler_problems, sampling_of)

SETTINGS = ("consistent", "creative", "conditional")  # the paper's three
FILM = ("creative", "film")  # no anchor; "film" is consistent without it (which anchor is best?)
EVENT_EVERY = 5      # clips between scene events in the creative setting


# -----------------------------------------------------------------------------
# The real video of each seed, and each model's rollout from its first frames

class RealClip(NamedTuple):
    """Clip k of a real world, laid out as a rollout is, and what its scores need."""
    frames: np.ndarray      # uint8 [T', H, W, 3] its new frames: T in clip 0, T - m later
    prompt: str
    background: int         # index into data.BACKGROUNDS
    stream: np.ndarray      # [T, 2] the control stream of the T frames clip k generates
    control: tuple | None   # conditional setting: (colour index of shape 0, keypoints [T', 2])


class RealWorld(NamedTuple):
    first: np.ndarray       # uint8 [m, H, W, 3] the first frames, where every rollout starts
    clips: list             # [RealClip], one per clip


def real_world(seed, setting, chunks, T, m, res, preset=DEFAULT_WORLD) -> RealWorld:
    """The real world of a seed (a data.WORLDS preset), clip by clip, laid out as a rollout."""
    world = ShapesWorld(seed, res, preset, control=setting == "conditional")
    first = world.frames(m)
    clips = []
    for k in range(chunks):
        if setting == "creative" and k > 0 and k % EVENT_EVERY == 0:
            world.event()  # the scene changes after the motion frames, with a new prompt
        new = world.frames(T - m)
        frames = np.concatenate([first, new]) if k == 0 else new
        times = np.arange(T) + k * (T - m)  # the frames clip k generates, motion slots included
        stream = np.stack([world.control_vector(s) for s in times])  # [T, 2]
        control = None
        if setting == "conditional":
            keypoints = np.stack([world.keypoint(s["time"]) for s in world.truth[-len(frames):]])
            control = (int(world.colour[0]), keypoints)
        clips.append(RealClip(frames, world.prompt(), world.background, stream, control))
    return RealWorld(first, clips)


def real_worlds(model, setting, seeds, chunks, preset=DEFAULT_WORLD) -> list[RealWorld]:
    """The real worlds 0 .. seeds - 1 at the model's clip size, what every score compares with."""
    T, m, res = model.cfg.frames, model.sampling.motion_frames, model.cfg.resolution
    return [real_world(s, setting, chunks, T, m, res, preset) for s in range(seeds)]


def conditions(reals, setting, device):
    """What every seed's rollout is conditioned on: the first motion frames [S, C, m, H, W], the
    anchor [S, C, H, W] (None in film mode), prompts(k) and controls(k) of clip k (0-based;
    [S, T, 2] or None), on device."""
    first = torch.stack([to_unit(w.first) for w in reals]).to(device)  # [S, C, m, H, W]
    anchor = None if setting in FILM else first[:, :, 0]
    prompts = lambda k: [w.clips[k].prompt for w in reals]
    stream = lambda k: torch.from_numpy(np.stack([w.clips[k].stream for w in reals])).float()
    controls = (lambda k: stream(k).to(device)) if setting == "conditional" else lambda k: None
    return first, anchor, prompts, controls


def motion_before(reals, k, T, m):
    """The real motion frames of clip k (1-based) of every seed: the m frames before its new
    ones, [S, C, m, H, W]."""
    videos = [np.concatenate([c.frames for c in w.clips]) for w in reals]
    start = (k - 1) * (T - m)  # clip k covers video frames start .. start + T - 1
    return torch.stack([to_unit(v[start:start + m]) for v in videos])


@torch.no_grad()
def one_clip(model, motion, reals, k, setting, sampling, noise_seed):
    """Clip k (1-based) of every seed generated from the given motion frames [S, C, m, H, W]
    (anchor, prompt and control of the real clip k): its new frames, [S, C, T', H, W]."""
    T, m, device = model.cfg.frames, motion.shape[2], next(model.parameters()).device
    _, anchor, prompts, controls = conditions(reals, setting, device)
    gen = torch.Generator().manual_seed(noise_seed * 100_003 + k)  # the same for every model
    noise = torch.randn(len(reals), 3, T, *motion.shape[3:], generator=gen).to(device)
    clip = generate_clip(model, condition(motion.to(device), anchor, T), prompts(k - 1),
                         controls(k - 1), noise, generator=gen, **sampling)
    return clip if k == 1 else clip[:, :, m:]


def evaluate(models, setting, seeds, chunks, sampling, video_path=None, noise_seed=0,
             video_seed=0, world=DEFAULT_WORLD, forced=False):
    """Scores [method][metric] -> [seeds, chunks], for the real video ("real") and each model,
    whose sampler draws its noise from noise_seed (the same noise for every model); each clip
    conditioned on the model's own previous clip (free-running), or with forced on the real
    frames before it (teacher-forced: what the base gets wrong before any drift)."""
    some = next(iter(models.values()))
    T, m = some.cfg.frames, some.sampling.motion_frames
    reals = real_worlds(some, setting, seeds, chunks, world)
    scores = {name: {metric: np.zeros((seeds, chunks)) for metric in METRICS}
              for name in ["real", *models]}
    shown = {name: [] for name in ["real", *models]}  # video_seed's frames, for the video
    for name in ["real", *models]:  # per clip, uint8 frames of every seed
        if name == "real":  # the real video scored against itself: the ideal values
            fakes = ([w.clips[k].frames for w in reals] for k in range(chunks))
        else:
            model = models[name]
            device = next(model.parameters()).device
            if forced:  # each clip k from the real frames before it
                clips = (one_clip(model, motion_before(reals, k, T, m), reals, k, setting,
                                  sampling, noise_seed) for k in range(1, chunks + 1))
            else:
                gen = torch.Generator().manual_seed(noise_seed)
                clips = rollout(model, *conditions(reals, setting, device), chunks, gen,
                                **sampling)
            fakes = ([to_uint8(video) for video in clip] for clip in clips)
        for k, fake in enumerate(fakes):
            for s, w in enumerate(reals):
                real = w.clips[k]
                for metric, value in score_clip(fake[s], real.frames, real.background,
                                                real.control).items():
                    scores[name][metric][s, k] = value
            shown[name].append(fake[video_seed])
    if video_path:
        writer = VideoWriter(video_path)
        for k in range(chunks):  # real | each method, side by side
            writer.write(np.concatenate([shown[name][k] for name in shown], axis=2))
        writer.close()
    return scores


# -----------------------------------------------------------------------------
# Summaries: a markdown table and curves

def interval(per_seed):
    """Mean over seeds and the half-width of its 95% interval (normal approximation)."""
    per_seed = per_seed[~np.isnan(per_seed)]
    if len(per_seed) == 0:
        return float("nan"), float("nan")
    half = 1.96 * per_seed.std(ddof=1) / np.sqrt(len(per_seed)) if len(per_seed) > 1 else 0.0
    return per_seed.mean(), half


def summary(values, draws=1):
    """values [draws x seeds, chunks] -> (mean, half-width) of the mean over clips, of the first
    clip and of the last clip, each over seeds (a world's draws of noise averaged first: the
    worlds are the independent samples). NaN (nothing to measure) is left out; None if all is
    NaN."""
    if np.isnan(values).all():
        return None
    with warnings.catch_warnings():  # the mean of nothing is NaN, as meant
        warnings.simplefilter("ignore", RuntimeWarning)
        per_world = np.nanmean(values.reshape(draws, -1, values.shape[1]), axis=0)  # [S, N]
        per_seed = np.nanmean(per_world, axis=1)
    return interval(per_seed), interval(per_world[:, 0]), interval(per_world[:, -1])


def table(scores, setting, chunks, versus="", draws=1) -> str:
    """The markdown table; with versus (a method's name), also each other method's difference to
    it, seed by seed (paired: the same worlds and noise, so a narrower interval)."""
    lines = [f"### {setting}", "",
             f"| metric | method | mean [95% interval] | clip 1 [95% interval] | clip {chunks} "
             "[95% interval] | drift |", "|---|---|---|---|---|---|"]
    for metric in METRICS:
        rows = {name: by_metric[metric] for name, by_metric in scores.items()}
        if versus:
            rows.update({f"{name} - {versus}": values - rows[versus] for name, values in
                         list(rows.items()) if name not in ("real", versus)})
        for name, values in rows.items():
            s = summary(values, draws)
            if s is not None:
                cells = [f"{mean:.3f} [{mean - half:.3f}, {mean + half:.3f}]"
                         for mean, half in s]  # over clips, clip 1, the last clip
                lines.append(f"| {metric} | {name} | " + " | ".join(cells) +
                             f" | {s[2][0] - s[1][0]:+.3f} |")
    # the first-clip check: does clip 1 keep the objects of the conditioning frames?
    kept = ", ".join(f"{name} {int((by_metric['match'][:, 0] >= 0.5).sum())}/"
                     f"{len(by_metric['match'])}" for name, by_metric in scores.items())
    lines += ["", "Rollouts whose clip 1 has the real object count, colours and kinds in at least "
              f"half its frames: {kept}."]
    return "\n".join(lines) + "\n"


def plot(all_scores, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(len(all_scores), len(METRICS), squeeze=False,
                             figsize=(2.6 * len(METRICS), 2.4 * len(all_scores)))
    for row, (setting, scores) in zip(axes, all_scores.items()):
        for ax, metric in zip(row, METRICS):
            if all(np.isnan(by_metric[metric]).all() for by_metric in scores.values()):
                ax.axis("off")  # nothing to measure in this setting (control outside conditional)
                continue
            for name, by_metric in scores.items():
                curve = by_metric[metric]
                if not np.isnan(curve).all():
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", RuntimeWarning)
                        mean = np.nanmean(curve, axis=0)
                    ax.plot(np.arange(1, curve.shape[1] + 1), mean, label=name)
            ax.set_title(f"{setting}: {metric}", fontsize=8)
            ax.set_xlabel("clip", fontsize=7)
            ax.tick_params(labelsize=6)
    axes[0, 0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -----------------------------------------------------------------------------
# The command line

def sampler_line(sampling: dict) -> str:
    return ("{steps} steps, eta {eta}, guidance {guidance}, shift {shift} (the first "
            "checkpoint's, for every model, unless given)").format(**sampling)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--ckpt", action="append", default=[], metavar="NAME=PATH",
                   help="a checkpoint to score (repeat the flag for several)")
    p.add_argument("--setting", choices=["all", *SETTINGS, "film"], default="all",
                   help="film: consistent without the anchor")
    p.add_argument("--diagnostic", choices=["headroom", "response", "errors"], default=None,
                   help="instead of the benchmark, one diagnostic (diagnose.py says which)")
    p.add_argument("--bank", default="", metavar="RUN/ckpt.pt",
                   help="the error banks (or rollout pool) of an ERFT (or --p-pool) run, for "
                        "--diagnostic response, errors")
    p.add_argument("--seeds", type=int, default=16, help="rollouts (worlds) per setting")
    p.add_argument("--world", choices=list(WORLDS), default=None,
                   help="the kind of world (default: the first checkpoint's training world)")
    p.add_argument("--chunks", type=int, default=50, help="clips per rollout")
    add_sampler_flags(p)
    p.add_argument("--noise-seed", type=int, default=0,
                   help="seed of the sampler's noise, the same for every model (not the worlds')")
    p.add_argument("--draws", type=int, default=1,
                   help="draws of noise per world (noise seeds --noise-seed and up), together")
    p.add_argument("--forced", action="store_true",
                   help="teacher-forced: every clip conditioned on the real frames before it")
    p.add_argument("--video-seed", type=int, default=0,
                   help="the world the side-by-side video shows (0 .. seeds - 1)")
    p.add_argument("--versus", default="", metavar="NAME",
                   help="also each method's paired difference to this one (e.g. clean)")
    p.add_argument("--out", default="eval_out", help="folder for results.md, curves.png, video")
    p.add_argument("--quick", action="store_true",
                   help="2 seeds, 3 clips, 2 sampler steps (for tests)")
    p.add_argument("--device", default="auto", help="auto (CUDA when there is one), cpu, cuda")
    args = p.parse_args(argv)
    if args.quick:
        args.seeds, args.chunks, args.sample_steps = 2, 3, 2
    return args


def check(args) -> list:
    """Reject bad flags with one line each (exit status 2) before any work; -> [(name, path)]."""
    problems = not_positive(args, ("seeds", "chunks", "draws")) + sampler_problems(args)
    named = [c.split("=", 1) if "=" in c else [os.path.basename(os.path.dirname(c)) or c, c]
             for c in args.ckpt]
    if not 0 <= args.video_seed < args.seeds:
        problems.append(f"--video-seed must be in [0, --seeds), got {args.video_seed}")
    if not named:
        problems.append("give at least one --ckpt NAME=PATH")
    problems += [f"--ckpt {path}: no such file" for _, path in named if not os.path.isfile(path)]
    if args.diagnostic == "errors" and not args.bank:
        problems.append("--diagnostic errors needs --bank RUN/ckpt.pt (an ERFT or a --p-pool "
                        "run's)")
    if args.diagnostic == "errors" and args.chunks < 2:
        problems.append("--diagnostic errors needs --chunks 2 or more")
    if args.bank and not os.path.isfile(args.bank):
        problems.append(f"--bank {args.bank}: no such file")
    if not writable_folder(args.out):
        problems.append(f"--out {args.out}: not a writable folder")
    problems += device_problems(args.device)
    if len({name for name, _ in named}) < len(named):
        problems.append("--ckpt names must differ")
    if args.versus and args.versus not in [name for name, _ in named]:
        problems.append(f"--versus {args.versus}: not one of the --ckpt names")
    fail(problems)
    return named


def main(args):
    named = check(args)
    try:  # the models by name, each with its checkpoint's sampling defaults (model.sampling)
        models = {name: from_checkpoint(path, pick_device(args.device)) for name, path in named}
    except ValueError as err:
        fail([str(err)])
    first = next(iter(models.values()))
    world = args.world or first.sampling.world
    s = sampling_of(first, steps=args.sample_steps, shift=args.shift, guidance=args.guidance,
                    eta=args.eta)
    sampling = dict(steps=s.steps, shift=s.shift, guidance=s.guidance, eta=s.eta)  # for all
    os.makedirs(args.out, exist_ok=True)
    if args.diagnostic:  # diagnose.py, which scores with this file's functions
        from diagnose import diagnose
        try:
            return diagnose(args, models, sampling, world)
        except ValueError as err:
            fail([str(err)])
    chosen = SETTINGS if args.setting == "all" else [args.setting]
    all_scores, report = {}, []
    for setting in chosen:
        video = os.path.join(args.out, f"side_by_side_{setting}.mp4")
        runs = [evaluate(models, setting, args.seeds, args.chunks, sampling,
                         None if d else video, args.noise_seed + d, args.video_seed, world,
                         args.forced) for d in range(args.draws)]
        all_scores[setting] = {name: {metric: np.concatenate([r[name][metric] for r in runs])
                                      for metric in by_metric}  # [draws x seeds, chunks]
                               for name, by_metric in runs[0].items()}
        report.append(table(all_scores[setting], setting, args.chunks, args.versus, args.draws))
        np.savez(os.path.join(args.out, f"scores_{setting}.npz"),  # per seed and clip, [S, N]
                 **{f"{name}/{metric}": values for name, by_metric in all_scores[setting].items()
                    for metric, values in by_metric.items()})
        print(report[-1], flush=True)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(f"{args.seeds} seeds x {args.chunks} clips"
                f"{', teacher-forced' if args.forced else ''}, {sampler_line(sampling)}, "
                f"noise seeds {args.noise_seed} + {args.draws} draw(s); checkpoints: "
                f"{', '.join(args.ckpt)}\n\n"
                + "\n".join(report))
    plot(all_scores, os.path.join(args.out, "curves.png"))
    return all_scores


if __name__ == "__main__":
    main(parse_args())
