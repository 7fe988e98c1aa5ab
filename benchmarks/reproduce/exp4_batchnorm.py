"""Experiment 4 — BatchNorm: the same network with BatchNorm reads a lower D_LR than without.

    python benchmarks/reproduce/exp4_batchnorm.py               # ~2–3 min on one core

Networks, each with and without BatchNorm (before every ReLU), identical otherwise and trained from
the same seed with the same recipe — SGD (momentum 0.9) lr 0.01, batch 64, cross-entropy, 2000 steps
on the digits training set:

* ``vgg-mini``: a VGG-style CNN on the 8×8 digit images — conv16 conv16 pool conv32 conv32 pool
  (3×3 convolutions), then Linear(128, 128), ReLU and the linear head (p = 128);
* ``mlp-d``: ReLU MLPs with d = 2 and 8 hidden layers of 128 (p = 128).

D_LR and test accuracy on the 360 test digits (model in eval mode: BatchNorm uses its running
statistics), over 3 seeds (mean ± standard deviation).

Paper: VGG-16 on CIFAR-100 without / with BatchNorm: test accuracy 21.7 % / 72.0 %, D_LR 0.66 / 0.073.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

PAPER = {False: {"test_accuracy": 0.217, "dlr": 0.66}, True: {"test_accuracy": 0.720, "dlr": 0.073}}


class VGGMini(nn.Module):
    def __init__(self, batch_norm: bool, num_classes: int = 10) -> None:
        super().__init__()

        def conv(c_in: int, c_out: int) -> list[nn.Module]:
            return [nn.Conv2d(c_in, c_out, 3, padding=1), *([nn.BatchNorm2d(c_out)] if batch_norm else []), nn.ReLU()]

        self.body = nn.Sequential(
            *conv(1, 16), *conv(16, 16), nn.MaxPool2d(2),
            *conv(16, 32), *conv(32, 32), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(128, 128), *([nn.BatchNorm1d(128)] if batch_norm else []), nn.ReLU(),
        )
        self.head = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x.reshape(-1, 1, 8, 8)))


def build(name: str, batch_norm: bool) -> nn.Module:
    if name == "vgg-mini":
        return VGGMini(batch_norm)
    depth = int(name.split("-")[1])
    return common.MLP([64] + [128] * depth, batch_norm=batch_norm)


def run(networks=("vgg-mini", "mlp-2", "mlp-8"), seeds=(0, 1, 2), steps: int = 2000, loss: str = "ce") -> list[dict]:
    common.setup(0)
    data = common.digits()
    rows = []
    for name in networks:
        for batch_norm in (False, True):
            for seed in seeds:
                common.seed_everything(seed)
                model = build(name, batch_norm)
                common.train_classifier(model, model.parameters(), data.train_flat, data.train_labels, steps=steps,
                                        lr=0.01, optimiser="sgd", seed=seed, loss=loss)
                final = common.measure(model, model.head, data.test_flat, data.test_labels)
                train = common.measure(model, model.head, data.train_flat, data.train_labels)
                rows.append({"network": name, "batch_norm": batch_norm, "seed": seed, "dlr": final.result.dlr,
                             "test_accuracy": final.result.accuracy, "train_accuracy": train.result.accuracy,
                             "dlr_train": train.result.dlr, "nc1": final.result.nc1})
    return rows


def aggregate(rows: list[dict]) -> list[dict]:
    table = []
    for name in dict.fromkeys(row["network"] for row in rows):
        line: dict = {"network": name}
        for batch_norm, tag in ((False, "without BN"), (True, "with BN")):
            subset = [row for row in rows if row["network"] == name and row["batch_norm"] == batch_norm]
            dlr = np.array([row["dlr"] for row in subset])
            accuracy = np.array([row["test_accuracy"] for row in subset])
            line[f"D_LR {tag}"] = f"{dlr.mean():.3f} ± {dlr.std():.3f}"
            line[f"test acc. {tag}"] = f"{accuracy.mean():.3f} ± {accuracy.std():.3f}"
            line[f"_dlr_{batch_norm}"] = float(dlr.mean())
        paired = [a["dlr"] - b["dlr"] for a in rows for b in rows if a["network"] == b["network"] == name
                  and a["seed"] == b["seed"] and not a["batch_norm"] and b["batch_norm"]]
        line["BN lowers D_LR (seeds)"] = f"{sum(d > 0 for d in paired)}/{len(paired)}"
        table.append(line)
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    args = parser.parse_args()
    timer = common.Timer()
    rows = run(steps=args.steps)
    table = aggregate(rows)
    columns = ["network", "D_LR without BN", "D_LR with BN", "test acc. without BN", "test acc. with BN", "BN lowers D_LR (seeds)"]
    notes = (
        f"SGD momentum 0.9, lr 0.01, batch 64, {args.steps} steps, cross-entropy; D_LR and accuracy on the 360 test "
        "digits, mean ± std over seeds 0, 1, 2. Paper (VGG-16, CIFAR-100): without BN 21.7 % / D_LR 0.66, with BN "
        "72.0 % / D_LR 0.073.\n\nEvery run:\n\n"
        + common.markdown_table(rows, ["network", "batch_norm", "seed", "dlr", "test_accuracy", "dlr_train", "train_accuracy", "nc1"])
    )
    common.write_results("exp4_batchnorm", "Experiment 4 — with vs without BatchNorm", table, columns, notes=notes,
                         extra={"runs": rows, "args": vars(args)}, runtime_s=timer.seconds)
    _plot(table, rows)


def _plot(table: list[dict], rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(8, 4.5), constrained_layout=True)
    names = [line["network"] for line in table]
    x = np.arange(len(names))
    for offset, batch_norm, colour, label in ((-0.18, False, "tab:blue", "without BN"), (0.18, True, "tab:red", "with BN")):
        axis.bar(x + offset, [line[f"_dlr_{batch_norm}"] for line in table], width=0.34, color=colour, alpha=0.7, label=f"D_LR {label}")
        for i, name in enumerate(names):
            runs = [row for row in rows if row["network"] == name and row["batch_norm"] == batch_norm]
            axis.plot([i + offset] * len(runs), [row["dlr"] for row in runs], "k.", ms=5)
            accuracy = np.mean([row["test_accuracy"] for row in runs])
            axis.text(i + offset, 0.02, f"{accuracy:.0%}", ha="center", fontsize=7, color="white")
    axis.axhline(PAPER[False]["dlr"], color="tab:blue", ls=":", label="paper VGG-16 without BN (0.66)")
    axis.axhline(PAPER[True]["dlr"], color="tab:red", ls=":", label="paper VGG-16 with BN (0.073)")
    axis.set_xticks(x, names)
    axis.set_ylim(0, 1)
    axis.set_ylabel("D_LR (test digits; dots: seeds; in bars: test accuracy)")
    axis.set_title("BatchNorm lowers D_LR")
    axis.grid(alpha=0.3, axis="y")
    axis.legend(fontsize=8)
    common.savefig(figure, "exp4_batchnorm")


if __name__ == "__main__":
    main()
