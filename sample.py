"""
sample.py: infinite video generation, one clip after another (the inference loop of SVI).

Each clip is generated from noise by steps of the rectified flow (flow.euler_sample, as the
checkpoint records it: for checkpoints/base.pt DDPM's step, a share of the noise drawn anew each
step; --eta sets another), conditioned on the last m frames of the previous clip (its "motion
frames") and, in shot mode, on the anchor image (in film mode on zeros, so the scene may change
with the prompt). The first clip starts from a frame of the synthetic world (or --image). The m
overlapping frames are dropped when clips are joined, so N clips of T frames make N * (T - m) + m
frames. Frames go to disk as each clip finishes: memory does not grow with N, and Ctrl-C leaves a
playable video of the clips done so far. Next to the video, a strip (out/video.png) holds the last
frame of clip 1 and of every fifth of the video.

    python sample.py --chunks 50                 # out/video.mp4 from the best shipped model
    python sample.py --chunks 20 --ckpt out/ckpt.pt           # from your own training run
    python sample.py --chunks 50 --mode film --prompts story.txt --out story.mp4
    python sample.py --chunks 10 --control world              # shape 0 follows the world's path
    python sample.py --image start.png --prompt "a red circle on a black background"
"""
import argparse
import contextlib
import dataclasses
import os
import signal
import sys

import imageio.v3 as iio
import numpy as np
import torch
from tqdm import tqdm

from data import WORLDS, ShapesWorld, VideoWriter, read_video, to_uint8, to_unit, writable_folder
from flow import ANCESTRAL, euler_sample
from model import Sampling, condition, from_checkpoint, tokenize


DEFAULT_CKPT = "checkpoints/erft_lowt.pt"  # ERFT, conditioning errors at t <= 0.3 (README)


def sampling_of(model, **given) -> Sampling:
    """How to sample: steps, shift, guidance and eta each given and not None, else the
    checkpoint's (model.sampling)."""
    return dataclasses.replace(model.sampling, **{k: v for k, v in given.items() if v is not None})


@torch.no_grad()
def generate_clip(model, cond, prompts, control, noise, generator=None, **given):
    """One clip [B, C, T, H, W] from noise, conditioned on cond (from model.condition), a prompt
    per sample and a control stream [B, T, 2] (NaN: none); the sampler as sampling_of().
    guidance > 1 adds classifier-free guidance, whose unconditional branch drops the prompt only;
    eta is the share of noise drawn anew (from generator) at each step (flow.euler_sample). The
    prompts are encoded once, not at every step."""
    s = sampling_of(model, **given)
    encode = lambda texts: model.text_encoder(*(x.to(noise.device) for x in
                                                tokenize(texts, model.cfg.text_len)))  # [B, D]
    text, empty = encode(prompts), encode([""] * len(prompts)) if s.guidance != 1 else None

    def velocity(x, t, conditional):
        return model(x, t, cond, None, None, control, text=text if conditional else empty)

    return euler_sample(velocity, noise, s.steps, s.shift, s.guidance, s.eta, generator)


@torch.no_grad()
def rollout(model, first, anchor, prompts, controls, chunks, generator, **given):
    """Generate `chunks` clips in a row (SVI's inference loop); yields each clip's new frames
    [B, C, T', H, W]. Clip k is conditioned on the last m frames of clip k - 1,
        cond_k = [x_{k-1}[-m:], anchor, ..., anchor] (shot mode) or [x_{k-1}[-m:], 0, ..., 0]
    (film mode): the paper's X_img, into which its Eq. 3 puts errors like these in training.

    first: [B, C, m, H, W] the motion frames of the first clip; anchor: [B, C, H, W] (shot mode)
    or None (film mode); prompts(k) and controls(k) give clip k's prompts (B strings) and
    control stream ([B, T, 2], NaN for none); the sampler as sampling_of(). Clip 0 yields all
    T frames, later clips T - m."""
    cfg = model.cfg
    motion, m = first, first.shape[2]
    B, C, _, H, W = first.shape
    for k in range(chunks):
        cond = condition(motion, anchor, cfg.frames)
        noise = torch.randn(B, C, cfg.frames, H, W, generator=generator).to(first.device)
        control = controls(k)
        control = None if control is None else control.to(first.device)
        clip = generate_clip(model, cond, prompts(k), control, noise, generator, **given)
        motion = clip[:, :, -m:]  # the next clip continues from the last m frames
        yield clip if k == 0 else clip[:, :, m:]


# -----------------------------------------------------------------------------
# The scripts' flags: the device, and one way to refuse bad input

def fail(problems: list[str]):
    """Any problem: one line each on stderr, exit status 2, before any heavy work starts."""
    if problems:
        print("error: " + "\nerror: ".join(problems), file=sys.stderr)
        sys.exit(2)


def not_positive(flags, names) -> list[str]:
    """A message for each of these flags (attributes of flags) that is not above zero."""
    return [f"--{n.replace('_', '-')} must be positive, got {getattr(flags, n)}"
            for n in names if getattr(flags, n) <= 0]


