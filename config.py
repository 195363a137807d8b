"""
config.py: every setting of a train.py run, TrainConfig, with its default, read from the command
line (each field is a flag: --batch-size 32, --erft / --no-erft, ...) and checked before any
heavy work, one line per bad value (exit status 2).

    python train.py --help        # every flag and its default
"""
import argparse
import dataclasses
import os
from dataclasses import dataclass

from data import WORLDS, writable_folder
from flow import schedule
from model import PRESETS, Sampling, load_checkpoint
from sample import device_problems, eta_problems, eta_value, fail, not_positive


@dataclass
class TrainConfig:
    # data
    data: str = "shapes"          # "shapes" (the built-in world) or a folder of videos
    frames: int = 8               # T, frames per clip
    resolution: int = 32          # H = W
    motion_frames: int = 2        # m, frames carried from one clip to the next
    p_film: float = 0.5           # share of clips conditioned in film mode (no anchor)
    anchor_gap: int = 64          # shot-mode anchor: the world's first frame, 0 to this many
                                  # frames before the clip (SVI 2.0: who, not where); 0: a random
                                  # frame of the clip (SVI 1.0), which pins shapes at test time
    world: str = ""               # the synthetic world's difficulty: simple, easy, medium, hard
                                  # (data.WORLDS); "": the checkpoint's with --init-from or
                                  # --resume, else data.DEFAULT_WORLD
    # model
    preset: str = "T"             # T, S, B, L, XL (model.PRESETS)
    width: int = 0                # > 0: override the preset's width
    depth: int = 0                # > 0: override the preset's depth (--init-from: grow to it)
    heads: int = 0                # > 0: override the preset's attention heads
    mlp_ratio: float = 0.0        # > 0: override the MLP width ratio (4)
    text_len: int = 0             # > 0: override the prompt bytes kept (64)
    text_width: int = 0           # > 0: override the text encoder's width (128)
    text_depth: int = 0           # > 0: override the text encoder's depth (2)
    patch_t: int = 2              # frames per token
    patch_s: int = 4              # pixels per token side
    rope: bool = True             # 3-D rotary positions in attention (model.rope_angles)
    prediction: str = "x"         # the network outputs x, the clean clip (Li & He 2025), or v,
                                  # the velocity; the loss is on v either way (flow.v_from_x0)
    long_skip: bool = False       # U-ViT's long skip from the input tokens to the output layer
    out_conv: bool = False        # U-ViT's 3x3 convolution on the output frames
    lora_rank: int = 0            # > 0: fine-tune low-rank adapters instead of all weights
    # optimisation
    steps: int = 1600             # total optimiser steps
    batch_size: int = 16          # clips per step, over all ranks
    micro_batch: int = 0          # clips per forward pass on a rank (0: all of the rank's share);
                                  # gradients accumulate over batch_size / (ranks x micro_batch)
    lr: float = 1.5e-3            # peak learning rate (AdamW)
    warmup: int = 100             # linear warm-up steps, then cosine decay to lr / 10
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema: float = 0.999            # decay of the weight average used for sampling
    p_uncond: float = 0.1         # prompt dropout, so classifier-free guidance works
    shift: float = 1.0            # schedule shift of training and sampling times (flow.shift_t)
    t_sampling: str = "logit-normal"  # training times: logit-normal (SD3) with
    t_mean: float = 0.8           # this mean (> 0: towards noise, < 0: towards the data)
    t_std: float = 0.8            # and this spread, of the logit of t; or uniform
    cond_leak: float = 0.0        # > 0: Gaussian noise of std (this x t) on the motion frames,
                                  # so that at high noise the model cannot copy them (Zhao et al.
                                  # 2024, conditional image leakage); sampling stays clean
    cond_noise: float = 0.0       # > 0: Gaussian noise of std U(0, this) on the motion frames,
                                  # the handcrafted anti-drift of GameNGen / DIAMOND (a baseline)
    p_vanish: float = 0.0         # > 0: the lost-shape error: erase the largest shape from the
                                  # motion frames of this share of clips (errors.vanish), so the
                                  # anchor (or in film mode the prompt) must restore it
    # error recycling (errors.py)
    erft: bool = False            # inject banked errors into the inputs
    p_img: float = 0.9            # gate of the conditioning (motion-frame) error
    p_vid: float = 0.9            # gate of the clean-clip error
    p_noise: float = 0.01         # gate of the noise error
    p_clean: float = 0.2          # gate that switches all three off
    p_bank_clean: float = 0.1     # errors of clean steps are banked with this probability
    buckets: int = 20             # bank buckets, aligned with the first sample_steps timesteps
    capacity: int = 40            # errors per bucket
    replace: str = "l2"           # when a bucket is full: l2, random or fifo
    bank_device: str = "cpu"
    bank_dtype: str = "float16"
    warmup_gather: int = 50       # under torchrun, bank all ranks' errors for this many steps
    img_t_max: float = 1.0        # draw the conditioning error from buckets at flow time <= this
    error_source: str = "onestep"  # conditioning errors: one-step errors (the paper's), rollout
                                  # (the EMA model's sampled clips minus the real ones), or both
    rollout_every: int = 4        # sample clips for the rollout bank (or pool) this often
    rollout_steps: int = 10       # with this many sampler steps
    rollout_chain: float = 0.0    # share of rollouts that start from motion frames carrying a
                                  # banked rollout error: the bank then holds later clips' errors
    p_pool: float = 0.0           # > 0: the rollout pool (errors.RolloutPool): this share of each
                                  # batch's clips are conditioned on the EMA model's own motion
                                  # frames after 1 to --pool-clips clips of a video, their target
                                  # the same video's real next clip; with or without --erft
    pool_size: int = 16           # live rollouts (videos) in the pool
    pool_clips: int = 10          # clips an entry is rolled out for before a new video starts
    pool_advance: int = 4         # entries moved on by one clip every --rollout-every steps
                                  # (with --rollout-steps sampler steps)
    # sampling during training
    sample_steps: int = Sampling.steps  # sampling steps per clip (in samples and checkpoints)
    sample_eta: float | str = "ancestral"  # share of the noise drawn anew per step, or
                                  # "ancestral", DDPM's share (flow.euler_sample)
    guidance: float = 1.0         # classifier-free guidance of samples (and the checkpoint's)
    # input / output
    out: str = "out"              # run folder: ckpt.pt, log.jsonl, samples/
    init_from: str = ""           # start from the weights of this checkpoint (fine-tuning)
    resume: bool = False          # continue the run in --out from its checkpoint
    export: str = ""              # with every checkpoint, also write the EMA weights alone in
                                  # half precision to this .pt (small, for sharing: checkpoints/)
    seed: int = 0
    device: str = "auto"          # auto (CUDA when there is one, else the CPU), cpu, cuda
    precision: str = "auto"       # auto (bf16 autocast on CUDA, fp32 elsewhere), bf16, fp32
    compile: bool = False         # torch.compile the model (CUDA)
    grad_ckpt: bool = False       # recompute each block in the backward pass (saves memory)
    log_every: int = 50
    sample_every: int = 500
    ckpt_every: int = 500


