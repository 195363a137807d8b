"""
train.py: train svi's video DiT with rectified flow: the base model on clean conditions, then
fine-tune it, with or without Error-Recycling Fine-Tuning (ERFT, errors.py).

    python train.py                                            # base model, preset T, this CPU
    python train.py --init-from out/ckpt.pt --erft --steps 1500 --out out/erft
    python train.py --init-from out/ckpt.pt --steps 1500 --out out/clean    # clean fine-tune
    python train.py --resume --out out/erft                    # continue where it stopped
    python train.py --init-from out/ckpt.pt --depth 8 --out out/deeper   # grow: blocks added
    python train.py --init-from checkpoints/base.pt --erft --out runs/erft \
        --export checkpoints/erft.pt                           # a small EMA-only copy to share
    torchrun --nproc_per_node=2 train.py --preset S --batch-size 64     # DDP, same script

A training clip of T frames comes with its first m frames as the "motion frames" of the
condition, then either the anchor (shot mode: a random frame of the clip, or with --anchor-gap G
one from up to G frames before it, as SVI 2.0) or zeros (film mode);
the model regenerates the whole clip (as the official code, the loss covers every frame).
Everything random is drawn from generators seeded by (seed, step, rank), so a resumed run is
bitwise identical, on CPU, to one that never stopped.
"""
import argparse
import dataclasses
import gc
import json
import math
import os
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass

import imageio.v3 as iio
import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from data import (ShapesSource, ShapesWorld, VideoFolder, VideoWriter, to_uint8, to_unit,
                  writable_folder)
from errors import ErrorBank, gather_from_ranks, inject, one_step_errors
from flow import flow_loss, interpolate, sample_t, schedule, velocity_target
from model import (PRESETS, DiTConfig, VideoDiT, add_lora, condition, load_checkpoint,
                   merged_state_dict, tokenize)
from sample import rollout


@dataclass
class TrainConfig:
    # data
    data: str = "shapes"          # "shapes" (the built-in world) or a folder of videos
    frames: int = 8               # T, frames per clip
    resolution: int = 32          # H = W
    motion_frames: int = 2        # m, frames carried from one clip to the next
    p_film: float = 0.5           # share of clips conditioned in film mode (no anchor)
    anchor_gap: int = 0           # shot-mode anchor: a frame 0 to this many frames before the
                                  # clip (SVI 2.0); 0: a random frame of the clip (SVI 1.0)
    p_event: float = 0.2          # share of world clips with a scene event after the motion frames
    p_control: float = 0.2        # share of world clips whose shape 0 follows a control path
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
    cond_noise: float = 0.0       # > 0: Gaussian noise of std U(0, this) on the motion frames,
                                  # the handcrafted anti-drift of GameNGen / DIAMOND (a baseline)
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
    # sampling during training
    sample_steps: int = 20        # sampling steps per clip
    sample_eta: float = 1.0       # share of the noise drawn anew per step (flow.euler_sample)
    guidance: float = 1.0         # classifier-free guidance scale of the periodic samples
    # input / output
    out: str = "out"              # run folder: ckpt.pt, log.jsonl, samples/
    init_from: str = ""           # start from the weights of this checkpoint (fine-tuning)
    resume: bool = False          # continue the run in --out from its checkpoint
    export: str = ""              # at the end, also write the EMA weights alone in half
                                  # precision to this .pt (small, for sharing: checkpoints/)
    seed: int = 0
    device: str = "auto"          # auto, cpu, cuda
    compile: bool = False         # torch.compile the model (CUDA)
    grad_ckpt: bool = False       # recompute each block in the backward pass (saves memory)
    log_every: int = 50
    sample_every: int = 500
    ckpt_every: int = 500


