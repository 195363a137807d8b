"""
eval.py: the drift benchmark. Do long rollouts stay like the world, clip after clip?

    python eval.py --ckpt clean=runs/clean/ckpt.pt --ckpt erft=runs/erft/ckpt.pt --versus clean
    python eval.py --ckpt erft=runs/erft/ckpt.pt --setting creative --seeds 16 --chunks 50
    python eval.py --quick --ckpt base=out/ckpt.pt            # a small, fast run
    python eval.py --setting consistent --chunks 1 --seeds 64 --noise-seed 1 \
        --ckpt base=checkpoints/base.pt          # the first-clip check, another draw of noise

and the three diagnostics that say why a method wins or not (docs/measuring-drift.md), each writing
DIAGNOSTIC.md and DIAGNOSTIC.png to --out:

    python eval.py --diagnostic headroom --ckpt clean=runs/clean/ckpt.pt   # exposure bias
    python eval.py --diagnostic response --bank runs/erft/ckpt.pt --ckpt base=checkpoints/base.pt \
        --ckpt erft=runs/erft/ckpt.pt            # does the model correct an error or amplify it?
    python eval.py --diagnostic errors --bank runs/erft/ckpt.pt --ckpt erft=runs/erft/ckpt.pt

- headroom: each clip k = 1..10 and 50 teacher-forced (conditioned on the real frames before it)
  against free-running (on the model's own previous clip); the gap is the exposure bias, all
  that any anti-drift method can remove;
- response: the next clip's RMS error against the real one when an error is put on the real
  motion frames (the model's own rollout error, banked one-step errors, Gaussian noise, a shape
  erased that the anchor still shows) at 0, 0.5, 1 and 2 times the size of a rollout error; the
  slope says whether it corrects (< 1) or amplifies (> 1) what it is given, and the next clip's
  count error whether an erased shape comes back;
- errors: banked one-step errors per flow-time bucket (and banked rollout errors, if the run has
  any) against rollout errors per clip: RMS, the share of energy at low spatial frequency, the
  shapes a frame loses when the error is put on real frames, and a picture of a few of each.

Three settings, as in the paper: consistent (one prompt, shot mode), creative (a scene event and
a new prompt every few clips, film mode) and conditional (shape 0 follows a control stream). For
every checkpoint, on the same seeds, a rollout of --chunks clips starts from the first frames of
a synthetic world, and each clip's new frames are scored against the real video of that world.
The world draws from a fixed palette with hard edges, so every metric is exact and needs no
network:

  palette     share of pixels off the palette (blur, colour cast, noise)          ideal 0
  count       |objects - objects in the real frame| (lost or split shapes)        ideal 0
  colours     shape colours missing or extra against the real frame (the prompt)  ideal 0
  kinds       shapes of a colour in both whose kind (circle, square, triangle)
              differs from the real one's                                         ideal 0
  match       share of frames whose object count, colours and kinds equal the real ideal 1
  background  distance of the frame's median colour to the prompt's background    ideal 0
  sharpness   RMS spatial gradient / the real frames'                             ideal 1
  motion      centroid speed of the shapes / the real frames' (frozen video: 0)   ideal 1
  dynamics    centroid acceleration, pixels/frame^2 (constant velocity: 0)        ideal ~0
  control     distance of shape 0 to its control keypoint, pixels (conditional)   ideal 0

Outputs in --out: results.md (mean and 95% interval over seeds, first clip, last clip, drift),
curves.png (each metric per clip), side_by_side_SETTING.mp4 (real | each method, for the world
--video-seed) and scores_SETTING.npz (every value per seed and clip, keyed "method/metric").
"""
import argparse
import os
import warnings

import imageio.v3 as iio
import numpy as np
import torch

from data import (BACKGROUNDS, COLOURS, DEFAULT_WORLD, KINDS, PALETTE, WORLDS, ShapesWorld,
                   VideoWriter, to_uint8, to_unit, writable_folder)
from errors import ErrorBank, vanish
from model import condition, from_checkpoint, load_checkpoint
from sample import (add_sampler_flags, device_problems, fail, generate_clip, not_positive,
                    pick_device, rollout, sampler_problems, sampling_of)
from train import config_of

OFF_PALETTE = 48.0   # RGB distance beyond which a pixel matches no palette colour
MIN_AREA = 3         # pixels a connected blob needs to count as an object
SETTINGS = ("consistent", "creative", "conditional")  # the paper's three
FILM = ("creative", "film")  # no anchor; "film" is consistent without it (which anchor is best?)
METRICS = ("palette", "count", "colours", "kinds", "match", "background", "sharpness", "motion",
           "dynamics", "control")


