"""
train.py: train svi's video DiT with rectified flow: the base model on clean conditions, then
fine-tune it, with or without Error-Recycling Fine-Tuning (ERFT, errors.py).

    python train.py                                            # base model, preset T, this CPU
    python train.py --steps 24000 --export checkpoints/base.pt # the shipped base's recipe, 3 h
    python train.py --init-from out/ckpt.pt --erft --steps 1500 --out out/erft
    python train.py --init-from out/ckpt.pt --steps 1500 --out out/clean    # clean fine-tune
    python train.py --resume --out out/erft                    # continue where it stopped
    python train.py --init-from out/ckpt.pt --depth 8 --out out/deeper   # grow: blocks added
    python train.py --init-from checkpoints/base.pt --erft --out runs/erft \
        --export runs/erft.pt                                  # a small EMA-only copy to share
    torchrun --nproc_per_node=2 train.py --preset S --batch-size 64     # DDP, same script

A training clip of T frames comes with its first m frames as the "motion frames" of the
condition, then either the anchor (shot mode: the world's first frame, 0 to --anchor-gap frames
before the clip, as SVI 2.0; with --anchor-gap 0 a random frame of the clip, as SVI 1.0) or zeros
(film mode); the model regenerates the whole clip (as the official code, the loss covers every
frame).
Everything random is drawn from generators seeded by (seed, step, rank), so a resumed run is
bitwise identical, on CPU, to one that never stopped. The flags are config.py's TrainConfig.
"""
import dataclasses
import gc
import json
import math
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from config import TrainConfig, check, model_sizes, parse_args
from data import DEFAULT_WORLD, ShapesSource, VideoFolder
from errors import (ErrorBank, RolloutPool, conditioning_error, error_picture, gather_from_ranks,
                    inject, one_step_errors, vanish)
from flow import flow_loss, interpolate, sample_t, schedule, velocity_target
from model import (Checkpoint, DiTConfig, Sampling, VideoDiT, add_lora, condition,
                   load_checkpoint, merged_state_dict, save_checkpoint, tokenize)
from sample import fail, generate_clip, pick_device, write_samples


# -----------------------------------------------------------------------------
# The schedule, the weight average and the training batch

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


class Batch(NamedTuple):
    """n training clips and everything drawn for them (make_batch), on the device but t."""
    x0: torch.Tensor        # [B, C, T, H, W] the clips
    noise: torch.Tensor     # [B, C, T, H, W]
    t: torch.Tensor         # [B] flow times, on the CPU: the error banks file errors by them
    cond: torch.Tensor      # [B, C + 1, T, H, W] mask and condition (model.condition): motion
                            # frames, then the anchor (shot mode) or zeros (film mode)
    prompts: list           # B prompts, "" where dropped (p_uncond)
    ids: torch.Tensor       # [B, L + 1] their tokens, and the tokens' mask (model.tokenize)
    mask: torch.Tensor      # [B, L + 1]
    control: torch.Tensor   # [B, T, 2] control streams (NaN: none)


