"""Nothing lost on a crash, bad input rejected clearly, checkpoints safe to load.
Run: python -m pytest tests/test_reliability.py"""
import pickle
import random
import re
import signal
import subprocess
import sys
import time

import imageio.v3 as iio
import pytest
import torch

import sample
import train
from conftest import ENV, ROOT, run, tiny_config

TINY = ["--frames", "4", "--resolution", "16", "--batch-size", "2", "--warmup", "2",
        "--sample-every", "1000", "--sample-steps", "2", "--ckpt-every", "1", "--log-every", "1",
        "--device", "cpu", "--width", "64", "--heads", "2", "--text-width", "64"]


def train_cmd(out, steps, *extra):
    return [sys.executable, "train.py", *TINY, "--steps", str(steps), "--out", str(out), *extra]


def test_sigkill_at_random_moments_then_resume_is_bitwise_identical(tmp_path):
    steps = 60
    run(train_cmd(tmp_path / "straight", steps))
    straight = torch.load(tmp_path / "straight" / "ckpt.pt", weights_only=True)
    rng, out, kills = random.Random(0), tmp_path / "killed", 0
    while True:  # killed up to 3 times at random moments, then left to finish
        resume = ["--resume"] if (out / "ckpt.pt").exists() else []
        proc = subprocess.Popen(train_cmd(out, steps, *resume), cwd=ROOT, env=ENV,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            proc.wait(timeout=rng.uniform(2.0, 5.0) if kills < 3 else 300)
            break  # finished
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
    assert proc.returncode == 0 and kills >= 1
    resumed = torch.load(out / "ckpt.pt", weights_only=True)
    assert resumed["step"] == steps
    for key in ("model", "ema"):
        for name, p in straight[key].items():
            assert torch.equal(p, resumed[key][name]), (key, name)


class Exploit:
    def __reduce__(self):
        return (exec, ("import pathlib; pathlib.Path('PWNED').write_text('x')",))


@pytest.mark.parametrize("save", ["torch", "pickle"])
@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # torch's note before refusing
def test_checkpoint_that_would_run_code_is_refused_everywhere(tmp_path, monkeypatch, capsys,
                                                              save):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pt"
    state = {"model_cfg": {}, "ema": Exploit()}
    if save == "torch":
        torch.save(state, path)
    else:
        path.write_bytes(pickle.dumps(state))
    for entry in (lambda: train.main(tiny_config(tmp_path / "out", init_from=str(path))),
                  lambda: sample.main(sample.parse_args(["--ckpt", str(path)]))):
        with pytest.raises(SystemExit) as exit_info:
            entry()
        assert exit_info.value.code == 2 and "refused" in capsys.readouterr().err
    assert not (tmp_path / "PWNED").exists()


def test_non_finite_loss_stops_naming_the_step_and_keeps_the_checkpoint(tmp_path, monkeypatch):
    real_loss, calls = train.flow_loss, []

    def loss_turning_nan(v_hat, v_target):
        calls.append(1)
        loss = real_loss(v_hat, v_target)
        return loss * float("nan") if len(calls) == 3 else loss

    monkeypatch.setattr(train, "flow_loss", loss_turning_nan)
    with pytest.raises(SystemExit, match="loss is nan at step 2"):
        train.main(tiny_config(tmp_path, steps=5, ckpt_every=1))
    ckpt = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert ckpt["step"] == 2 and all(torch.isfinite(p).all() for p in ckpt["model"].values())


def test_sigint_during_sampling_leaves_a_playable_video_of_whole_clips(tmp_path, base_ckpt):
    out = tmp_path / "long.mp4"
    proc = subprocess.Popen([sys.executable, "sample.py", "--ckpt", base_ckpt, "--chunks",
                             "100000", "--sample-steps", "2", "--out", str(out)], cwd=ROOT,
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        deadline = time.time() + 120
        while not (out.exists() and out.stat().st_size > 2000) and time.time() < deadline:
            time.sleep(0.2)
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        stdout, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()  # nothing left running if the test fails
    assert proc.returncode == 0 and "interrupted" in stdout, stdout
    frames = int(re.search(r"(\d+) frames", stdout).group(1))
    assert frames > 8 and (frames - 2) % 2 == 0   # N (T - m) + m with T = 4, m = 2
    assert len(iio.imread(out, index=None)) == frames


@pytest.mark.parametrize("flags, message", [
    (["--out", "a_file/run"], "--out a_file/run: not a writable folder"),
    (["--batch-size", "-3"], "--batch-size must be positive"),
    (["--anchor-gap", "-1"], "--anchor-gap must be 0 or more"),
    (["--sample-eta", "2"], "--sample-eta must be in [0, 1] or ancestral, got 2.0"),
    (["--sample-eta", "fast"], "--sample-eta: a number in [0, 1] or ancestral, not 'fast'"),
    (["--replace", "lru"], "--replace: invalid choice: 'lru'"),
    (["--export", "a_file/base.pt"], "--export a_file/base.pt: give a .pt path in a writable"),
    (["--export", "base.pth"], "--export base.pth: give a .pt path in a writable folder"),
])
def test_more_bad_training_flags(tmp_path, monkeypatch, capsys, flags, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(SystemExit) as exit_info:
        train.main(train.parse_args(flags))
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_sample_and_eval_outputs_under_a_file_are_rejected(tmp_path, base_ckpt, capsys):
    import eval as drift
    (tmp_path / "a_file").write_text("x")
    for entry in (lambda: sample.main(sample.parse_args(["--ckpt", base_ckpt, "--out",
                                                         str(tmp_path / "a_file" / "v.mp4")])),
                  lambda: drift.main(drift.parse_args(["--ckpt", base_ckpt, "--out",
                                                       str(tmp_path / "a_file" / "eval")]))):
        with pytest.raises(SystemExit) as exit_info:
            entry()
        assert exit_info.value.code == 2 and "writable folder" in capsys.readouterr().err


def test_empty_prompt_file_is_rejected(tmp_path, base_ckpt, capsys):
    (tmp_path / "empty.txt").write_text("\n  \n")
    with pytest.raises(SystemExit) as exit_info:
        sample.main(sample.parse_args(["--ckpt", base_ckpt, "--prompts",
                                       str(tmp_path / "empty.txt")]))
    assert exit_info.value.code == 2 and "has no prompt" in capsys.readouterr().err
