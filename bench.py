"""
bench.py: speed and memory of svi, as ratios measured side by side in one run.

    python bench.py            # about 6 minutes on a 2-core CPU
    python bench.py --quick    # a smoke run (seconds), figures not meaningful
    python bench.py --gpu      # the computed FLOPs and memory of the README's GPU recipe
    python bench.py --levers   # the base levers' step time against today's recipe's

It prints:
1. training clips/s and achieved FLOP/s at presets T and S (FLOPs of a real training step counted
   by torch.utils.flop_counter), against the fp32 matmul FLOP/s of this machine in the same run:
   the CPU analogue of MFU;
2. ERFT step / plain fine-tuning step, and an ERFT step with rollout errors (their sampling
   amortised) / plain: all fine-tune the same base, alternated, timed over the last half of
   their steps, when the banks are full and every new error goes through the L2 replacement
   (the costliest case);
3. sample.py seconds per clip at clip 200 / at clip 5;
4. peak resident memory of a 200-clip rollout / a 10-clip rollout (sample.py, own processes);
5. the error banks' memory in bytes against the bound their configuration sets;
6. with --levers, alone: each lever of the base recipe (docs/test-bed.md) from scratch, its step
   time against today's recipe's, and so the steps it gets at equal CPU time.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

import train
from data import ShapesSource, ShapesWorld
from flow import flow_loss
from errors import ErrorBank
from model import (PRESETS, DiTConfig, VideoDiT, condition, from_checkpoint, load_checkpoint,
                   tokenize)
from sample import device_problems, fail, pick_device, rollout, world_start


def gpu_table(frames=16, resolution=64, motion=4, batch=64, presets=tuple(PRESETS)) -> list:
    """Per preset, computed and not measured: (name, parameters, the FLOPs of one training step
    of `batch` clips, a memory estimate in bytes). FLOPs of the forward and backward pass are
    counted by torch.utils.flop_counter on the meta device, which holds shapes only. Memory: 20
    bytes per parameter (fp32 weights, gradients, AdamW's two moments and the EMA) plus bf16
    activations of 34 bytes per token, channel and block (Korthikanti et al. 2022, without the
    attention matrix, which scaled_dot_product_attention never stores)."""
    rows = []
    for preset in presets:
        cfg = DiTConfig(frames=frames, resolution=resolution, **PRESETS[preset])
        with torch.device("meta"):
            model = VideoDiT(cfg)
            x = torch.zeros(1, 3, frames, resolution, resolution)
            ids, mask = tokenize([""], cfg.text_len)
            with FlopCounterMode(display=False) as counter:
                v_hat = model(x, torch.zeros(1), condition(x[:, :, :motion], x[:, :, 0], frames),
                              ids, mask)
                flow_loss(v_hat, x).backward()
        tokens = (frames // cfg.patch_t) * (resolution // cfg.patch_s) ** 2
        memory = 20 * model.num_params() + 34 * tokens * cfg.width * cfg.depth * batch
        rows.append((preset, model.num_params(), counter.get_total_flops() * batch, memory))
    return rows


def wait(device):
    """Block until the device has done its queued work (CUDA runs asynchronously)."""
    if "cuda" in str(device):
        torch.cuda.synchronize(device)


def matmul_flops(n=1024, repeats=20, device="cpu") -> float:
    """fp32 FLOP/s of a square matmul, the best of a few timings."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    best = float("inf")
    for _ in range(repeats):
        wait(device)
        start = time.perf_counter()
        a @ b
        wait(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n ** 3 / best


def training_speed(preset: str, batch: int, steps: int, device="cpu"):
    """Clips/s and FLOP/s of full training steps (data, forward, backward, AdamW), in fp32."""
    cfg = train.TrainConfig(preset=preset, batch_size=batch)
    model = VideoDiT(DiTConfig(frames=cfg.frames, resolution=cfg.resolution, **PRESETS[preset]))
    model.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    source = ShapesSource(cfg.resolution, cfg.motion_frames)

    def step(i):
        rng = np.random.default_rng([0, i])
        gen = torch.Generator().manual_seed(i)
        clips = train.make_batch(source, cfg, batch, rng, gen, model.cfg.text_len, device)
        loss = train.batch_loss(model, clips)[0]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    with FlopCounterMode(display=False) as counter:
        step(0)
    flops = counter.get_total_flops()
    step(1)  # warm-up
    wait(device)
    start = time.perf_counter()
    for i in range(steps):
        step(2 + i)
    wait(device)
    seconds = (time.perf_counter() - start) / steps
    return batch / seconds, flops / seconds, model.num_params()


def seconds_per_step(out, **flags):
    cfg = train.TrainConfig(out=out, sample_every=10 ** 6, ckpt_every=10 ** 6, **flags)
    train.main(cfg)
    records = [json.loads(line) for line in open(os.path.join(out, "log.jsonl"))]
    return records[-1]["sec_per_step"]


def clip_times(ckpt: str, chunks: int, device="cpu"):
    """Seconds of each clip of one rollout (shot mode, batch 1, the checkpoint's sampler)."""
    model = from_checkpoint(ckpt, device=device)
    world = ShapesWorld(0, model.cfg.resolution, model.sampling.world)
    first, anchor = world_start([world], model.sampling.motion_frames, device)
    clips = rollout(model, first, anchor, lambda k: [world.prompt()], lambda k: None,
                    chunks, torch.Generator().manual_seed(0))
    times, start = [], time.perf_counter()
    for _ in clips:
        wait(device)
        times.append(time.perf_counter() - start)
        start = time.perf_counter()
    return np.array(times)


def peak_memory(ckpt: str, chunks: int, out: str, device="cpu") -> int:
    """Peak resident (host) memory in bytes of `python sample.py --chunks N`, in its own
    process."""
    # VmHWM, the high-water mark of this process's own memory (ru_maxrss would carry over the
    # parent's resident pages at fork)
    code = ("import sys, sample; sample.main(sample.parse_args(sys.argv[1:])); "
            "print([l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')][0])")
    result = subprocess.run([sys.executable, "-c", code, "--ckpt", ckpt, "--chunks", str(chunks),
                             "--out", out, "--device", device], capture_output=True, text=True,
                            check=True,
                            cwd=os.path.dirname(os.path.abspath(__file__)))
    return int(result.stdout.strip().splitlines()[-1]) * 1024  # in KiB


def throughput(q, device, say):
    """1. training clips/s and FLOP/s against this machine's matmul speed."""
    peak = matmul_flops(256 if q else 1024, 3 if q else 20, device)
    say(f"fp32 matmul: {peak / 1e9:.1f} GFLOP/s")
    for preset, batch, steps in (("T", 16, 2 if q else 20), ("S", 8, 1 if q else 4)):
        clips, flops, params = training_speed(preset, batch, steps, device)
        say(f"training preset {preset} ({params / 1e6:.1f}M parameters, batch {batch}): "
            f"{clips:.1f} clips/s, {flops / 1e9:.1f} GFLOP/s = {flops / peak:.0%} of matmul")


def costs(q, device, say, tmp):
    """2. the cost of error recycling, 3.-4. time and memory of long rollouts, 5. the banks."""
    base = os.path.join(tmp, "base")
    train.main(train.TrainConfig(out=base, steps=1, sample_every=10 ** 6, device=device))
    init = os.path.join(base, "ckpt.pt")

    # 2. the cost of error recycling
    steps = 8 if q else 80
    plain, erft, rollout, pool = [], [], [], []
    for r in range(1 if q else 2):
        common = dict(init_from=init, steps=steps, log_every=steps // 2, device=device)
        plain.append(seconds_per_step(os.path.join(tmp, f"plain{r}"), **common))
        erft.append(seconds_per_step(os.path.join(tmp, f"erft{r}"), erft=True, **common))
        rollout.append(seconds_per_step(os.path.join(tmp, f"rollout{r}"), erft=True,
                                        error_source="rollout", **common))
        pool.append(seconds_per_step(os.path.join(tmp, f"pool{r}"), p_pool=0.25, **common))
    plain, erft, rollout, pool = (np.median(x) for x in (plain, erft, rollout, pool))
    every = train.TrainConfig.rollout_every
    say(f"fine-tuning step: plain {plain:.3f} s, ERFT {erft:.3f} s, ERFT / plain = "
        f"{erft / plain:.3f}; with rollout errors (--error-source rollout, clips sampled every "
        f"{every} steps) {rollout:.3f} s, / plain = {rollout / plain:.3f}; with the rollout pool "
        f"(--p-pool 0.25, {train.TrainConfig.pool_advance} entries moved on every {every} steps, "
        f"the fill excluded) {pool:.3f} s, / plain = {pool / plain:.3f} (goal: at most 1.5)")

    # 3. and 4. long rollouts: time per clip and memory stay flat
    long, short = (12, 3) if q else (200, 10)
    times = clip_times(init, long, device)
    late, early = np.median(times[-5:]), np.median(times[2:7] if not q else times[:3])
    say(f"sampling: {early:.3f} s per clip at clip 5, {late:.3f} s at clip {long}, "
        f"ratio {late / early:.3f}")
    mem_long = peak_memory(init, long, os.path.join(tmp, "long.mp4"), device)
    mem_short = peak_memory(init, short, os.path.join(tmp, "short.mp4"), device)
    say(f"peak memory: {mem_short / 2 ** 20:.0f} MiB for {short} clips, "
        f"{mem_long / 2 ** 20:.0f} MiB for {long}, ratio {mem_long / mem_short:.3f}")

    # 5. the banks against their bound
    ckpt = load_checkpoint(os.path.join(tmp, "erft0", "ckpt.pt"))
    banks = [ErrorBank.from_state_dict(state) for state in ckpt.banks[:2]]  # vid, noise
    cfg = train.TrainConfig()  # the run's: sizes and bank dtype as the defaults
    used = sum(bank.errors.numel() * bank.errors.element_size() for bank in banks)
    per_error = 3 * cfg.frames * cfg.resolution ** 2
    bound = 2 * cfg.buckets * cfg.capacity * per_error * \
        torch.empty(0, dtype=getattr(torch, cfg.bank_dtype)).element_size()
    filled = sum(len(bank) for bank in banks)
    say(f"error banks: {used} bytes allocated at the first error ({filled} errors stored) "
        f"against a bound of "
        f"2 banks x {cfg.buckets} buckets x {cfg.capacity} x {per_error} values x "
        f"{cfg.bank_dtype} = {bound} bytes ({used / bound:.2f} of it)")


LEVERS = {  # the base recipe's levers (docs/test-bed.md), as TrainConfig fields
    "x-prediction (--prediction x)": dict(prediction="x"),
    "logit-normal times (--t-sampling logit-normal)": dict(t_sampling="logit-normal"),
    "noise on the motion frames (--cond-leak 0.5)": dict(cond_leak=0.5),
    "U-ViT head (--long-skip --out-conv)": dict(long_skip=True, out_conv=True),
    "temporal patch 1 (--patch-t 1)": dict(patch_t=1),
    "width 192 (--width 192 --heads 6)": dict(width=192, heads=6),
    "spatial patch 2 (--patch-s 2)": dict(patch_s=2),
}


def lever_costs(q, device, say, tmp, budget=1500):
    """6. (--levers) each lever's training step from scratch / today's recipe's, alternated,
    and the steps it gets in the time of `budget` steps of today's recipe."""
    steps = 4 if q else 20
    common = dict(world="simple", steps=steps, log_every=steps // 2, device=device)
    for i, (name, flags) in enumerate(LEVERS.items()):
        plain = seconds_per_step(os.path.join(tmp, f"plain{i}"), **common)
        lever = seconds_per_step(os.path.join(tmp, f"lever{i}"), **common, **flags)
        say(f"{name}: {lever:.3f} s a step, / today's recipe ({plain:.3f} s) = "
            f"{lever / plain:.2f}; {budget * plain / lever:.0f} steps in the time of {budget}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny settings, for a smoke test")
    p.add_argument("--levers", action="store_true",
                   help="only the base levers' step time against today's recipe's")
    p.add_argument("--gpu", action="store_true",
                   help="only the computed table of the README's GPU recipe (seconds)")
    p.add_argument("--device", default="auto", help="auto (CUDA when there is one), cpu, cuda")
    args = p.parse_args()
    fail(device_problems(args.device))
    device = pick_device(args.device)
    if args.gpu:
        print("16-frame 64x64 clips, 4 motion frames, batch 64 (computed, not measured)\n"
              "| preset | parameters | TFLOP per step | memory, GB |\n|---|---|---|---|")
        for name, params, flops, memory in gpu_table():
            print(f"| {name} | {params / 1e6:.1f}M | {flops / 1e12:.1f} | {memory / 1e9:.1f} |")
        return
    q = args.quick
    torch.manual_seed(0)
    lines = []
    say = lambda text: (print(text, flush=True), lines.append(text))
    with tempfile.TemporaryDirectory() as tmp:
        if args.levers:
            lever_costs(q, device, say, tmp)
            return lines
        throughput(q, device, say)
        costs(q, device, say, tmp)
    return lines


if __name__ == "__main__":
    main()