def make_batch(source, cfg: TrainConfig, n: int, rng, gen, text_len: int, device,
               pool: RolloutPool | None = None) -> Batch:
    """n training clips from source, with their noise, flow times, conditions (the anchor a
    frame of the clip or from before it), prompts and control streams; with a pool, the first
    --p-pool of them are the pool's: the model's own motion frames, the real clip that follows."""
    T, m = cfg.frames, cfg.motion_frames
    film = rng.random(n) < cfg.p_film  # [B] film mode: no anchor, so scene events may come
    video, prompts, control, anchor = source.clips(n, T, rng, cfg.anchor_gap, film)
    film = torch.from_numpy(film)
    anchor = anchor * (~film).float().view(-1, 1, 1, 1)  # [B, C, H, W], zeros in film mode
    motion = video[:, :, :m]                             # [B, C, m, H, W]
    if pool is not None:  # (its anchors are zeros in its own film-mode entries)
        j = round(cfg.p_pool * n)
        own_video, own_prompts, own_control, own_anchor, own_motion = pool.draw(j, rng)
        video, control, anchor, motion = (torch.cat([a, b[j:]]) for a, b in (
            (own_video, video), (own_control, control), (own_anchor, anchor),
            (own_motion, motion)))
        prompts = own_prompts + prompts[j:]
    x0, control, anchor = video.to(device), control.to(device), anchor.to(device)
    cond = condition(motion.to(device), anchor, T)                   # [B, C + 1, T, H, W]
    if cfg.p_vanish > 0:  # a lost shape, as rollouts make: the target still shows it
        lost = (torch.rand(n, generator=gen) < cfg.p_vanish).to(device)
        cond[lost, 1:, :m] += vanish(cond[lost, 1:, :m])  # (before any noise: flat colours)
    if cfg.cond_noise > 0:  # the handcrafted baseline: noisy motion frames, clean target
        sigma = cfg.cond_noise * torch.rand(n, generator=gen).view(-1, 1, 1, 1, 1)
        cond[:, 1:, :m] += sigma.to(device) * torch.randn(cond[:, 1:, :m].shape,
                                                          generator=gen).to(device)
    prompts = ["" if u < cfg.p_uncond else p for u, p in zip(rng.random(n), prompts)]
    ids, mask = (x.to(device) for x in tokenize(prompts, text_len))
    t = sample_t(n, gen, cfg.shift, cfg.t_mean if cfg.t_sampling == "logit-normal" else None,
                 cfg.t_std)
    noise = torch.randn(x0.shape, generator=gen).to(device)
    if cfg.cond_leak > 0:  # the more noise in x_t, the less the motion frames may be copied
        sigma = cfg.cond_leak * t.view(-1, 1, 1, 1, 1)
        cond[:, 1:, :m] += sigma.to(device) * torch.randn(cond[:, 1:, :m].shape,
                                                          generator=gen).to(device)
    return Batch(x0, noise, t, cond, prompts, ids, mask, control)


# -----------------------------------------------------------------------------
# A run: its processes, what it trains, one step, and what it writes

@dataclass
class Procs:
    """This process among the run's ranks: its device, and how it cuts its share of a batch."""
    rank: int
    ranks: int          # processes of the run (torchrun's WORLD_SIZE)
    device: str
    micro: int          # clips per forward pass
    accum: int          # forward passes per optimiser step
    autocast: object    # a context for the forward pass: bf16 autocast, or nothing

    @property
    def master(self) -> bool:
        return self.rank == 0


