"""Shared helpers: a training configuration small enough to run in seconds on a CPU, and a tiny
trained checkpoint."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import train  # noqa: E402
from train import TrainConfig  # noqa: E402


ENV = dict(os.environ, OMP_NUM_THREADS="1")  # child processes: one thread each


def run(cmd: list[str]):
    """Run a command from the repository root; a failure shows its stderr."""
    done = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{' '.join(cmd)}\nexit {done.returncode}\n{done.stderr[-3000:]}"


def tiny_config(out, **overrides) -> TrainConfig:
    settings = dict(frames=4, resolution=16, motion_frames=2, steps=4, batch_size=2,
                    warmup=2, log_every=1, sample_every=1000, ckpt_every=1000, sample_steps=4,
                    buckets=4, capacity=3, out=str(out), device="cpu")
    settings.update(overrides)
    return TrainConfig(**settings)


@pytest.fixture(scope="session")
def base_ckpt(tmp_path_factory):
    out = tmp_path_factory.mktemp("base")
    train.main(tiny_config(out, steps=3, sample_every=3))
    assert os.path.exists(out / "samples" / "step_000003.gif")
    return str(out / "ckpt.pt")
