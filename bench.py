"""
bench.py: speed ratios of svi, measured side by side in one run (never across runs).

    python bench.py            # ERFT step / plain fine-tuning step at the default config (T)

Each round trains a plain fine-tune and an ERFT fine-tune from the same base for the same steps,
alternating, and reads the seconds per step of the last half (when the banks are full and every
new error goes through the L2 replacement, the costliest case). The ratio of the medians is the
cost of error recycling.
"""
import argparse
import json
import os
import tempfile

import numpy as np

import train


def seconds_per_step(out, **flags):
    cfg = train.TrainConfig(out=out, sample_every=10 ** 6, ckpt_every=10 ** 6, **flags)
    train.main(cfg)
    records = [json.loads(line) for line in open(os.path.join(out, "log.jsonl"))]
    return records[-1]["sec_per_step"]


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--steps", type=int, default=80, help="steps per measured run")
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = os.path.join(tmp, "base")
        train.main(train.TrainConfig(out=base, steps=1, sample_every=10 ** 6))
        init = os.path.join(base, "ckpt.pt")
        half = args.steps // 2
        plain, erft = [], []
        for r in range(args.rounds):
            plain.append(seconds_per_step(os.path.join(tmp, f"plain{r}"), init_from=init,
                                          steps=args.steps, log_every=half))
            erft.append(seconds_per_step(os.path.join(tmp, f"erft{r}"), init_from=init,
                                         steps=args.steps, log_every=half, erft=True))
    print(f"plain fine-tuning step: {np.median(plain):.3f} s   ERFT step: {np.median(erft):.3f} s"
          f"   ERFT / plain: {np.median(erft) / np.median(plain):.3f}")


if __name__ == "__main__":
    main()