def setup_processes(cfg: TrainConfig) -> Procs:
    """Plain python is one rank; under torchrun each process is one (DDP, NCCL on CUDA)."""
    device, rank, ranks = pick_device(cfg.device), 0, int(os.environ.get("WORLD_SIZE", 1))
    if ranks > 1:
        dist.init_process_group("nccl" if device == "cuda" else "gloo")
        rank = dist.get_rank()
        if device == "cuda":
            device = f"cuda:{int(os.environ['LOCAL_RANK'])}"
            torch.cuda.set_device(device)
    micro = cfg.micro_batch or cfg.batch_size // ranks
    if cfg.batch_size % (ranks * micro):
        fail([f"--batch-size {cfg.batch_size} must divide by {ranks} rank(s) x --micro-batch "
              f"{micro}"])
    if "cuda" in device:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and "cuda" in device
                                       and torch.cuda.is_bf16_supported())  # Ampere and later
    autocast = torch.autocast(torch.device(device).type, torch.bfloat16) if bf16 else nullcontext()
    torch.manual_seed(cfg.seed)
    return Procs(rank, ranks, device, micro, cfg.batch_size // (ranks * micro), autocast)


@dataclass
class Run:
    """What a run trains on and saves: model, EMA, optimiser, error banks, rollout pool, step."""
    model: VideoDiT
    ema: VideoDiT
    optimizer: torch.optim.Optimizer
    source: object                # the training videos: data.ShapesSource or data.VideoFolder
    bank_vid: ErrorBank           # one-step errors at the data end, bucketed by flow time
    bank_noise: ErrorBank         # and at the noise end
    bank_roll: ErrorBank          # rollout errors of the motion frames, one bucket
    pool: RolloutPool | None = None  # --p-pool: live rollouts, each error in its own video
    step: int = 0


def model_config(cfg: TrainConfig, ckpt: Checkpoint | None, start: str) -> DiTConfig:
    """The network's shape: the flags' (from scratch) or the checkpoint's, grown by --depth."""
    if ckpt is None:
        return DiTConfig(frames=cfg.frames, resolution=cfg.resolution, patch_t=cfg.patch_t,
                         patch_s=cfg.patch_s, rope=cfg.rope, prediction=cfg.prediction,
                         long_skip=cfg.long_skip, out_conv=cfg.out_conv, **model_sizes(cfg))
    model_cfg = ckpt.model_cfg
    if (model_cfg.frames, model_cfg.resolution) != (cfg.frames, cfg.resolution):
        fail([f"{start} was trained with --frames {model_cfg.frames} --resolution "
              f"{model_cfg.resolution}; pass the same"])
    if cfg.init_from and not cfg.resume and cfg.depth:  # grow a base: --depth > its depth
        if cfg.depth < model_cfg.depth:
            fail([f"--depth {cfg.depth}: {start} has {model_cfg.depth} blocks; "
                  "--init-from can add blocks, not remove them"])
        model_cfg.depth = cfg.depth
    return model_cfg


def build(cfg: TrainConfig, device: str) -> Run:
    """The run from scratch, from --init-from (the base's EMA weights) or --resume (everything),
    and its training videos (the world's, the checkpoint's world when none is given)."""
    start = os.path.join(cfg.out, "ckpt.pt") if cfg.resume else cfg.init_from
    try:
        ckpt = load_checkpoint(start) if start else None
    except ValueError as err:
        fail([str(err)])
    model_cfg = model_config(cfg, ckpt, start)
    if not cfg.world:  # the world the checkpoint was trained on, else the default
        cfg.world = ckpt.sampling.world if ckpt else DEFAULT_WORLD
    try:  # a folder that is not there or holds no usable video (for the pool: long enough)
        source = ShapesSource(cfg.resolution, cfg.motion_frames, cfg.world) \
            if cfg.data == "shapes" else VideoFolder(cfg.data, cfg.frames, cfg.resolution)
        pool = RolloutPool(source, cfg.pool_size, cfg.pool_clips, cfg.frames, cfg.motion_frames,
                           cfg.p_film) if cfg.p_pool > 0 else None
    except ValueError as err:
        fail([str(err)])
    sampling = Sampling(cfg.motion_frames, cfg.shift, cfg.sample_steps, cfg.sample_eta,
                        cfg.guidance, cfg.world)  # how sample.py and eval.py will roll it out
    model = VideoDiT(model_cfg, sampling, cfg.grad_ckpt)
    if cfg.init_from and not cfg.resume:  # blocks the base lacks are appended, each the
        # identity (adaLN-Zero), so a grown model starts as the base
        missing, unexpected = model.load_state_dict(merged_state_dict(ckpt.ema), strict=False)
        assert not unexpected and all(k.startswith("blocks.") for k in missing), missing
    ema = VideoDiT(model_cfg, sampling)
    for net in (model, ema) if cfg.lora_rank > 0 else ():
        add_lora(net, cfg.lora_rank)
    ema.load_state_dict(model.state_dict())
    model.to(device), ema.to(device).requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                  betas=(0.9, 0.99), fused="cuda" in device)
    times = schedule(cfg.sample_steps, cfg.shift)[:-1]  # the buckets: the sampler's timesteps
    times = times[torch.linspace(0, len(times) - 1, cfg.buckets).round().long()]
    banks = [ErrorBank(bucket_times, capacity, cfg.replace, cfg.bank_device,
                       getattr(torch, cfg.bank_dtype)) for bucket_times, capacity in
             ((times, cfg.capacity), (times, cfg.capacity), ([0.0], cfg.buckets * cfg.capacity))]
    run = Run(model, ema, optimizer, source, *banks, pool)
    if cfg.resume:
        model.load_state_dict(ckpt.model)
        ema.load_state_dict(ckpt.ema)
        optimizer.load_state_dict(ckpt.optimizer)
        for bank, state in zip(banks, ckpt.banks or ()):
            if state is not None:
                bank.load_state_dict(state)
        if pool is not None and ckpt.pool is not None:
            pool.load_state_dict(ckpt.pool)
        run.step = ckpt.step
    return run


def batch_loss(net, batch, injected=None, autocast=nullcontext()):
    """The flow loss of net on a batch (make_batch) -> (loss, v_hat, v*): on the flow path
    x_t = (1 - t) x0 + t noise with target v* = noise - x0, or on inputs with errors injected
    (injected: x_t, v*, cond from errors.inject)."""
    x_t, v_target = interpolate(batch.x0, batch.noise, batch.t), velocity_target(batch.x0,
                                                                                 batch.noise)
    cond = batch.cond
    if injected is not None:
        x_t, v_target, cond = injected
    with autocast:
        v_hat = net(x_t, batch.t.to(x_t.device), cond, batch.ids, batch.mask, batch.control)
    return flow_loss(v_hat, v_target), v_hat, v_target  # the loss in fp32 under autocast too