def parse_args(argv=None) -> TrainConfig:
    """Flags generated from TrainConfig: --batch-size 32, --erft / --no-erft, ..."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.type is bool or f.type == "bool":
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default)
        else:
            kind = {"int": int, "float": float, "str": str}.get(str(f.type), f.type)
            p.add_argument(flag, type=kind, default=f.default)
    return TrainConfig(**vars(p.parse_args(argv)))


def check(cfg: TrainConfig):
    """Reject bad settings with one clear line (exit status 2) before any heavy work."""
    problems = []
    for name in ("frames", "resolution", "motion_frames", "steps", "batch_size", "buckets",
                 "capacity", "sample_steps", "log_every", "sample_every", "ckpt_every"):
        if getattr(cfg, name) <= 0:
            problems.append(f"--{name.replace('_', '-')} must be positive")
    if cfg.motion_frames >= cfg.frames:
        problems.append(f"--motion-frames {cfg.motion_frames} must be fewer than --frames")
    if cfg.preset not in PRESETS:
        problems.append(f"--preset {cfg.preset}: choose one of {', '.join(PRESETS)}")
    if min(cfg.patch_t, cfg.patch_s) <= 0 or cfg.frames % cfg.patch_t or \
            cfg.resolution % cfg.patch_s:
        problems.append(f"--frames must divide by --patch-t {cfg.patch_t} and --resolution by "
                        f"--patch-s {cfg.patch_s}")
    if cfg.preset in PRESETS:
        sizes = model_sizes(cfg)
        if sizes["width"] % sizes["heads"]:
            problems.append(f"width {sizes['width']} must divide by heads {sizes['heads']}")
    if cfg.anchor_gap < 0:
        problems.append("--anchor-gap must be 0 or more")
    if cfg.replace not in ("l2", "random", "fifo"):
        problems.append(f"--replace {cfg.replace}: choose l2, random or fifo")
    if cfg.init_from and not os.path.isfile(cfg.init_from):
        problems.append(f"--init-from {cfg.init_from}: no such file")
    if cfg.resume and not os.path.isfile(os.path.join(cfg.out, "ckpt.pt")):
        problems.append(f"--resume: no checkpoint {os.path.join(cfg.out, 'ckpt.pt')}")
    if not writable_folder(cfg.out):
        problems.append(f"--out {cfg.out}: not a writable folder")
    if cfg.export and (not cfg.export.endswith(".pt") or
                       not writable_folder(os.path.dirname(cfg.export) or ".")):
        problems.append(f"--export {cfg.export}: give a .pt path in a writable folder")
    if cfg.data != "shapes" and not os.path.isdir(cfg.data):
        problems.append(f"--data {cfg.data}: no such folder (or use --data shapes)")
    for name in ("p_film", "p_event", "p_control", "p_uncond", "p_img", "p_vid", "p_noise",
                 "p_clean", "p_bank_clean", "sample_eta"):
        if not 0.0 <= getattr(cfg, name) <= 1.0:
            problems.append(f"--{name.replace('_', '-')} must be within [0, 1]")
    fail(problems)


def model_sizes(cfg: TrainConfig) -> dict:
    """The preset's sizes, each DiTConfig field overridden by its flag when that is given (> 0)."""
    names = ("width", "depth", "heads", "mlp_ratio", "text_len", "text_width", "text_depth")
    return dict(PRESETS[cfg.preset], **{k: getattr(cfg, k) for k in names if getattr(cfg, k) > 0})


def fail(problems: list[str]):
    """Any problem: one line each on stderr, exit status 2."""
    if problems:
        print("error: " + "\nerror: ".join(problems), file=sys.stderr)
        sys.exit(2)


def get_lr(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to lr / 10: a pure function of the step."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


@torch.no_grad()
def update_ema(ema, model, decay):
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p, 1 - decay)


def save_checkpoint(path: str, state: dict):
    """Write to a temporary file, then rename: a crash at any moment leaves the old one intact."""
    tmp = path + ".tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)


@torch.no_grad()
def write_samples(model, cfg: TrainConfig, path: str, chunks=3, worlds=2):
    """Rollouts from ground-truth frames of fixed worlds (shot mode): a gif with the real video
    on the left of each rollout, and a png strip next to it (per world a row of real frames,
    then a row of generated ones)."""
    device = next(model.parameters()).device
    m = cfg.motion_frames
    ws = [ShapesWorld(seed, cfg.resolution) for seed in range(worlds)]
    first = torch.stack([to_unit(w.frames(m)) for w in ws]).to(device)  # [W, C, m, H, W]
    gen = torch.Generator().manual_seed(0)
    clips = list(rollout(model, first, first[:, :, 0], lambda k: [w.prompt() for w in ws],
                         lambda k: None, chunks, gen, steps=cfg.sample_steps, shift=cfg.shift,
                         guidance=cfg.guidance, eta=cfg.sample_eta))
    fake = [to_uint8(v) for v in torch.cat(clips, dim=2)]               # W x [frames, H, W, 3]
    real = [np.concatenate([to_uint8(f.cpu()), w.frames(len(v) - m)]) for f, w, v in
            zip(first, ws, fake)]
    writer = VideoWriter(path)
    writer.write(np.concatenate([x for pair in zip(real, fake) for x in pair], axis=2))
    writer.close()
    strip = np.concatenate([np.concatenate(list(x), axis=1) for pair in zip(real, fake)
                            for x in pair], axis=0)
    iio.imwrite(path.replace(".gif", ".png"), strip.repeat(2, 0).repeat(2, 1))