# -----------------------------------------------------------------------------
# Per-frame measurements, on uint8 frames [T, H, W, 3]

def nearest_palette(frames):
    """Index of the nearest palette colour [T, H, W] and the distance to it."""
    d = np.linalg.norm(frames[..., None, :].astype(np.float32) - PALETTE.astype(np.float32),
                       axis=-1)  # [T, H, W, K]
    return d.argmin(-1), d.min(-1)


def kind_of(ys, xs) -> int:
    """The kind (index into KINDS) a blob's pixels look like: a square fills its bounding box, a
    triangle (apex up) has a quarter of its pixels in the upper half of the box, a circle half.
    Right for every whole shape of every world preset's sizes (tests/test_eval.py)."""
    height = ys.max() - ys.min() + 1
    fill = len(ys) / (height * (xs.max() - xs.min() + 1))
    upper = ((ys - ys.min() + 0.5) < height / 2).mean()
    return KINDS.index("square") if fill > 0.93 else \
        KINDS.index("triangle") if upper < 0.35 else KINDS.index("circle")


def components(mask):
    """Connected blobs (4-neighbours) of a boolean image [H, W]:
    [(pixel count, centroid (x, y), kind_of)], pixel i spanning [i, i + 1). A flood fill."""
    todo = set(zip(*(a.tolist() for a in np.nonzero(mask))))
    blobs = []
    while todo:
        stack, pixels = [todo.pop()], []
        while stack:
            y, x = stack.pop()
            pixels.append((y, x))
            for near in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if near in todo:
                    todo.remove(near)
                    stack.append(near)
        ys, xs = np.array(pixels, dtype=np.float64).T
        blobs.append((len(pixels), (xs.mean() + 0.5, ys.mean() + 0.5), kind_of(ys, xs)))
    return blobs


def objects(frames, nearest=None):
    """Per frame, per shape colour index found: its blobs [(area, centroid, kind)], small ones
    out.
    nearest: nearest_palette(frames), if already computed."""
    index, dist = nearest_palette(frames) if nearest is None else nearest
    out = []
    for i, d in zip(index, dist):
        found = {}
        for c in np.unique(i[d <= OFF_PALETTE]).tolist():
            if c < len(COLOURS):
                blobs = [b for b in components((i == c) & (d <= OFF_PALETTE)) if b[0] >= MIN_AREA]
                if blobs:
                    found[c] = blobs
        out.append(found)
    return out


def centroid_steps(found, lag):
    """Per colour seen as exactly one blob in frames j - lag .. j: its centroids, [(c0, ..)]."""
    single = [{c: b[0][1] for c, b in f.items() if len(b) == 1} for f in found]
    return [[np.array(single[j - i][c]) for i in range(lag, -1, -1)]
            for j in range(lag, len(single)) for c in set.intersection(
                *(set(single[j - i]) for i in range(lag + 1)))]


def score_clip(fake, real, background, control=None):
    """All metrics of one clip: fake and real uint8 [T, H, W, 3], the prompt's background index,
    and (colour index of shape 0, its keypoints [T, 2] in pixels) or None. -> {metric: value}"""
    nearest = nearest_palette(fake)
    found, wanted = objects(fake, nearest), objects(real)
    count = np.array([abs(sum(map(len, f.values())) - sum(map(len, w.values())))
                      for f, w in zip(found, wanted)])        # [T]
    colours = np.array([len(set(f) ^ set(w)) for f, w in zip(found, wanted)])  # [T]
    kinds = np.array([sum(sorted(b[2] for b in f[c]) != sorted(b[2] for b in w[c])
                          for c in set(f) & set(w)) for f, w in zip(found, wanted)])  # [T]
    bg = np.array(list(BACKGROUNDS.values())[background], dtype=np.float32)
    median = np.median(fake.reshape(len(fake), -1, 3).astype(np.float32), axis=1)  # [T, 3]
    # sharpness: root-mean-square spatial gradient (a blur spreads an edge and lowers it)
    gradient = lambda v: np.sqrt(sum((np.diff(v.astype(np.float32), axis=a) ** 2).mean()
                                     for a in (1, 2)))
    # motion: how far the shapes' centroids move per frame (speckle does not count)
    speed = lambda f: np.mean([np.linalg.norm(b - a) for a, b in centroid_steps(f, 1)] or [0.0])
    accel = [np.linalg.norm(c - 2 * b + a) for a, b, c in centroid_steps(found, 2)]
    real_speed = speed(wanted)
    scores = dict(palette=float((nearest[1] > OFF_PALETTE).mean()), count=float(count.mean()),
                  colours=float(colours.mean()), kinds=float(kinds.mean()),
                  match=float(((count == 0) & (colours == 0) & (kinds == 0)).mean()),
                  background=float(np.linalg.norm(median - bg, axis=1).mean() / 255),
                  sharpness=gradient(fake) / max(gradient(real), 1e-6),
                  motion=speed(found) / real_speed if real_speed > 0 else float("nan"),
                  dynamics=float(np.mean(accel)) if accel else float("nan"),
                  control=float("nan"))
    if control is not None:  # shape 0: its colour's largest blob against the keypoint
        colour, keypoints = control
        miss = fake.shape[1] / 2  # a lost shape counts as half the frame away
        scores["control"] = float(np.mean([
            np.linalg.norm(np.subtract(max(f[colour])[1], k)) if colour in f else miss
            for f, k in zip(found, keypoints)]))
    return scores