def pick_device(name: str) -> str:
    """--device auto is CUDA when there is one, else the CPU; any other name is kept."""
    return ("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name


def device_problems(name: str) -> list[str]:
    """What is wrong with a --device flag, before any work starts (a list of messages)."""
    if name == "meta":
        return ["--device meta holds shapes, not values (the tests use it to check that every "
                "tensor follows the model's device); choose auto, cpu or cuda"]
    try:
        device = torch.device(pick_device(name))
    except RuntimeError:
        return [f"--device {name}: not a device; choose auto, cpu or cuda"]
    if device.type == "cuda" and not torch.cuda.is_available():
        return [f"--device {name}: this PyTorch build sees no CUDA device; use --device cpu"]
    return []


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--ckpt", default=DEFAULT_CKPT,
                   help="checkpoint written by train.py (default: the shipped model)")
    p.add_argument("--chunks", type=int, default=10, help="number of clips to generate")
    p.add_argument("--out", default="out/video.mp4", help="output video, .mp4 or .gif")
    p.add_argument("--mode", choices=["shot", "film"], default="shot",
                   help="shot: the first frame anchors every clip; film: no anchor")
    p.add_argument("--prompt", default=None, help="prompt of every clip (default: the world's)")
    p.add_argument("--prompts", default=None, help="file, one prompt per clip (last repeats)")
    p.add_argument("--control", default=None,
                   help="'world' (shape 0 on the world's path) or a file of 'x y' lines per frame"
                        " in [-1, 1] (the last line repeats)")
    p.add_argument("--image", default=None, help="start from this image instead of the world")
    p.add_argument("--world-seed", type=int, default=0, help="which synthetic world to start from")
    p.add_argument("--world", choices=list(WORLDS), default=None,
                   help="the kind of world (default: the one the checkpoint was trained on)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampling noise")
    add_sampler_flags(p)
    p.add_argument("--fps", type=int, default=8)
    p.add_argument("--scale", type=int, default=4, help="enlarge frames this many times")
    p.add_argument("--device", default="auto", help="auto (CUDA when there is one), cpu, cuda")
    return p.parse_args(argv)


def add_sampler_flags(p):
    """--sample-steps, --guidance, --eta, --shift: each, when not given, the checkpoint's (its
    model.sampling: as it was trained, train.py --sample-steps, --sample-eta, --guidance,
    --shift)."""
    p.add_argument("--sample-steps", type=int, default=None, help="sampler steps per clip")
    p.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale")
    p.add_argument("--eta", type=eta_value, default=None,
                   help="share of the noise drawn anew at each step: 0 is the flow's ODE "
                        "(Euler), 'ancestral' DDPM's step")
    p.add_argument("--shift", type=float, default=None, help="schedule shift")


def sampler_problems(args) -> list[str]:
    """What is wrong with the sampler flags given (a list of messages)."""
    given = argparse.Namespace(**{k: getattr(args, k) for k in ("sample_steps", "shift")
                                  if getattr(args, k) is not None})
    problems = not_positive(given, vars(given))
    return problems + eta_problems("--eta", args.eta)


def eta_value(text: str) -> float | str:
    """The value of --eta (and train.py's --sample-eta): a number, or "ancestral"."""
    try:
        return ANCESTRAL if text == ANCESTRAL else float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a number in [0, 1] or {ANCESTRAL}, not {text!r}")


def eta_problems(flag: str, eta) -> list[str]:
    return [] if eta in (None, ANCESTRAL) or 0 <= eta <= 1 else \
        [f"{flag} must be in [0, 1] or {ANCESTRAL}, got {eta}"]


def check_args(args):
    """Reject bad input with one clear line before any heavy work."""
    problems = not_positive(args, ("chunks", "fps", "scale")) + sampler_problems(args)
    if not os.path.splitext(args.out)[1].lower() in (".mp4", ".gif"):
        problems.append(f"--out {args.out}: must end in .mp4 or .gif")
    for name in ("ckpt", "prompts", "image"):
        path = getattr(args, name)
        if path is not None and not os.path.isfile(path):
            problems.append(f"--{name} {path}: no such file")
    if args.control not in (None, "world") and not os.path.isfile(args.control):
        problems.append(f"--control {args.control}: no such file (or use --control world)")
    if args.prompts and os.path.isfile(args.prompts) and not read_lines(args.prompts):
        problems.append(f"--prompts {args.prompts}: the file has no prompt")
    if not writable_folder(os.path.dirname(os.path.abspath(args.out))):
        problems.append(f"--out {args.out}: not in a writable folder")
    fail(problems + device_problems(args.device))


@contextlib.contextmanager
def stop_after_the_clip():
    """Ctrl-C sets a flag, checked after each clip is written, so the video only ever ends on a
    whole clip (an exception inside the writer could cut one); a second Ctrl-C stops at once."""
    stop = []

    def ask(signum, frame):
        stop.append(signum)
        signal.signal(signal.SIGINT, previous)  # the next Ctrl-C interrupts as usual

    previous = signal.signal(signal.SIGINT, ask)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)


def read_lines(path):
    with open(path, encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]


