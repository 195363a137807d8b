"""
diagnose.py: the three diagnostics that say why a method wins the drift benchmark or not
(docs/measuring-drift.md). They run through eval.py's flags, each writing DIAGNOSTIC.md and
DIAGNOSTIC.png to --out:

    python eval.py --diagnostic headroom --ckpt clean=runs/clean/ckpt.pt   # exposure bias
    python eval.py --diagnostic response --bank runs/erft/ckpt.pt --ckpt base=checkpoints/base.pt \
        --ckpt erft=runs/erft/ckpt.pt            # does the model correct an error or amplify it?
    python eval.py --diagnostic errors --bank runs/erft/ckpt.pt --ckpt erft=runs/erft/ckpt.pt
    python eval.py --diagnostic errors --bank runs/pool/ckpt.pt --ckpt pool=runs/pool/ckpt.pt

- headroom: each clip k = 1..10 and 50 teacher-forced (conditioned on the real frames before it)
  against free-running (on the model's own previous clip); the gap is the exposure bias, all
  that any anti-drift method can remove;
- response: the next clip's RMS error against the real one when an error is put on the real
  motion frames (the model's own rollout error, banked one-step errors, Gaussian noise, a shape
  erased that the anchor still shows) at 0, 0.5, 1 and 2 times the size of a rollout error; the
  slope says whether it corrects (< 1) or amplifies (> 1) what it is given, and the next clip's
  count error whether an erased shape comes back;
- errors: banked one-step errors per flow-time bucket (and banked rollout errors, and a rollout
  pool's errors, if the run has any) against rollout errors per clip, and against two draws (a
  second rollout from the same first frames with other noise, minus the first: how far apart
  the model's own rollouts drift; at clip 1, the spread of one clip): RMS, the share of energy
  at low spatial frequency, the shapes a frame loses when the error is put on real frames (a
  rollout's or a pool's on its own; two draws: the first draw's shapes the second lacks), and a
  picture of a few of each.
"""
import os

import numpy as np
import torch

from data import DEFAULT_WORLD, to_uint8, to_unit
from errors import ErrorBank, error_picture, vanish
from eval import (SETTINGS, conditions, evaluate, motion_before, one_clip, real_worlds,
                  sampler_line)
from metrics import METRICS, objects, score_clip
from model import load_checkpoint
from sample import rollout


HEADROOM_CLIPS = (*range(1, 11), 50)  # the clips the headroom table shows (1-based)
STRENGTHS = (0.0, 0.5, 1.0, 2.0)      # the response's error sizes, in units of a rollout error
LOW = 0.125                           # "low" spatial frequency: within this share of the frame


# -----------------------------------------------------------------------------
# An ERFT run's error banks

def run_banks(path):
    """The errors a run recycles, from its checkpoint (train.py --erft or --p-pool: its ckpt.pt):
    its model's DiTConfig, its banked one-step errors at the data end (bank_vid) and its banked
    rollout errors (None unless the run had --error-source rollout or both), as ErrorBanks, or
    None without --erft; and its rollout pool's state (errors.RolloutPool), None without it."""
    ckpt = load_checkpoint(path)
    if ckpt.banks is None and ckpt.pool is None:
        raise ValueError(f"{path}: no error banks or rollout pool; give the ckpt.pt of a "
                         "train.py --erft or --p-pool run")
    banks = ckpt.banks or (None,) * 3
    if any(state is not None and "capacity" not in state for state in banks):
        raise ValueError(f"{path}: its banks were saved before banks recorded their capacity; "
                         "train the run again to read them")
    bank_vid, _, bank_roll = (None if state is None else ErrorBank.from_state_dict(state)
                              for state in banks)
    return ckpt.model_cfg, bank_vid, bank_roll, ckpt.pool


def pool_errors(pool: dict) -> dict:
    """A rollout pool's errors, each with its own video's real frames: {"pool, clip k": (own -
    real motion frames, real), each [entries, C, m, H, W]} for the entries k clips in, and
    "pool, clips 1-K" for them all."""
    k, own, real = pool["k"], pool["motion"], pool["real"]
    groups = {f"pool, clip {c}": (own[k == c] - real[k == c], real[k == c])
              for c in sorted(set(k.tolist())) if c}
    groups[f"pool, clips 1-{int(k.max())}"] = (own[k > 0] - real[k > 0], real[k > 0])
    return groups