def forward_backward(net, batch, run: Run, cfg: TrainConfig, gen, procs: Procs):
    """The flow loss of one micro-batch, its gradient accumulated; with --erft the inputs carry
    banked errors (paper Eq. 3, the target still the clean clip: Eq. 6), and the step's own
    one-step errors are returned for the banks, else None."""
    injected, clean = None, None
    if cfg.erft:
        img_banks = dict(onestep=[run.bank_vid], rollout=[run.bank_roll],
                         both=[run.bank_vid, run.bank_roll])[cfg.error_source]
        *injected, clean = inject(
            batch.x0, batch.noise, batch.cond, batch.t, run.bank_vid, run.bank_noise, gen,
            p_img=cfg.p_img, p_vid=cfg.p_vid, p_noise=cfg.p_noise, p_clean=cfg.p_clean,
            motion_frames=cfg.motion_frames, img_banks=img_banks, img_t_max=cfg.img_t_max)
    loss, v_hat, v_target = batch_loss(net, batch, injected, procs.autocast)
    (loss / procs.accum).backward()
    if not cfg.erft:
        return loss, None
    # paper Eq. 4, no extra pass; errors of clean samples are banked only now and then
    t = batch.t
    keep = ~clean | (torch.rand(len(t), generator=gen) < cfg.p_bank_clean)  # [B] on the CPU
    return loss, (*one_step_errors(v_hat.detach(), v_target, t), t, keep)


def bank_errors(run: Run, errors: list, cfg: TrainConfig, procs: Procs):
    """File this step's errors (of every micro-batch, in shard order; of every rank during the
    first --warmup-gather steps) into the two banks."""
    e_vid, e_noise, t, keep = (torch.cat(x) for x in zip(*errors))
    if procs.ranks > 1 and run.step < cfg.warmup_gather:
        device = e_vid.device
        e_vid, e_noise, t, keep = gather_from_ranks(e_vid, e_noise, t.to(device),
                                                    keep.to(device, torch.uint8))
        t, keep = t.cpu(), keep.cpu().bool()
    index = keep.nonzero().squeeze(1)  # [kept], on the CPU
    for bank, error in ((run.bank_vid, e_vid), (run.bank_noise, e_noise)):
        bank.add(error.index_select(0, index.to(error.device)), t[index])