# -----------------------------------------------------------------------------
# The real video of each seed, and each model's rollout from its first frames

def real_clips(seed, setting, chunks, T, m, res, event_every, preset=DEFAULT_WORLD):
    """The real world (of a data.WORLDS preset), clip by clip, laid out as a rollout: clip 0 has
    T frames, later clips T - m new ones. Per clip: frames, prompt, background, control info and
    control stream."""
    world = ShapesWorld(seed, res, preset, control=setting == "conditional")
    first = world.frames(m)
    clips = []
    for k in range(chunks):
        if setting == "creative" and k > 0 and k % event_every == 0:
            world.event()  # the scene changes after the motion frames, with a new prompt
        new = world.frames(T - m)
        frames = np.concatenate([first, new]) if k == 0 else new
        times = np.arange(T) + k * (T - m)  # the frames clip k generates, motion slots included
        shown = np.stack([world.truth[t]["visible"] for t in times[:m]])  # [m, shapes]
        clip = dict(frames=frames, prompt=world.prompt(), background=world.background,
                    stream=np.stack([world.control_vector(s) for s in times]),
                    hidden=bool((shown.max(0) < 0.5).any()))  # a shape mostly behind another
        if setting == "conditional":
            keypoints = np.stack([world.keypoint(s["time"]) for s in world.truth[-len(frames):]])
            clip["control"] = (int(world.colour[0]), keypoints)
        clips.append(clip)
    return first, clips


def conditions(reals, setting, device):
    """What every seed's rollout is conditioned on: the first motion frames [S, C, m, H, W], the
    anchor [S, C, H, W] (None in film mode), prompts(k) and controls(k) of clip k (0-based;
    [S, T, 2] or None), on device."""
    first = torch.stack([to_unit(f) for f, _ in reals]).to(device)  # [S, C, m, H, W]
    anchor = None if setting in FILM else first[:, :, 0]
    prompts = lambda k: [clips[k]["prompt"] for _, clips in reals]
    stream = lambda k: torch.from_numpy(np.stack([c[k]["stream"] for _, c in reals])).float()
    controls = (lambda k: stream(k).to(device)) if setting == "conditional" else lambda k: None
    return first, anchor, prompts, controls


def evaluate(models, setting, seeds, chunks, event_every, sampling, video_path=None,
             noise_seed=0, video_seed=0, world=DEFAULT_WORLD, forced=False):
    """Scores [method][metric] -> [seeds, chunks], for the real video ("real") and each model,
    whose sampler draws its noise from noise_seed (the same noise for every model); each clip
    conditioned on the model's own previous clip (free-running), or with forced on the real
    frames before it (teacher-forced: what the base gets wrong before any drift);
    scores["real"]["hidden"] is 1 where the real motion frames of a clip show less than half of
    some shape, in each of them (the world's truth): a shape mostly behind another."""
    some = next(iter(models.values()))
    T, res, m = some.cfg.frames, some.cfg.resolution, some.sampling.motion_frames
    reals = [real_clips(s, setting, chunks, T, m, res, event_every, world) for s in range(seeds)]
    scores = {name: {metric: np.zeros((seeds, chunks)) for metric in METRICS}
              for name in ["real", *models]}
    scores["real"]["hidden"] = np.array([[c["hidden"] for c in clips] for _, clips in reals],
                                        dtype=np.float64)  # [seeds, chunks]
    shown = {name: [] for name in ["real", *models]}  # video_seed's frames, for the video
    for name in ["real", *models]:  # per clip, uint8 frames of every seed
        if name == "real":  # the real video scored against itself: the ideal values
            fakes = ([c[k]["frames"] for _, c in reals] for k in range(chunks))
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
            for s in range(seeds):
                real = reals[s][1][k]
                for metric, value in score_clip(fake[s], real["frames"], real["background"],
                                                real.get("control")).items():
                    scores[name][metric][s, k] = value
            shown[name].append(fake[video_seed])
    if video_path:
        writer = VideoWriter(video_path)
        for k in range(chunks):  # real | each method, side by side
            writer.write(np.concatenate([shown[name][k] for name in shown], axis=2))
        writer.close()
    return scores