# -----------------------------------------------------------------------------
# Headroom: teacher-forced against free-running

def headroom(models, setting, seeds, sampling, noise_seed=0, world=DEFAULT_WORLD,
             clips=HEADROOM_CLIPS):
    """Each model's scores per clip k, free-running (conditioned on its own previous clip) and
    teacher-forced (on the real frames before clip k). -> {name: {"free" | "forced":
    {metric: [seeds, len(clips)]}}}; the gap between the two is the exposure bias. Clip 1 is
    conditioned on the real frames in both, with other draws of noise: its gap is the noise
    floor."""
    free = evaluate(models, setting, seeds, max(clips), sampling, noise_seed=noise_seed,
                    world=world)
    some = next(iter(models.values()))
    T, m = some.cfg.frames, some.sampling.motion_frames
    reals = real_worlds(some, setting, seeds, max(clips), world)
    out = {}
    for name, model in models.items():
        forced = {metric: np.zeros((seeds, len(clips))) for metric in METRICS}
        for i, k in enumerate(clips):
            new = one_clip(model, motion_before(reals, k, T, m), reals, k, setting, sampling,
                           noise_seed)
            for s, (fake, w) in enumerate(zip(new, reals)):
                real = w.clips[k - 1]
                for metric, value in score_clip(to_uint8(fake), real.frames, real.background,
                                                real.control).items():
                    forced[metric][s, i] = value
        index = np.array(clips) - 1
        out[name] = dict(free={metric: v[:, index] for metric, v in free[name].items()},
                         forced=forced)
    return out