CHOICES = dict(world=list(WORLDS), preset=list(PRESETS), prediction=["v", "x"],
               t_sampling=["uniform", "logit-normal"], replace=["l2", "random", "fifo"],
               error_source=["onestep", "rollout", "both"], precision=["auto", "bf16", "fp32"])


def parse_args(argv=None) -> TrainConfig:
    """Flags generated from TrainConfig: --batch-size 32, --erft / --no-erft, ... A flag not
    given is TrainConfig's default, or with --resume the value the run in --out was trained
    with, so that `--resume --out DIR` alone goes on as the run began."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter,
                                argument_default=argparse.SUPPRESS)  # only the flags given
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.type is bool or f.type == "bool":
            p.add_argument(flag, action=argparse.BooleanOptionalAction)
        else:
            kind = eta_value if f.name == "sample_eta" else \
                {"int": int, "float": float, "str": str}.get(str(f.type), f.type)
            p.add_argument(flag, type=kind, choices=CHOICES.get(f.name))
    given = vars(p.parse_args(argv))
    path = os.path.join(given.get("out", TrainConfig.out), "ckpt.pt")
    recorded = {}
    if given.get("resume") and os.path.isfile(path):
        try:  # (a file that is no checkpoint is refused by train.build, in one line)
            recorded = load_checkpoint(path).train_cfg
        except ValueError:
            pass
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    return TrainConfig(**{**{k: v for k, v in recorded.items() if k in known}, **given})


def check(cfg: TrainConfig):
    """Reject bad settings with one clear line (exit status 2) before any heavy work."""
    problems = not_positive(cfg, ("frames", "resolution", "motion_frames", "steps", "batch_size",
                                  "buckets", "capacity", "sample_steps", "log_every",
                                  "sample_every", "ckpt_every", "rollout_every",
                                  "rollout_steps", "pool_size", "pool_clips",
                                  "pool_advance"))
    if cfg.motion_frames >= cfg.frames:
        problems.append(f"--motion-frames {cfg.motion_frames} must be fewer than --frames")
    if min(cfg.patch_t, cfg.patch_s) <= 0 or cfg.frames % cfg.patch_t or \
            cfg.resolution % cfg.patch_s:
        problems.append(f"--frames must divide by --patch-t {cfg.patch_t} and --resolution by "
                        f"--patch-s {cfg.patch_s}")
    sizes = model_sizes(cfg)
    if sizes["width"] % sizes["heads"]:
        problems.append(f"width {sizes['width']} must divide by heads {sizes['heads']}")
    if cfg.anchor_gap < 0:
        problems.append("--anchor-gap must be 0 or more")
    if not cfg.erft and (cfg.error_source != "onestep" or cfg.img_t_max < 1):
        problems.append("--error-source and --img-t-max choose ERFT's errors: add --erft")
    if cfg.rollout_chain > 0 and cfg.error_source == "onestep":
        problems.append("--rollout-chain chains rollout errors: add --error-source rollout")
    if cfg.sample_steps > 0 and cfg.img_t_max < float(schedule(cfg.sample_steps, cfg.shift)[-2]):
        problems.append(f"--img-t-max {cfg.img_t_max} is below every bucket's flow time "
                        f"({float(schedule(cfg.sample_steps, cfg.shift)[-2]):.3f} the lowest)")
    if cfg.init_from and not os.path.isfile(cfg.init_from):
        problems.append(f"--init-from {cfg.init_from}: no such file")
    if cfg.resume and not os.path.isfile(os.path.join(cfg.out, "ckpt.pt")):
        problems.append(f"--resume: no checkpoint {os.path.join(cfg.out, 'ckpt.pt')}")
    if not writable_folder(cfg.out):
        problems.append(f"--out {cfg.out}: not a writable folder")
    if cfg.export and (not cfg.export.endswith(".pt") or
                       not writable_folder(os.path.dirname(cfg.export) or ".")):
        problems.append(f"--export {cfg.export}: give a .pt path in a writable folder")
    if cfg.p_vanish > 0 and cfg.data != "shapes":
        problems.append("--p-vanish erases flat-coloured shapes: it needs --data shapes")
    if cfg.t_std <= 0 or cfg.cond_leak < 0:
        problems.append("--t-std must be positive and --cond-leak 0 or more")
    problems += device_problems(cfg.device) + eta_problems("--sample-eta", cfg.sample_eta)
    for name in ("p_film", "p_uncond", "p_img", "p_vid", "p_noise", "p_clean", "p_bank_clean",
                 "p_vanish", "img_t_max", "rollout_chain", "p_pool"):
        if not 0.0 <= getattr(cfg, name) <= 1.0:
            problems.append(f"--{name.replace('_', '-')} must be within [0, 1]")
    fail(problems)


def model_sizes(cfg: TrainConfig) -> dict:
    """The preset's sizes, each DiTConfig field overridden by its flag when that is given (> 0)."""
    names = ("width", "depth", "heads", "mlp_ratio", "text_len", "text_width", "text_depth")
    return dict(PRESETS[cfg.preset], **{k: getattr(cfg, k) for k in names if getattr(cfg, k) > 0})
