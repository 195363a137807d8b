"""Every tensor follows the model's device, checked with no GPU: on PyTorch's meta device
(shapes, no values) an operation that meets a CPU tensor raises, as it does on CUDA. What needs
values (a loss printed, a video written) stays out of these tests. (FakeTensorMode's fake CUDA
tensors were tried too: on a CPU-only build slicing one asks for the CUDA runtime.)
Run: python -m pytest tests/test_device.py"""
import math
from contextlib import nullcontext

import imageio.v3 as iio
import numpy as np
import pytest
import torch

import sample
import train
from data import ShapesSource, ShapesWorld
from flow import flow_loss
from model import DiTConfig, VideoDiT, add_lora, condition, tokenize
from conftest import tiny_config

META = torch.device("meta")
CFG = dict(frames=4, resolution=16, width=32, depth=2, heads=2, text_len=8, text_width=32,
           text_depth=1)


def inputs(device, control=True):
    """A batch of model inputs made on the CPU, as the scripts make them, then moved."""
    x = torch.randn(2, 3, 4, 16, 16)
    cond = condition(x[:, :, :2], x[:, :, 0], 4)
    ids, mask = tokenize(["a red circle on a black background", ""], 8)
    stream = torch.tensor([[[0.1, -0.2]] * 4, [[math.nan] * 2] * 4]) if control else None
    move = lambda a: None if a is None else a.to(device)
    return [move(a) for a in (x, torch.rand(2), cond, ids, mask, stream)]


@pytest.mark.parametrize("lora, grad_ckpt, control", [(False, False, True), (True, True, False)])
def test_forward_and_backward_stay_on_the_models_device(lora, grad_ckpt, control):
    model = VideoDiT(DiTConfig(**CFG), grad_ckpt=grad_ckpt)
    if lora:
        add_lora(model, 2)
    model.to(META)
    v_hat = model(*inputs(META, control))
    assert v_hat.device == META and v_hat.shape == (2, 3, 4, 16, 16)
    flow_loss(v_hat, torch.zeros_like(v_hat)).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None and g.device == META for g in grads)


CFG_TRAIN = dict(width=32, depth=2, heads=2, text_len=8, text_width=32, text_depth=1,
                 p_film=0.5)


def meta_run(tmp_path, bank_device, **flags):
    """A run built on the meta device, ERFT on, its banks (capacity 2, 2 buckets) already full."""
    cfg = tiny_config(tmp_path, erft=True, p_clean=0.0, p_noise=1.0, cond_noise=0.1, buckets=2,
                      capacity=2, replace="fifo", bank_device=bank_device, **CFG_TRAIN, **flags)
    run = train.build(cfg, "meta")
    for bank in (run.bank_vid, run.bank_noise):
        bank.add(torch.randn(4, 3, 4, 16, 16).to(bank_device), torch.tensor([0.9, 0.9, 0.1, 0.1]))
    procs = train.Procs(rank=0, ranks=1, device="meta", micro=2, accum=1,
                        autocast=nullcontext())
    return cfg, run, procs, ShapesSource(16, 2)


def test_an_erft_training_step_stays_on_the_device_banks_included(tmp_path):
    cfg, run, procs, source = meta_run(tmp_path, "meta", error_source="both", rollout_every=1,
                                       rollout_steps=2, rollout_chain=1.0)
    before = run.bank_vid.added.clone()
    for step in range(2):  # the second injects and chains rollout errors banked by the first
        loss = train.train_step(run, run.model, cfg, procs)
    assert loss.device == META and run.step == 2
    assert (run.bank_vid.added.sum() - before.sum()) == 4  # the steps' two errors each, filed
    assert len(run.bank_roll) == 2 and run.bank_roll.errors.device == META  # a rollout a step
    assert run.bank_vid.errors.device == META
    assert all(p.device == META for p in run.ema.parameters())


def test_errors_banked_on_the_cpu_are_injected_on_the_device(tmp_path):
    cfg, run, procs, source = meta_run(tmp_path, "cpu")
    rng = np.random.default_rng(0)
    gen = torch.Generator().manual_seed(0)
    batch = train.make_batch(source, cfg, 2, rng, gen, 8, "meta")
    loss, (e_vid, e_noise, t, keep) = train.forward_backward(run.model, batch, run, cfg, gen,
                                                             procs)
    assert loss.device == META and e_vid.device == META and e_noise.device == META
    assert t.device.type == "cpu" and keep.device.type == "cpu"  # values the banks need