def make_batch(source, cfg: TrainConfig, n: int, rng, gen, text_len: int, device):
    """n training clips and everything drawn for them: x0, noise, t, the condition (motion frames,
    then the anchor, a frame of the clip or from before it, or zeros in film mode), prompt tokens
    (dropped with p_uncond) and the control stream."""
    T, m = cfg.frames, cfg.motion_frames
    video, prompts, control, anchor = source.clips(n, T, rng, cfg.anchor_gap)
    x0, control, anchor = video.to(device), control.to(device), anchor.to(device)
    film = torch.from_numpy(rng.random(n) < cfg.p_film).to(device)
    anchor = anchor * (~film).float().view(-1, 1, 1, 1)  # [B, C, H, W], zeros in film mode
    cond = condition(x0[:, :, :m], anchor, T)                        # [B, C + 1, T, H, W]
    if cfg.cond_noise > 0:  # the handcrafted baseline: noisy motion frames, clean target
        sigma = cfg.cond_noise * torch.rand(n, generator=gen).view(-1, 1, 1, 1, 1)
        cond[:, 1:, :m] += sigma.to(device) * torch.randn(cond[:, 1:, :m].shape,
                                                          generator=gen).to(device)
    prompts = ["" if u < cfg.p_uncond else p for u, p in zip(rng.random(n), prompts)]
    ids, mask = (x.to(device) for x in tokenize(prompts, text_len))
    t = sample_t(n, gen, cfg.shift).to(device)
    noise = torch.randn(x0.shape, generator=gen).to(device)
    return x0, noise, t, cond, ids, mask, control