def world_start(worlds, m: int, device, shot: bool = True):
    """The start of a rollout from synthetic worlds: their first m frames [B, C, m, H, W] and, in
    shot mode, the anchor (the first frame) [B, C, H, W], else None; both on device."""
    first = torch.stack([to_unit(w.frames(m)) for w in worlds]).to(device)  # [B, C, m, H, W]
    return first, first[:, :, 0] if shot else None


@torch.no_grad()
def write_samples(model, path: str, chunks=3, worlds=2):
    """Rollouts from ground-truth frames of fixed worlds (shot mode, the model's sampler), as
    train.py writes them: a gif with the real video on the left of each rollout, and a png strip
    next to it (per world a row of real frames, then a row of generated ones)."""
    device, m = next(model.parameters()).device, model.sampling.motion_frames
    ws = [ShapesWorld(seed, model.cfg.resolution, model.sampling.world) for seed in range(worlds)]
    first, anchor = world_start(ws, m, device)  # [worlds, C, m, H, W], [worlds, C, H, W]
    clips = list(rollout(model, first, anchor, lambda k: [w.prompt() for w in ws],
                         lambda k: None, chunks, torch.Generator().manual_seed(0)))
    fake = [to_uint8(v) for v in torch.cat(clips, dim=2)]               # W x [frames, H, W, 3]
    real = [np.concatenate([to_uint8(f.cpu()), w.frames(len(v) - m)]) for f, w, v in
            zip(first, ws, fake)]
    writer = VideoWriter(path)
    writer.write(np.concatenate([x for pair in zip(real, fake) for x in pair], axis=2))
    writer.close()
    strip = np.concatenate([np.concatenate(list(x), axis=1) for pair in zip(real, fake)
                            for x in pair], axis=0)
    iio.imwrite(path.replace(".gif", ".png"), strip.repeat(2, 0).repeat(2, 1))


def start(args, world, T: int, m: int, device):
    """This video's first motion frames and anchor (--image or the world), and its storyline:
    prompts(k), one per clip (--prompts: the last repeats), and controls(k), clip k's control
    stream [1, T, 2] or None (--control); all on device."""
    shot = args.mode == "shot"
    if args.image:
        image = to_unit(read_video(args.image, world.res)[:1])        # [C, 1, H, W]
        first = image.repeat(1, m, 1, 1)[None].to(device)             # [1, C, m, H, W]
        anchor = first[:, :, 0] if shot else None                    # [1, C, H, W]
    else:
        first, anchor = world_start([world], m, device, shot)
    stream = read_lines(args.prompts) if args.prompts else [args.prompt or world.prompt()]
    prompts = lambda k: [stream[min(k, len(stream) - 1)]]
    if args.control == "world":
        path = np.stack([world.control_vector(s) for s in range(args.chunks * (T - m) + m)])
    elif args.control:
        path = np.loadtxt(args.control, ndmin=2)[:, :2]
    if not args.control:
        return first, anchor, prompts, lambda k: None
    index = lambda k: np.minimum(np.arange(T) + k * (T - m), len(path) - 1)  # clip k's frames
    controls = lambda k: torch.from_numpy(path[index(k)]).float()[None].to(device)  # [1, T, 2]
    return first, anchor, prompts, controls


def main(args):
    check_args(args)
    device = pick_device(args.device)
    try:
        model = from_checkpoint(args.ckpt, device=device)
    except ValueError as err:
        fail([str(err)])
    cfg, m = model.cfg, model.sampling.motion_frames
    world = ShapesWorld(args.world_seed, cfg.resolution, args.world or model.sampling.world,
                        control=args.control == "world")
    first, anchor, prompts, controls = start(args, world, cfg.frames, m, device)
    generator = torch.Generator().manual_seed(args.seed)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    writer = VideoWriter(args.out, args.fps, args.scale)
    clips = rollout(model, first, anchor, prompts, controls, args.chunks, generator,
                    steps=args.sample_steps, shift=args.shift, guidance=args.guidance,
                    eta=args.eta)
    marks, stills, png = strip_clips(args.chunks), [], os.path.splitext(args.out)[0] + ".png"
    with stop_after_the_clip() as stop:
        try:
            for k, clip in enumerate(tqdm(clips, total=args.chunks, desc="clips", unit="clip")):
                frames = to_uint8(clip[0])                              # [T, H, W, 3]
                writer.write(frames)
                stills += [frames[-1]] if k + 1 in marks else []
                if stop:
                    print("interrupted: keeping the clips finished so far")
                    break
        finally:
            writer.close()
            if stills:
                strip = np.concatenate(stills, axis=1)                  # [H, n W, 3]
                iio.imwrite(png, strip.repeat(args.scale, 0).repeat(args.scale, 1))
    print(f"wrote {args.out}: {writer.frames} frames" +
          (f"; {png}: the last frames of clips {marks[:len(stills)]}" if stills else ""))


def strip_clips(chunks: int) -> list[int]:
    """The clips (1-based) whose last frame goes in the strip: the first, then every fifth of the
    video (1, 10, 20, 30, 40, 50 for 50 clips)."""
    return sorted({1, *(round(chunks * i / 5) for i in range(1, 6))} - {0})


if __name__ == "__main__":
    main(parse_args())