def test_a_pool_step_hands_the_model_its_inputs_on_the_device(tmp_path, monkeypatch):
    """The pool's rollouts see only device tensors; its frames come back to the CPU (here from a
    stand-in, since a meta tensor has no values to copy) and go into batches on the device."""
    cfg = tiny_config(tmp_path, p_pool=0.5, pool_size=2, pool_clips=2, rollout_steps=2,
                      **CFG_TRAIN)
    run = train.build(cfg, "meta")

    def stand_in(model, cond, prompts, control, noise, generator=None, **given):
        assert {cond.device, control.device, noise.device} == {META}
        assert all(p.device == META for p in model.parameters())
        return torch.zeros(noise.shape)  # [n, C, T, H, W] on the CPU

    monkeypatch.setattr(train, "generate_clip", stand_in)
    procs = train.Procs(rank=0, ranks=1, device="meta", micro=2, accum=1,
                        autocast=nullcontext())
    loss = train.train_step(run, run.model, cfg, procs)  # the pool filled, then a batch from it
    assert loss.device == META and run.pool.k.tolist() == [1, 2]
    assert run.pool.motion.device.type == "cpu"


@pytest.mark.parametrize("flags", [["--mode", "shot", "--control", "world", "--guidance", "2"],
                                   ["--mode", "film", "--control", "world", "--guidance", "2"],
                                   ["--mode", "shot", "--image", "IMAGE", "--prompts", "STORY"]])
def test_a_two_clip_rollout_stays_on_the_device(tmp_path, flags):
    image, story = tmp_path / "start.png", tmp_path / "story.txt"
    iio.imwrite(image, ShapesWorld(1, 16).frames(1)[0])
    story.write_text("a red circle on a black background\na blue square on a gray background\n")
    flags = [{"IMAGE": str(image), "STORY": str(story)}.get(f, f) for f in flags]
    args = sample.parse_args(["--chunks", "2", "--sample-steps", "2", *flags])
    model = VideoDiT(DiTConfig(**CFG)).to(META).eval()
    first, anchor, prompts, controls = sample.start(args, ShapesWorld(0, 16), 4, 2, META)
    assert first.device == META and (anchor is None) == (args.mode == "film")
    clips = list(sample.rollout(model, first, anchor, prompts, controls, 2,
                                torch.Generator().manual_seed(0), steps=2, eta=1.0,
                                guidance=args.guidance))
    assert [c.shape[2] for c in clips] == [4, 2] and all(c.device == META for c in clips)


def test_bf16_autocast_trains_with_an_fp32_loss_and_banks_in_their_dtype(tmp_path, base_ckpt):
    """The CUDA dtype path (--precision auto on CUDA is bf16), run under CPU autocast."""
    seen = []  # the dtype of the DiT's last layer (x-prediction's v is then formed in fp32)
    cfg = tiny_config(tmp_path, precision="bf16", erft=True, init_from=base_ckpt, steps=2,
                      p_clean=0.0, bank_dtype="bfloat16")
    procs = train.setup_processes(cfg)
    assert isinstance(procs.autocast, torch.autocast)
    run = train.build(cfg, "cpu")
    handle = run.model.final_layer.register_forward_hook(
        lambda module, args, out: seen.append(out.dtype))
    losses = [train.train_step(run, run.model, cfg, procs) for _ in range(2)]
    handle.remove()
    assert seen == [torch.bfloat16] * 2  # the DiT ran in bf16
    assert all(loss.dtype == torch.float32 and torch.isfinite(loss) for loss in losses)
    assert run.bank_vid.errors.dtype == torch.bfloat16 and len(run.bank_vid) > 0
    assert all(p.dtype == torch.float32 for p in run.model.parameters())  # fp32 master weights


def test_the_gpu_table_counts_a_step_on_the_meta_device():
    """FLOPs of a training step (counted on shapes alone) grow with the preset; the matmuls of
    the blocks' linear layers alone are 6 x their weights x tokens (forward 2, backward 4)."""
    import bench
    rows = bench.gpu_table(frames=4, resolution=16, motion=2, batch=2, presets=("T", "S", "B"))
    flops, memory = [r[2] for r in rows], [r[3] for r in rows]
    assert [r[0] for r in rows] == ["T", "S", "B"]
    assert flops == sorted(flops) and memory == sorted(memory)
    with torch.device("meta"):
        model = VideoDiT(DiTConfig(frames=4, resolution=16, **bench.PRESETS["B"]))
    linear = sum(p.numel() for n, p in model.blocks.named_parameters()
                 if n.endswith("weight") and "adaLN" not in n)
    tokens = (4 // 2) * (16 // 4) ** 2
    assert 2 * 6 * linear * tokens <= flops[-1] <= 2 * 6 * model.num_params() * tokens * 1.5