def main(cfg: TrainConfig):
    check(cfg)
    # --- processes and devices: plain python, or torchrun (DDP) ---
    ddp = int(os.environ.get("WORLD_SIZE", 1)) > 1
    device = cfg.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if ddp:
        dist.init_process_group("nccl" if device == "cuda" else "gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
        if device == "cuda":
            device = f"cuda:{int(os.environ['LOCAL_RANK'])}"
            torch.cuda.set_device(device)
    else:
        rank, world = 0, 1
    master = rank == 0
    micro = cfg.micro_batch or cfg.batch_size // world
    if cfg.batch_size % (world * micro):
        fail([f"--batch-size {cfg.batch_size} must divide by {world} rank(s) x --micro-batch "
              f"{micro}"])
    accum = cfg.batch_size // (world * micro)  # micro-batches per rank and step
    if "cuda" in device:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    autocast = torch.autocast("cuda", torch.bfloat16) if "cuda" in device else nullcontext()
    torch.manual_seed(cfg.seed)

    # --- data ---
    if cfg.data == "shapes":
        source = ShapesSource(cfg.resolution, cfg.motion_frames, cfg.p_event, cfg.p_control)
    else:
        source = VideoFolder(cfg.data, cfg.frames, cfg.resolution)

    # --- model, EMA, optimiser, error banks; from scratch, --init-from or --resume ---
    ckpt_path = os.path.join(cfg.out, "ckpt.pt")
    start = cfg.init_from if cfg.init_from and not cfg.resume else (ckpt_path if cfg.resume else "")
    try:
        ckpt = load_checkpoint(start) if start else None
    except ValueError as err:
        fail([str(err)])
    if ckpt is not None:
        model_cfg = DiTConfig(**ckpt["model_cfg"])
        if (model_cfg.frames, model_cfg.resolution) != (cfg.frames, cfg.resolution):
            fail([f"{start} was trained with --frames {model_cfg.frames} --resolution "
                  f"{model_cfg.resolution}; pass the same"])
        if cfg.init_from and not cfg.resume and cfg.depth:  # grow a base: --depth > its depth
            if cfg.depth < model_cfg.depth:
                fail([f"--depth {cfg.depth}: {start} has {model_cfg.depth} blocks; "
                      "--init-from can add blocks, not remove them"])
            model_cfg.depth = cfg.depth
    else:
        model_cfg = DiTConfig(frames=cfg.frames, resolution=cfg.resolution, patch_t=cfg.patch_t,
                              patch_s=cfg.patch_s, rope=cfg.rope, **model_sizes(cfg))
    model = VideoDiT(model_cfg)
    if cfg.init_from and not cfg.resume:
        # start from the base's EMA; blocks it lacks are appended, each the identity
        # (adaLN-Zero), so the grown model starts as the base
        missing, unexpected = model.load_state_dict(merged_state_dict(ckpt["ema"]), strict=False)
        assert not unexpected and all(k.startswith("blocks.") for k in missing), missing
    if cfg.lora_rank > 0:
        add_lora(model, cfg.lora_rank)
    ema = VideoDiT(model_cfg)
    if cfg.lora_rank > 0:
        add_lora(ema, cfg.lora_rank)
    ema.load_state_dict(model.state_dict())
    model.to(device), ema.to(device).requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                  betas=(0.9, 0.99), fused="cuda" in device)
    anchors = schedule(cfg.sample_steps, cfg.shift)[:-1]  # the sampler's timesteps
    anchors = anchors[torch.linspace(0, len(anchors) - 1, cfg.buckets).round().long()]
    bank_dtype = getattr(torch, cfg.bank_dtype)
    bank_vid = ErrorBank(anchors, cfg.capacity, cfg.replace, cfg.bank_device, bank_dtype)
    bank_noise = ErrorBank(anchors, cfg.capacity, cfg.replace, cfg.bank_device, bank_dtype)
    step = 0
    if cfg.resume:
        model.load_state_dict(ckpt["model"])
        ema.load_state_dict(ckpt["ema"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if "bank_vid" in ckpt:
            bank_vid.load_state_dict(ckpt["bank_vid"])
            bank_noise.load_state_dict(ckpt["bank_noise"])
        step = ckpt["step"]
    del ckpt
    model.grad_ckpt = cfg.grad_ckpt
    net = torch.compile(model) if cfg.compile else model
    net = DistributedDataParallel(net) if ddp else net
    if master:
        os.makedirs(os.path.join(cfg.out, "samples"), exist_ok=True)
        print(f"model: preset {cfg.preset}, {model.num_params() / 1e6:.2f}M parameters "
              f"({sum(p.numel() for p in params) / 1e6:.2f}M trained), {device}, {world} rank(s)")
    log = open(os.path.join(cfg.out, "log.jsonl"), "a") if master else None
    configs = dict(model_cfg=dataclasses.asdict(model_cfg), train_cfg=dataclasses.asdict(cfg))

    # --- the loop ---
    m = cfg.motion_frames
    losses, t0 = [], time.time()
    while step < cfg.steps:
        lr = get_lr(step, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.zero_grad(set_to_none=True)
        loss, errors = 0.0, []
        for i in range(accum):  # micro-batch i of this rank: shard rank * accum + i of the batch
            rng = np.random.default_rng([cfg.seed, step, rank * accum + i])  # all its randomness
            gen = torch.Generator().manual_seed(int(rng.integers(2 ** 62)))
            x0, noise, t, cond, ids, mask, control = make_batch(source, cfg, micro, rng, gen,
                                                                model_cfg.text_len, device)
            if cfg.erft:  # error recycling: inputs with the model's own errors, target clean
                x_t, v_target, cond, clean = inject(x0, noise, cond, t, bank_vid, bank_noise, gen,
                                                    cfg.p_img, cfg.p_vid, cfg.p_noise,
                                                    cfg.p_clean, m)
            else:
                x_t, v_target = interpolate(x0, noise, t), velocity_target(x0, noise)
            last = i == accum - 1  # DDP averages the gradients over ranks on the last only
            with nullcontext() if last or not ddp else net.no_sync():
                with autocast:
                    v_hat = net(x_t, t, cond, ids, mask, control)
                micro_loss = flow_loss(v_hat, v_target)
                if not torch.isfinite(micro_loss):
                    raise SystemExit(f"error: loss is {micro_loss.item()} at step {step}; "
                                     f"the last good checkpoint is kept in {ckpt_path}")
                (micro_loss / accum).backward()
            loss += micro_loss.item() / accum
            if cfg.erft:  # this step's errors; those of clean samples only now and then
                keep = ~clean.cpu() | (torch.rand(micro, generator=gen) < cfg.p_bank_clean)
                errors.append((*one_step_errors(v_hat.detach(), v_target, t), t, keep))
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        optimizer.step()
        update_ema(ema, model, min(cfg.ema, (1 + step) / (10 + step)))
        if cfg.erft:  # bank them, after the update, in shard order
            e_vid, e_noise, t, keep = (torch.cat(x) for x in zip(*errors))
            if ddp and step < cfg.warmup_gather:
                e_vid, e_noise, t, keep = gather_from_ranks(
                    e_vid.to(device), e_noise.to(device), t, keep.to(device, torch.uint8))
            keep = keep.cpu().bool()
            bank_vid.add(e_vid.cpu()[keep], t.cpu()[keep])
            bank_noise.add(e_noise.cpu()[keep], t.cpu()[keep])
        losses.append(loss)
        step += 1

        # --- logging, samples, checkpoints (rank 0) ---
        if master and (step % cfg.log_every == 0 or step == cfg.steps):
            dt = (time.time() - t0) / len(losses)
            record = dict(step=step, loss=float(np.mean(losses)), lr=lr, sec_per_step=dt)
            if cfg.erft:
                norms = [n for n in bank_vid.stats()["mean_norm"] if n > 0]
                record.update(bank=len(bank_vid), bank_capacity=cfg.buckets * cfg.capacity,
                              error_norm=float(np.mean(norms)) if norms else 0.0)
            print(" ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                           for k, v in record.items()), flush=True)
            log.write(json.dumps(record) + "\n")
            log.flush()
            losses, t0 = [], time.time()
        if master and (step % cfg.sample_every == 0 or step == cfg.steps):
            write_samples(ema, cfg, os.path.join(cfg.out, "samples", f"step_{step:06d}.gif"))
            if cfg.erft and len(bank_vid):
                write_bank_picture(bank_vid, os.path.join(cfg.out, "samples", "bank.png"))
        if master and (step % cfg.ckpt_every == 0 or step == cfg.steps):
            state = dict(model=model.state_dict(), ema=ema.state_dict(),
                         optimizer=optimizer.state_dict(), step=step, **configs)
            if cfg.erft:
                state.update(bank_vid=bank_vid.state_dict(), bank_noise=bank_noise.state_dict())
            save_checkpoint(ckpt_path, state)
    if master and cfg.export:  # EMA weights only, LoRA folded in, half precision
        half = {k: v.half() if v.is_floating_point() else v
                for k, v in merged_state_dict(ema.state_dict()).items()}
        os.makedirs(os.path.dirname(cfg.export) or ".", exist_ok=True)
        save_checkpoint(cfg.export, dict(ema=half, step=step, **configs))
    if ddp:  # leave together, and free what still holds the group while python is whole:
        dist.barrier()  # gloo threads met at interpreter exit can abort a finished rank
        dist.destroy_process_group()
        gc.collect()
    return model, ema, bank_vid, bank_noise


def write_bank_picture(bank: ErrorBank, path: str):
    """The mean error norm per bucket as a bar chart (noisy buckets left), above a strip of one
    banked error per bucket (its first frame, grey = 0)."""
    stats = bank.stats()
    norms = np.array(stats["mean_norm"])
    H = bank.errors.shape[-1]
    bars = np.full((H, len(norms) * H, 3), 255, np.uint8)
    for b, n in enumerate(norms):
        height = int(round(H * n / max(norms.max(), 1e-8)))
        bars[H - height:, b * H:(b + 1) * H - 1] = (200, 60, 60)
    tiles = []
    for b, c in enumerate(stats["count"]):
        e = bank.errors[b, 0, :, 0].float() if c else torch.zeros(3, H, H)       # [C, H, W]
        e = e / (e.abs().max() + 1e-8)
        tiles.append(((e + 1) * 127.5).round().clamp(0, 255).byte().permute(1, 2, 0).numpy())
    picture = np.concatenate([bars, np.concatenate(tiles, axis=1)], axis=0)
    iio.imwrite(path, picture.repeat(3, 0).repeat(3, 1))


if __name__ == "__main__":
    main(parse_args())