@torch.no_grad()
def bank_rollout_errors(run: Run, batch, cfg: TrainConfig, procs: Procs):
    """--error-source rollout or both: the EMA model samples clips from the conditions (real
    motion frames) of a quarter of the batch (of this rank's first micro-batch), with
    --rollout-steps; the last m frames minus the real ones are the error a rollout would hand the
    next clip. They go into run.bank_roll. With --rollout-chain p, a share p of the rollouts
    start from motion frames that carry a banked rollout error, as clip k + 1 of a video starts
    from clip k's flawed frames: the error handed on is the old one as the model carries it,
    plus the new one, so the bank fills with the errors of clips 1, 2, 3, ..."""
    n, m = max(1, len(batch.x0) // 4), cfg.motion_frames
    x0, cond = batch.x0[:n], batch.cond[:n]
    seed = np.random.default_rng([cfg.seed, run.step, procs.rank, 2]).integers(2 ** 62)
    gen = torch.Generator().manual_seed(int(seed))  # a 4th word: no micro-batch's stream
    if cfg.rollout_chain > 0 and len(run.bank_roll):
        chained = torch.rand(n, generator=gen) < cfg.rollout_chain  # [n]
        e = conditioning_error([run.bank_roll], n, m, gen).to(cond.device, cond.dtype)
        cond = cond.clone()
        cond[:, 1:, :m] += chained.view(n, 1, 1, 1, 1).to(cond) * e  # the motion slots, not mask
    with procs.autocast:
        noise = torch.randn(x0.shape, generator=gen).to(x0.device)
        clip = generate_clip(run.ema, cond, batch.prompts[:n], batch.control[:n], noise, gen,
                             steps=cfg.rollout_steps, shift=cfg.shift, guidance=1.0,
                             eta=cfg.sample_eta)
    run.bank_roll.add((clip.float() - x0)[:, :, -m:], torch.zeros(n))  # [n, C, m, H, W]


@torch.no_grad()
def advance_pool(run: Run, cfg: TrainConfig, procs: Procs):
    """--p-pool: the EMA model moves --pool-advance entries of the rollout pool on by one clip
    (--rollout-steps sampler steps, no guidance), conditioned as sample.rollout conditions clip
    k: on the entry's own motion frames and its anchor. A new pool is filled first, entry i
    rolled out for 1 + i mod --pool-clips clips, so that its entries' ages stay spread."""
    pool, T = run.pool, cfg.frames
    rng = np.random.default_rng([cfg.seed, run.step, procs.rank, 3])  # no micro-batch's stream
    gen = torch.Generator().manual_seed(int(rng.integers(2 ** 62)))
    if pool.started:
        rounds = [pool.due(cfg.pool_advance, rng)]
    else:
        for i in range(pool.size):
            pool.restart(i, rng)
        rounds = [[i for i in range(pool.size) if i % cfg.pool_clips >= r]
                  for r in range(min(pool.size, cfg.pool_clips))]
    for index in rounds:
        motion = pool.motion[index]                                          # [n, C, m, H, W]
        _, prompts, control, anchor = zip(*(pool.clip(i) for i in index))
        cond = condition(motion, torch.stack(anchor), T).to(procs.device)  # [n, C + 1, T, H, W]
        n, C, _, H, W = motion.shape
        noise = torch.randn(n, C, T, H, W, generator=gen).to(procs.device)
        with procs.autocast:
            clips = generate_clip(run.ema, cond, list(prompts), torch.stack(control).to(
                procs.device), noise, gen, steps=cfg.rollout_steps, shift=cfg.shift,
                guidance=1.0, eta=cfg.sample_eta)
        pool.advance(index, clips)


def train_step(run: Run, net, cfg: TrainConfig, procs: Procs) -> torch.Tensor:
    """One optimiser step over this rank's micro-batches; returns the mean flow loss, a tensor on
    the device (reading its value would wait for the GPU at every step). Every random draw comes
    from generators seeded by (seed, step, shard), so resuming is bitwise."""
    lr = get_lr(run.step, cfg)
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    run.optimizer.zero_grad(set_to_none=True)
    if run.pool is not None and (not run.pool.started or run.step % cfg.rollout_every == 0):
        advance_pool(run, cfg, procs)
    loss, errors, first = 0.0, [], None  # the loss: a sum of tensors
    for i in range(procs.accum):  # micro-batch i of this rank: shard rank * accum + i
        rng = np.random.default_rng([cfg.seed, run.step, procs.rank * procs.accum + i])
        gen = torch.Generator().manual_seed(int(rng.integers(2 ** 62)))
        batch = make_batch(run.source, cfg, procs.micro, rng, gen, run.model.cfg.text_len,
                           procs.device, run.pool)
        sync = i == procs.accum - 1 or procs.ranks == 1  # DDP averages over ranks on the last
        with nullcontext() if sync else net.no_sync():
            micro_loss, micro_errors = forward_backward(net, batch, run, cfg, gen, procs)
        loss = loss + micro_loss.detach() / procs.accum
        errors.append(micro_errors)
        if i == 0 and cfg.erft and cfg.error_source != "onestep":
            first = batch  # the batch a rollout starts from
    params = [p for p in run.model.parameters() if p.requires_grad]
    torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
    run.optimizer.step()
    update_ema(run.ema, run.model, min(cfg.ema, (1 + run.step) / (10 + run.step)))
    if cfg.erft:  # after the update, as the official code does
        bank_errors(run, errors, cfg, procs)
    if cfg.erft and cfg.error_source != "onestep" and run.step % cfg.rollout_every == 0:
        bank_rollout_errors(run, first, cfg, procs)
    run.step += 1
    return loss


def checked(losses: list, run: Run, cfg: TrainConfig, procs: Procs) -> list:
    """The loss of each step since the last log, averaged over ranks; a non-finite one stops
    every rank before anything is saved, so the last checkpoint stays the last good one."""
    losses = torch.stack(losses)  # [steps]
    if procs.ranks > 1:
        dist.all_reduce(losses)
        losses = losses / procs.ranks
    values = losses.tolist()
    bad = [i for i, v in enumerate(values) if not math.isfinite(v)]
    if bad:
        raise SystemExit(f"error: loss is {values[bad[0]]} at step "
                         f"{run.step - len(values) + bad[0]}; the last good checkpoint is kept "
                         f"in {os.path.join(cfg.out, 'ckpt.pt')}")
    return values


def log_line(run: Run, cfg: TrainConfig, losses: list, seconds: float, log):
    """One line of the training log, printed and appended to log.jsonl."""
    record = dict(step=run.step, loss=float(np.mean(losses)), lr=get_lr(run.step - 1, cfg),
                  sec_per_step=seconds / len(losses))
    if cfg.erft:
        norms = [n for n in run.bank_vid.stats()["mean_norm"] if n > 0]
        record.update(bank=len(run.bank_vid), bank_capacity=cfg.buckets * cfg.capacity,
                      error_norm=float(np.mean(norms)) if norms else 0.0)
    if cfg.erft and cfg.error_source != "onestep":  # does --rollout-chain grow the errors?
        record.update(rollout_error_norm=(run.bank_roll.stats()["mean_norm"] or [0.0])[0])
    if run.pool is not None:  # how far the pool's own motion frames are from the real ones
        record.update(pool_error_rms=float((run.pool.motion - run.pool.real).pow(2).mean().sqrt()),
                      pool_clip=float(run.pool.k.float().mean()))
    print(" ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                   for k, v in record.items()), flush=True)
    log.write(json.dumps(record) + "\n")
    log.flush()


def save(run: Run, cfg: TrainConfig, path: str, export: bool = False):
    """The checkpoint (weights, EMA, optimiser, step, configs, banks, pool); with export, the EMA
    alone, LoRA folded in, in half precision: small, for sharing."""
    ckpt = Checkpoint(run.model.cfg, run.ema.sampling, run.ema.state_dict(), run.step,
                      dataclasses.asdict(cfg))
    if export:
        ckpt.ema = {k: v.half() if v.is_floating_point() else v
                    for k, v in merged_state_dict(ckpt.ema).items()}
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    else:
        ckpt.model, ckpt.optimizer = run.model.state_dict(), run.optimizer.state_dict()
        banks = run.bank_vid, run.bank_noise, run.bank_roll
        ckpt.banks = tuple(bank.state_dict() for bank in banks) if cfg.erft else None
        ckpt.pool = run.pool.state_dict() if run.pool is not None else None
    save_checkpoint(path, ckpt)


def main(cfg: TrainConfig):
    check(cfg)
    procs = setup_processes(cfg)
    run = build(cfg, procs.device)
    net = torch.compile(run.model) if cfg.compile else run.model
    net = DistributedDataParallel(net) if procs.ranks > 1 else net
    if procs.master:
        os.makedirs(os.path.join(cfg.out, "samples"), exist_ok=True)
        trained = sum(p.numel() for p in run.model.parameters() if p.requires_grad)
        print(f"model: preset {cfg.preset}, {run.model.num_params() / 1e6:.2f}M parameters "
              f"({trained / 1e6:.2f}M trained), {procs.device}, {procs.ranks} rank(s)")
        if run.pool is not None and run.pool.skipped:
            print(f"rollout pool: {run.pool.skipped} of {len(run.source.videos)} videos are "
                  f"shorter than {run.pool.length} frames ({cfg.pool_clips} clips), skipped")
    log = open(os.path.join(cfg.out, "log.jsonl"), "a") if procs.master else None
    losses, t0 = [], time.time()
    while run.step < cfg.steps:
        losses.append(train_step(run, net, cfg, procs))
        last = run.step == cfg.steps
        if run.step % cfg.log_every == 0 or run.step % cfg.ckpt_every == 0 or last:
            values = checked(losses, run, cfg, procs)  # on every rank, together
        if run.step % cfg.log_every == 0 or last:
            if procs.master:
                log_line(run, cfg, values, time.time() - t0, log)
            losses, t0 = [], time.time()
        if not procs.master:
            continue
        if run.step % cfg.sample_every == 0 or last:
            samples = os.path.join(cfg.out, "samples")
            write_samples(run.ema, os.path.join(samples, f"step_{run.step:06d}.gif"))
            if cfg.erft and len(run.bank_vid):  # one banked error per bucket, noisy left
                error_picture(os.path.join(samples, "bank.png"),
                              run.bank_vid.first_frames(cfg.buckets))
        if run.step % cfg.ckpt_every == 0 or last:
            save(run, cfg, os.path.join(cfg.out, "ckpt.pt"))
            if cfg.export:  # the small copy too, so a long run can be shared before it ends
                save(run, cfg, cfg.export, export=True)
    if procs.ranks > 1:  # leave together, and free what still holds the group while python is
        dist.barrier()   # whole: gloo threads met at interpreter exit can abort a finished rank
        dist.destroy_process_group()
        gc.collect()
    return run.model, run.ema, run.bank_vid, run.bank_noise, run.bank_roll, run.pool


if __name__ == "__main__":
    main(parse_args())