# -----------------------------------------------------------------------------
# Do the models undo the errors ERFT trains on? The flow loss with and without them

def run_banks(path):
    """An ERFT run's checkpoint (train.py --erft: its ckpt.pt): its TrainConfig and its three
    error banks, bank_vid, bank_noise and bank_roll (empty unless the run had --error-source
    rollout or both)."""
    ckpt = load_checkpoint(path)
    if ckpt.banks is None:
        raise ValueError(f"{path}: no error banks; give the ckpt.pt of a train.py --erft run")
    cfg = config_of(ckpt)
    banks = [ErrorBank(torch.zeros(1), cfg.capacity, cfg.replace) for _ in range(3)]
    for bank, state in zip(banks, ckpt.banks):  # times too
        if state is not None:
            bank.load_state_dict(state)
    return cfg, banks


# -----------------------------------------------------------------------------
# Diagnostics: why a method wins or not (docs/measuring-drift.md)

HEADROOM_CLIPS = (*range(1, 11), 50)  # the clips the headroom table shows (1-based)
STRENGTHS = (0.0, 0.5, 1.0, 2.0)      # the response's error sizes, in units of a rollout error
LOW = 0.125                           # "low" spatial frequency: within this share of the frame


def motion_before(reals, k, T, m):
    """The real motion frames of clip k (1-based) of every seed: the m frames before its new
    ones, [S, C, m, H, W]."""
    videos = [np.concatenate([c["frames"] for c in clips]) for _, clips in reals]
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


