"""Experiment 12 — where in the network richness happens: the D_LR profile across depth.

    python benchmarks/reproduce/exp12_profile.py                # ~1–2 min on one core

Layer-wise D_LR (SPEC §1: the features of a layer against the model's final logits), every layer
in one forward pass:

* **A. The built-in demo** (``dlr_hf.demo()``): the tiny ViT at initialisation, trained lazily
  (last layer only) and richly (full back-propagation), through ``dlr_hf.evaluate(...,
  layers="blocks", reference=initial)`` — D_LR and S_init after each transformer block.
* **B. BatchNorm on/off** (experiment 4's ``mlp-8``: 8 hidden ReLU layers of 128, SGD lr 0.01,
  2000 steps, cross-entropy, 3 seeds): D_LR at the input of every Linear layer (the hidden
  representations after each ReLU), streamed with ``DLRAccumulator`` against the final logits.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

import dlr_hf  # noqa: E402
from dlr_hf.metric import DLRAccumulator  # noqa: E402


def demo_profiles() -> list[dict]:
    paths = dlr_hf.demo()
    rows = []
    for name in ("initial", "lazy", "rich"):
        report = dlr_hf.evaluate(str(paths[name]), str(paths["data"]), num_samples=None, layers="blocks",
                                 reference_model=str(paths["initial"]), progress=False)
        for layer in report.to_dict()["layers"]:
            rows.append({"model": name, "layer": layer["name"], "depth": layer["depth"], "dlr": layer["dlr"],
                         "s_init": layer.get("s_init"), "test_accuracy": report.result.accuracy})
        rows.append({"model": name, "layer": "head input", "depth": len(report.to_dict()["layers"]) + 1,
                     "dlr": report.dlr, "s_init": report.baselines.get("s_init"), "test_accuracy": report.result.accuracy})
    return rows


def linear_inputs_profile(model: nn.Module, x: torch.Tensor) -> list[float]:
    """D_LR of the input of every Linear (shallow to deep, the head's last) against the final logits."""
    linears = [module for module in model.modules() if isinstance(module, nn.Linear)]
    captured: dict[int, torch.Tensor] = {}
    handles = [m.register_forward_hook(lambda mod, args, out, i=i: captured.__setitem__(i, args[0].detach()))
               for i, m in enumerate(linears)]
    model.eval()
    with torch.no_grad():
        logits = model(x)
    for handle in handles:
        handle.remove()
    values = []
    for i in range(1, len(linears)):  # the first Linear reads the raw pixels, not a representation
        accumulator = DLRAccumulator()
        accumulator.update(captured[i], logits)
        values.append(accumulator.compute().dlr)
    return values


def batchnorm_profiles(seeds: tuple[int, ...], steps: int) -> list[dict]:
    common.setup(0)
    data = common.digits()
    rows = []
    for batch_norm in (False, True):
        for seed in seeds:
            common.seed_everything(seed)
            model = common.MLP([64] + [128] * 8, batch_norm=batch_norm)
            common.train_classifier(model, model.parameters(), data.train_flat, data.train_labels, steps=steps,
                                    lr=0.01, optimiser="sgd", seed=seed)
            profile = linear_inputs_profile(model, data.test_flat)
            model.eval()
            with torch.no_grad():
                accuracy = common.accuracy(model(data.test_flat), data.test_labels)
            for depth, value in enumerate(profile, start=1):
                rows.append({"batch_norm": batch_norm, "seed": seed, "depth": depth, "dlr": value, "test_accuracy": accuracy})
    return rows


def plot(demo: list[dict], bn: list[dict]):
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, style in (("initial", ":"), ("lazy", "--"), ("rich", "-")):
        points = [row for row in demo if row["model"] == name]
        accuracy = points[0]["test_accuracy"]
        left.plot([p["depth"] for p in points], [p["dlr"] for p in points], style, marker="o",
                  label=f"{name} ({100 * accuracy:.1f} % test acc.)")
    left.set_xticks([p["depth"] for p in demo if p["model"] == "rich"],
                    [p["layer"].replace("block_", "block ") for p in demo if p["model"] == "rich"], fontsize=8)
    left.set(title="A. demo ViT: D_LR after each block", xlabel="depth", ylabel="layer-wise D_LR (0 rich, 1 lazy)", ylim=(0, 1))
    left.legend(fontsize=8)
    for batch_norm, style in ((False, "--"), (True, "-")):
        points = [row for row in bn if row["batch_norm"] == batch_norm]
        depths = sorted({p["depth"] for p in points})
        means = [np.mean([p["dlr"] for p in points if p["depth"] == d]) for d in depths]
        spread = [np.std([p["dlr"] for p in points if p["depth"] == d]) for d in depths]
        accuracy = np.mean([p["test_accuracy"] for p in points])
        right.errorbar(depths, means, yerr=spread, fmt=style, marker="o", capsize=3,
                       label=f"{'with' if batch_norm else 'without'} BatchNorm ({100 * accuracy:.1f} %)")
    right.set(title="B. MLP, 8 hidden layers: D_LR at each Linear's input", xlabel="hidden layer (8 = head input)",
              ylabel="layer-wise D_LR", ylim=(0, 1))
    right.legend(fontsize=8)
    figure.tight_layout()
    return figure


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=2000)
    args = parser.parse_args()
    timer = common.Timer()
    demo = demo_profiles()
    bn = batchnorm_profiles(tuple(args.seeds), args.steps)
    common.savefig(plot(demo, bn), "exp12_profile")
    bn_rows = []
    for batch_norm in (False, True):
        for depth in sorted({row["depth"] for row in bn}):
            values = [row["dlr"] for row in bn if row["batch_norm"] == batch_norm and row["depth"] == depth]
            bn_rows.append({"batch_norm": batch_norm, "depth": depth, "dlr_mean": float(np.mean(values)),
                            "dlr_std": float(np.std(values))})
    common.write_results("exp12_profile", "Experiment 12 — the richness profile across depth",
                         demo + bn_rows, ["model", "layer", "depth", "dlr", "s_init", "test_accuracy", "batch_norm",
                                          "dlr_mean", "dlr_std"], runtime_s=timer.seconds)
    print(f"done in {timer.seconds:.0f} s")


if __name__ == "__main__":
    main()