def headroom_table(result, clips=HEADROOM_CLIPS, metrics=("count", "palette", "match",
                                                          "motion")) -> str:
    lines = ["### headroom", "", "Mean over seeds, free-running / teacher-forced, per clip.", "",
             "| model | metric | " + " | ".join(f"clip {k}" for k in clips) + " |",
             "|---|---|" + "---|" * len(clips)]
    mean = lambda v: np.nanmean(v) if not np.isnan(v).all() else float("nan")
    for name, runs in result.items():
        for metric in metrics:
            cells = [f"{mean(runs['free'][metric][:, i]):.3f} / "
                     f"{mean(runs['forced'][metric][:, i]):.3f}" for i in range(len(clips))]
            lines.append(f"| {name} | {metric} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# -----------------------------------------------------------------------------
# Response: what an error on the motion frames does to the next clip

@torch.no_grad()
def free_video(model, reals, chunks, setting, sampling, noise_seed=0):
    """A model's free-running rollout of `chunks` clips from every seed's first frames, joined
    (the overlaps dropped): [S, C, frames, H, W] on the CPU."""
    device = next(model.parameters()).device
    clips = rollout(model, *conditions(reals, setting, device), chunks,
                    torch.Generator().manual_seed(noise_seed), **sampling)
    return torch.cat([clip.cpu() for clip in clips], dim=2)


def real_video(reals):
    """The real videos of every seed, joined as a rollout is: [S, C, frames, H, W]."""
    return torch.stack([to_unit(np.concatenate([c.frames for c in w.clips])) for w in reals])


def rms(x, dims=(1, 2, 3, 4)):
    return x.float().pow(2).mean(dim=dims).sqrt()


def put_error(source, own, bank, real, seed):
    """An error of one source, RMS 1 per sample, of the shape of the real motion frames
    [S, C, m, H, W]: the model's own rollout error (own), banked one-step errors (a window of the
    clip's first m frames), Gaussian noise or a vanished shape, drawn from a generator of its own
    (seed), so every model is given the same errors."""
    gen, shape = torch.Generator().manual_seed(seed), real.shape
    if source == "rollout":
        e = own
    elif source == "banked":
        e = bank.sample_pooled(shape[0], gen)[:, :, :shape[2]]
    elif source == "vanish":
        e = vanish(real)
    else:
        e = torch.randn(shape, generator=gen)
    return e / rms(e).clamp_min(1e-8).view(-1, 1, 1, 1, 1)  # [S] -> [S, 1, 1, 1, 1]


@torch.no_grad()
def response(models, setting, seeds, sampling, noise_seed=0, world=DEFAULT_WORLD, bank=None,
             boundaries=(2, 3, 4)):
    """What an error on the real motion frames of clip k (k in boundaries) does to clip k: per
    model and source of error (its own rollout error, banked one-step errors from `bank`, an
    ErrorBank, Gaussian noise, or a shape erased: see vanish), scaled to STRENGTHS x `unit`,
    the RMS of the first model's rollout errors, the mean over clips and seeds of: the RMS error
    put in (after clipping to [-1, 1]), the next clip's RMS error against the real clip, the
    RMS change of the next clip from the one made with no error (same noise: what the error
    itself caused), and the next clip's object count error.
    -> ({name: {source: {"put" | "error" | "change" | "count": [len(STRENGTHS)]}}}, unit)."""
    some = next(iter(models.values()))
    T, m = some.cfg.frames, some.sampling.motion_frames
    reals = real_worlds(some, setting, seeds, max(boundaries), world)
    real_frames = real_video(reals)[:, :, :(max(boundaries) - 1) * (T - m) + m]
    own = {}  # each model's rollout error on the motion frames before each boundary clip
    for name, model in models.items():
        error = free_video(model, reals, max(boundaries) - 1, setting, sampling,
                           noise_seed) - real_frames
        own[name] = {k: error[:, :, (k - 1) * (T - m):(k - 1) * (T - m) + m] for k in boundaries}
    unit = float(torch.stack([rms(e) for e in next(iter(own.values())).values()]).mean())
    sources = ["rollout"] + (["banked"] if bank is not None else []) + ["gaussian", "vanish"]
    out = {name: {source: {key: np.zeros(len(STRENGTHS)) for key in ("put", "error", "change",
                                                                      "count")}
                  for source in sources} for name in models}
    for k in boundaries:
        real = motion_before(reals, k, T, m)
        target = torch.stack([to_unit(w.clips[k - 1].frames) for w in reals])
        for name, model in models.items():
            for j, source in enumerate(sources):
                seed = noise_seed * 1009 + 31 * k + j
                e = put_error(source, own[name][k], bank, real, seed)
                clean = None
                for i, strength in enumerate(STRENGTHS):
                    given = (real + unit * strength * e).clamp(-1, 1)
                    new = one_clip(model, given, reals, k, setting, sampling, noise_seed).cpu()
                    clean = new if clean is None else clean  # strength 0 comes first
                    row = out[name][source]
                    row["put"][i] += float(rms(given - real).mean()) / len(boundaries)
                    row["error"][i] += float(rms(new - target).mean()) / len(boundaries)
                    row["change"][i] += float(rms(new - clean).mean()) / len(boundaries)
                    row["count"][i] += count_error(new, reals, k) / len(boundaries)
    return out, unit


def count_error(new, reals, k):
    """The object count error of every seed's clip k (its new frames [S, C, T', H, W]) against
    the real one, the mean over seeds: did an erased shape come back?"""
    return float(np.mean([score_clip(to_uint8(v), w.clips[k - 1].frames,
                                     w.clips[k - 1].background)["count"]
                          for v, w in zip(new, reals)]))


def slope(row):
    """The gain of an error: the least-squares slope, through 0, of the change it makes to the
    next clip against its size (both RMS). Under 1 the model shrinks what it is given."""
    put, change = np.asarray(row["put"]), np.asarray(row["change"])
    return float((put * change).sum() / max((put ** 2).sum(), 1e-12))


def response_table(result, unit) -> str:
    lines = ["### response", "",
             f"The next clip's RMS error against the real clip when an error of RMS s x "
             f"{unit:.3f} "
             "(the first model's rollout error) is put on the real motion frames; the gain is the "
             "slope of the change it makes to the next clip against its size: under 1 the model "
             "corrects what it is given, over 1 it amplifies it. The count error is the next "
             "clip's: does an erased shape come back? (Vanish at s = 2 erases it whole when twice "
             "a rollout error outweighs the shape, on a black background.)", "",
             "| model | error | " + " | ".join(f"s = {s:g}" for s in STRENGTHS) + " | gain | "
             "count error, s = " + " / ".join(f"{s:g}" for s in STRENGTHS) + " |",
             "|---|---|" + "---|" * (len(STRENGTHS) + 2)]
    for name, rows in result.items():
        for source, row in rows.items():
            lines.append(f"| {name} | {source} | " + " | ".join(f"{v:.3f}" for v in row["error"])
                         + f" | {slope(row):.2f} | "
                         + " / ".join(f"{v:.2f}" for v in row["count"]) + " |")
    return "\n".join(lines) + "\n"


# -----------------------------------------------------------------------------
# Errors: banked against rollout errors

def low_share(e, cutoff=LOW):
    """Share of an error's energy at low spatial frequency (radius <= cutoff x the frame side,
    in cycles per frame), per error: e [N, C, T, H, W] -> [N]."""
    power = torch.fft.fft2(e.float()).abs().pow(2)                  # [N, C, T, H, W]
    f = torch.fft.fftfreq(e.shape[-1]) * e.shape[-1]                # cycles per frame
    radius = (f[:, None] ** 2 + f[None] ** 2).sqrt()                 # [H, W]
    low = power * (radius <= cutoff * e.shape[-1])
    return low.sum(dim=(1, 2, 3, 4)) / power.sum(dim=(1, 2, 3, 4)).clamp_min(1e-12)


def shapes_lost(errors, real):
    """The shapes an error erases from the frames it is put on: per frame, the real shape colours
    that real + error (clipped) no longer shows (a recoloured shape is lost too), the mean over
    frames and errors. errors [N, C, T, H, W]; real [S, C, >= T, H, W], error i put on real
    i mod S. A rollout error put on its own real frames gives the rollout back: its lost shapes."""
    lost = []
    for i, e in enumerate(errors.float()):
        r = real[i % len(real), :, :e.shape[1]].float()  # [C, T, H, W]
        fake, true = (objects(to_uint8(v)) for v in ((r + e).clamp(-1, 1), r))
        lost += [len(set(w) - set(f)) for f, w in zip(fake, true)]
    return float(np.mean(lost))


def error_stats(bank, rollout_errors, real, bank_roll=None):
    """RMS, low-frequency share and shapes_lost of the banked one-step errors per flow-time
    bucket (bank, if there is one) and of the banked rollout errors (bank_roll, if it holds any),
    put on `real` (clips [S, C, T, H, W]), and of each group of rollout errors, put on their own
    real frames ({label: (errors, real), each [N, C, T, H, W]}: a free-running model's, or a
    rollout pool's). -> rows (label, count, rms, low, lost)."""
    groups = [(f"banked, t = {t:.2f}", bank.errors[b, :count], real)
              for b, (t, count) in enumerate(zip(bank.times.tolist(), bank.count.tolist()))
              if count] if bank is not None else []
    if bank_roll is not None and len(bank_roll):
        groups.append(("banked rollout errors", bank_roll.errors[0, :int(bank_roll.count[0])],
                       real))
    groups += [(label, e, r) for label, (e, r) in rollout_errors.items()]
    return [(label, len(e), float(rms(e).mean()), float(low_share(e).mean()),
             shapes_lost(e, r)) for label, e, r in groups]


def errors_table(rows) -> str:
    lines = ["### errors", "", f"Banked one-step errors per flow-time bucket against rollout "
             "errors, and two draws (a second rollout from the same first frames with other "
             f"noise, minus the first): RMS, the share of energy within {LOW:g} x the frame side "
             "in spatial frequency, and the shapes a frame loses when the error is put on real "
             "frames (banked errors on the worlds' first clips, rollout and pool errors on their "
             "own; two draws on the first draw: the shapes the draws disagree on).",
             "",
             "| errors | count | RMS | low-frequency share | shapes lost per frame |",
             "|---|---|---|---|---|"]
    lines += [f"| {label} | {n} | {r:.4f} | {low:.3f} | {lost:.3f} |"
              for label, n, r, low, lost in rows]
    return "\n".join(lines) + "\n"


# -----------------------------------------------------------------------------
# Pictures, and one diagnostic from eval.py's flags

def diagnostic_plot(kind, result, path, clips=HEADROOM_CLIPS):
    """headroom: count and palette per clip, free-running (solid) and teacher-forced (dashed);
    response: the next clip's error against the error put in, per kind of error."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    panels = ("count", "palette") if kind == "headroom" else ("rollout", "banked", "gaussian",
                                                               "vanish")
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 2.8))
    for ax, panel in zip(axes, panels):
        for i, (name, runs) in enumerate(result.items()):
            colour = f"C{i}"
            if kind == "headroom":
                x = np.arange(len(clips))
                for style, run in (("-", "free"), ("--", "forced")):
                    ax.plot(x, np.nanmean(runs[run][panel], axis=0), style, color=colour,
                            label=f"{name} {run}")
                ax.set_xticks(x, [str(k) for k in clips], fontsize=6)
            elif panel in runs:
                ax.plot(runs[panel]["put"], runs[panel]["error"], "o-", color=colour, label=name)
        ax.set_title(panel, fontsize=8)
        ax.set_xlabel("clip" if kind == "headroom" else "error put in (RMS)", fontsize=7)
    axes[0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def diagnose(args, models, sampling, world) -> str:
    """Run one diagnostic of eval.py's flags; write DIAGNOSTIC.md and DIAGNOSTIC.png to --out.
    -> the markdown table."""
    setting = args.setting if args.setting in (*SETTINGS, "film") else "consistent"
    common = dict(setting=setting, seeds=args.seeds, sampling=sampling,
                  noise_seed=args.noise_seed, world=world)
    bank = bank_roll = pool = None
    if args.bank:
        cfg, bank, bank_roll, pool = run_banks(args.bank)
        some = next(iter(models.values())).cfg
        if (cfg.frames, cfg.resolution) != (some.frames, some.resolution):
            raise ValueError(f"--bank {args.bank}: its errors are clips of --frames {cfg.frames} "
                             f"--resolution {cfg.resolution}; the checkpoints' are "
                             f"{some.frames} and {some.resolution}")
    md, png = (os.path.join(args.out, f"{args.diagnostic}.{e}") for e in ("md", "png"))
    if args.diagnostic == "headroom":
        clips = tuple(k for k in HEADROOM_CLIPS if k <= args.chunks)
        result = headroom(models, clips=clips, **common)
        text = headroom_table(result, clips)
        diagnostic_plot("headroom", result, png, clips)
    elif args.diagnostic == "response":
        result, unit = response(models, bank=bank, **common)
        text = response_table(result, unit)
        diagnostic_plot("response", result, png)
    else:
        model = next(iter(models.values()))
        T, m = model.cfg.frames, model.sampling.motion_frames
        reals = real_worlds(model, setting, args.seeds, args.chunks, world)
        video = real_video(reals)  # [S, C, T + (chunks - 1)(T - m), H, W]
        draws = [free_video(model, reals, args.chunks, setting, sampling, args.noise_seed + i)
                 for i in (0, 1)]  # two rollouts from the same first frames, other noise
        per_clip = lambda v: v[:, :, m:].unflatten(2, (args.chunks, T - m)).transpose(1, 2)
        clips, real, other, own = (per_clip(v) for v in (
            draws[0] - video, video, draws[1] - draws[0], draws[0]))  # [S, chunks, C, T - m, H, W]
        groups = {}
        for k in (k for k in HEADROOM_CLIPS if k <= args.chunks):
            groups[f"rollout, clip {k}"] = (clips[:, k - 1], real[:, k - 1])
            groups[f"two draws, clip {k}"] = (other[:, k - 1], own[:, k - 1])
        every = (clips[:, 1:].flatten(0, 1), real[:, 1:].flatten(0, 1))  # [S (chunks - 1), ...]
        groups[f"rollout, clips 2-{args.chunks}"] = every
        groups[f"two draws, clips 2-{args.chunks}"] = (other[:, 1:].flatten(0, 1),
                                                       own[:, 1:].flatten(0, 1))
        groups.update(pool_errors(pool) if pool is not None else {})
        text = errors_table(error_stats(bank, groups, video[:, :, :T], bank_roll))
        recycled = bank.first_frames(8) if bank is not None else \
            [e[0, :, 0] for e, _ in pool_errors(pool).values()][:8]  # each [C, H, W]
        error_picture(png, recycled, [e[:, 0] for e in every[0][:8]])  # first frames
    with open(md, "w") as f:
        f.write(f"{args.seeds} seeds, {setting}, {sampler_line(sampling)}; "
                f"checkpoints: {', '.join(args.ckpt)}\n\n{text}")
    print(text, flush=True)
    return text