def headroom(models, setting, seeds, sampling, noise_seed=0, world=DEFAULT_WORLD,
             event_every=5, clips=HEADROOM_CLIPS):
    """Each model's scores per clip k, free-running (conditioned on its own previous clip) and
    teacher-forced (on the real frames before clip k). -> {name: {"free" | "forced":
    {metric: [seeds, len(clips)]}}}; the gap between the two is the exposure bias. Clip 1 is
    conditioned on the real frames in both, with other draws of noise: its gap is the noise
    floor."""
    free = evaluate(models, setting, seeds, max(clips), event_every, sampling,
                    noise_seed=noise_seed, world=world)
    some = next(iter(models.values()))
    T, m, res = some.cfg.frames, some.sampling.motion_frames, some.cfg.resolution
    reals = [real_clips(s, setting, max(clips), T, m, res, event_every, world)
             for s in range(seeds)]
    out = {}
    for name, model in models.items():
        forced = {metric: np.zeros((seeds, len(clips))) for metric in METRICS}
        for i, k in enumerate(clips):
            new = one_clip(model, motion_before(reals, k, T, m), reals, k, setting, sampling,
                           noise_seed)
            for s, fake in enumerate(new):
                real = reals[s][1][k - 1]
                for metric, value in score_clip(to_uint8(fake), real["frames"],
                                                real["background"], real.get("control")).items():
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
    return torch.stack([to_unit(np.concatenate([c["frames"] for c in clips]))
                        for _, clips in reals])


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
             boundaries=(2, 3, 4), event_every=5):
    """What an error on the real motion frames of clip k (k in boundaries) does to clip k: per
    model and source of error (its own rollout error, banked one-step errors from `bank`, an
    ErrorBank, Gaussian noise, or a shape erased: see vanish), scaled to STRENGTHS x `unit`,
    the RMS of the first model's rollout errors, the mean over clips and seeds of: the RMS error
    put in (after clipping to [-1, 1]), the next clip's RMS error against the real clip, the
    RMS change of the next clip from the one made with no error (same noise: what the error
    itself caused), and the next clip's object count error.
    -> ({name: {source: {"put" | "error" | "change" | "count": [len(STRENGTHS)]}}}, unit)."""
    some = next(iter(models.values()))
    T, m, res = some.cfg.frames, some.sampling.motion_frames, some.cfg.resolution
    reals = [real_clips(s, setting, max(boundaries), T, m, res, event_every, world)
             for s in range(seeds)]
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
        target = torch.stack([to_unit(c[k - 1]["frames"]) for _, c in reals])
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
    return float(np.mean([score_clip(to_uint8(v), c[k - 1]["frames"], c[k - 1]["background"])
                          ["count"] for v, (_, c) in zip(new, reals)]))


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
    bucket and of the banked rollout errors (bank_roll, if it holds any), put on `real` (clips
    [S, C, T, H, W]), and of each group of rollout errors, put on their own real frames
    ({label: (errors, real), each [N, C, T, H, W]}). -> rows (label, count, rms, low, lost)."""
    groups = [(f"banked, t = {t:.2f}", bank.errors[b, :count], real)
              for b, (t, count) in enumerate(zip(bank.times.tolist(), bank.count.tolist()))
              if count]
    if bank_roll is not None and len(bank_roll):
        groups.append(("banked rollout errors", bank_roll.errors[0, :int(bank_roll.count[0])],
                       real))
    groups += [(label, e, r) for label, (e, r) in rollout_errors.items()]
    return [(label, len(e), float(rms(e).mean()), float(low_share(e).mean()),
             shapes_lost(e, r)) for label, e, r in groups]


def errors_table(rows) -> str:
    lines = ["### errors", "", f"Banked one-step errors per flow-time bucket against rollout "
             f"errors: RMS, the share of energy within {LOW:g} x the frame side in spatial "
             "frequency, and the shapes a frame loses when the error is put on real frames "
             "(banked errors on the worlds' first clips, rollout errors on their own).", "",
             "| errors | count | RMS | low-frequency share | shapes lost per frame |",
             "|---|---|---|---|---|"]
    lines += [f"| {label} | {n} | {r:.4f} | {low:.3f} | {lost:.3f} |"
              for label, n, r, low, lost in rows]
    return "\n".join(lines) + "\n"


def error_picture(bank, rollout_errors, path, per_row=8):
    """Top row: one banked error from each of per_row buckets (noisy left); bottom row: rollout
    errors; each frame 0, scaled to its own range (grey = 0)."""
    tile = lambda e: ((e / (e.abs().max() + 1e-8) + 1) * 127.5).round().clamp(0, 255).byte()
    filled = [b for b, c in enumerate(bank.count.tolist()) if c]
    pick = [filled[i] for i in np.linspace(0, len(filled) - 1, per_row).round().astype(int)]
    top = [tile(bank.errors[b, 0, :, 0].float()) for b in pick]           # [C, H, W] each
    bottom = [tile(e[:, 0]) for e in rollout_errors[:per_row]]
    rows = [torch.cat(row, dim=2).permute(1, 2, 0).numpy() for row in (top, bottom)]
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=255)
            for r in rows]
    iio.imwrite(path, np.concatenate(rows).repeat(4, 0).repeat(4, 1))


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
    # the base-model check: does clip 1 keep the objects of the conditioning frames?
    kept = lambda which: ", ".join(
        f"{name} {int((by_metric['match'][which, 0] >= 0.5).sum())}/{int(which.sum())}"
        for name, by_metric in scores.items())
    hidden = scores["real"]["hidden"][:, 0] > 0  # [seeds]: the first frames mostly hide a shape
    lines += ["", "Rollouts whose clip 1 has the real object count, colours and kinds in at least "
              f"half its frames: {kept(np.ones_like(hidden))}. Of them, those whose conditioning "
              f"frames show at least half of every shape: {kept(~hidden)}; those where a shape "
              f"is mostly hidden in them: {kept(hidden)}."]
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


def diagnose(args, models, sampling, world):
    """Run one diagnostic; write DIAGNOSTIC.md and DIAGNOSTIC.png to --out."""
    setting = args.setting if args.setting in (*SETTINGS, "film") else "consistent"
    common = dict(setting=setting, seeds=args.seeds, sampling=sampling,
                  noise_seed=args.noise_seed, world=world, event_every=args.event_every)
    bank = bank_roll = None
    if args.bank:
        cfg, (bank, _, bank_roll) = run_banks(args.bank)
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
        reals = [real_clips(s, setting, args.chunks, T, m, model.cfg.resolution,
                            args.event_every, world) for s in range(args.seeds)]
        video = real_video(reals)  # [S, C, T + (chunks - 1)(T - m), H, W]
        error = free_video(model, reals, args.chunks, setting, sampling, args.noise_seed) - video
        clips, real = (v[:, :, T:].unflatten(2, (args.chunks - 1, T - m)).transpose(1, 2)
                       for v in (error, video))  # each [S, chunks - 1, C, T - m, H, W]
        groups = {f"rollout, clip {k}": (clips[:, k - 2], real[:, k - 2])
                  for k in HEADROOM_CLIPS if 2 <= k <= args.chunks}
        groups[f"rollout, clips 2-{args.chunks}"] = (clips.flatten(0, 1),
                                                      real.flatten(0, 1))  # [S (chunks - 1), ...]
        text = errors_table(error_stats(bank, groups, video[:, :, :T], bank_roll))
        error_picture(bank, clips.flatten(0, 1), png)
    with open(md, "w") as f:
        f.write(f"{args.seeds} seeds, {setting}, {sampler_line(sampling)}; "
                f"checkpoints: {', '.join(args.ckpt)}\n\n{text}")
    print(text, flush=True)
    return result if args.diagnostic != "errors" else text


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
                   help="instead of the benchmark, one diagnostic:\n"
                        "headroom: each clip teacher-forced against free-running, clips 1-10 "
                        "and 50\nresponse: the next clip's error against an error put on the "
                        "real motion frames\nerrors: banked one-step errors (--bank) against "
                        "the first model's rollout errors")
    p.add_argument("--bank", default="", metavar="RUN/ckpt.pt",
                   help="the error banks of an ERFT run (for --diagnostic response, errors)")
    p.add_argument("--seeds", type=int, default=16, help="rollouts (worlds) per setting")
    p.add_argument("--world", choices=list(WORLDS), default=None,
                   help="the kind of world (default: the first checkpoint's training world)")
    p.add_argument("--chunks", type=int, default=50, help="clips per rollout")
    p.add_argument("--event-every", type=int, default=5, help="clips between scene events")
    add_sampler_flags(p)
    p.add_argument("--noise-seed", type=int, default=0,
                   help="seed of the sampler's noise, the same for every model (the worlds' "
                        "seeds stay 0 .. seeds - 1)")
    p.add_argument("--draws", type=int, default=1,
                   help="draws of noise per world (noise seeds --noise-seed and up), scored "
                        "together")
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
    problems = not_positive(args, ("seeds", "chunks", "event_every", "draws")) + \
        sampler_problems(args)
    named = [c.split("=", 1) if "=" in c else [os.path.basename(os.path.dirname(c)) or c, c]
             for c in args.ckpt]
    if not 0 <= args.video_seed < args.seeds:
        problems.append(f"--video-seed must be in [0, --seeds), got {args.video_seed}")
    if not named:
        problems.append("give at least one --ckpt NAME=PATH")
    problems += [f"--ckpt {path}: no such file" for _, path in named if not os.path.isfile(path)]
    if args.diagnostic == "errors" and not args.bank:
        problems.append("--diagnostic errors needs --bank RUN/ckpt.pt (an ERFT run's)")
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


def load_models(named, device) -> dict:
    """The models by name, each with its checkpoint's sampling defaults (model.sampling)."""
    try:
        return {name: from_checkpoint(path, device=device) for name, path in named}
    except ValueError as err:
        fail([str(err)])


def main(args):
    named = check(args)
    models = load_models(named, pick_device(args.device))
    first = next(iter(models.values()))
    world = args.world or first.sampling.world
    s = sampling_of(first, steps=args.sample_steps, shift=args.shift, guidance=args.guidance,
                    eta=args.eta)
    sampling = dict(steps=s.steps, shift=s.shift, guidance=s.guidance, eta=s.eta)  # for all
    os.makedirs(args.out, exist_ok=True)
    if args.diagnostic:
        try:
            return diagnose(args, models, sampling, world)
        except ValueError as err:
            fail([str(err)])
    chosen = SETTINGS if args.setting == "all" else [args.setting]
    all_scores, report = {}, []
    for setting in chosen:
        video = os.path.join(args.out, f"side_by_side_{setting}.mp4")
        runs = [evaluate(models, setting, args.seeds, args.chunks, args.event_every, sampling,
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
