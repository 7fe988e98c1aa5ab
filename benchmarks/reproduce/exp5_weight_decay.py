"""Experiment 5 — weight decay moves ‖θ‖ and S_init strongly; D_LR reads the regime consistently.

    python benchmarks/reproduce/exp5_weight_decay.py            # ~1–2 min on one core

The MLP of experiment 1 part B (64-256-256-10, ReLU, squared loss on one-hot digit labels, batch 64,
2000 steps) in two regimes — "rich": Adam lr 1e-3 on every parameter; "lazy": Adam lr 1e-2 on the
head only (features frozen at initialisation) — each with decoupled weight decay (AdamW) of the same
per-step shrink factor ``λ`` in both regimes (``weight_decay = λ / lr``) for λ ∈ {0, 1e-4, 3e-4,
1e-3, 3e-3}. Measured on the 360 test digits: D_LR, S_init (linear CKA with the initial features),
‖θ‖², ‖θ − θ0‖/‖θ0‖ over the trained parameters, NC1 and test accuracy.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

from dlr_hf.metric import parameter_snapshot  # noqa: E402

DECAYS = (0.0, 1e-4, 3e-4, 1e-3, 3e-3)
LR = {"rich": 1e-3, "lazy": 1e-2}


def run(decays=DECAYS, steps: int = 2000, seed: int = 0, loss: str = "mse") -> list[dict]:
    common.setup(seed)
    data = common.digits()
    rows = []
    for regime in ("rich", "lazy"):
        for decay in decays:
            common.seed_everything(seed)
            model = common.MLP([64, 256, 256])
            if regime == "lazy":
                for param in model.body.parameters():
                    param.requires_grad = False
            initial_parameters = parameter_snapshot(model)
            initial = common.measure(model, model.head, data.test_flat, compute=False)
            parameters = [param for param in model.parameters() if param.requires_grad]
            common.train_classifier(model, parameters, data.train_flat, data.train_labels, steps=steps, lr=LR[regime],
                                    weight_decay=decay / LR[regime], seed=seed, loss=loss)
            final = common.measure(model, model.head, data.test_flat, data.test_labels)
            rows.append({"regime": regime, "decay_per_step": decay, "dlr": final.result.dlr,
                         "s_init": common.s_init(initial.features, final.features), **common.baselines(model, initial_parameters),
                         "nc1": final.result.nc1, "test_accuracy": final.result.accuracy})
    return rows


def spread(rows: list[dict], key: str) -> float:
    values = [row[key] for row in rows]
    return max(values) - min(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    timer = common.Timer()
    rows = run(steps=args.steps, seed=args.seed)
    columns = ["regime", "decay_per_step", "dlr", "s_init", "param_norm_sq", "param_change", "nc1", "test_accuracy"]
    summary = []
    for regime in ("rich", "lazy"):
        subset = [row for row in rows if row["regime"] == regime]
        norms = [row["param_norm_sq"] for row in subset]
        summary.append({"regime": regime, "D_LR range": f"{min(r['dlr'] for r in subset):.3f}–{max(r['dlr'] for r in subset):.3f}",
                        "S_init range": f"{min(r['s_init'] for r in subset):.3f}–{max(r['s_init'] for r in subset):.3f}",
                        "‖θ‖² max/min": max(norms) / min(norms),
                        "‖θ−θ0‖/‖θ0‖ range": f"{min(r['param_change'] for r in subset):.3f}–{max(r['param_change'] for r in subset):.3f}",
                        "test accuracy range": f"{min(r['test_accuracy'] for r in subset):.3f}–{max(r['test_accuracy'] for r in subset):.3f}"})
    gap = min(r["dlr"] for r in rows if r["regime"] == "lazy") - max(r["dlr"] for r in rows if r["regime"] == "rich")
    notes = (
        f"MLP 64-256-256-10, squared loss, batch 64, {args.steps} steps, seed {args.seed}; `decay_per_step` λ is the "
        "AdamW shrink per step (weight_decay = λ/lr), the same in both regimes. `param_norm_sq` is ‖θ‖² over all "
        "parameters, `param_change` ‖θ−θ0‖/‖θ0‖ over the trained ones (the head only, for lazy).\n\n"
        "Across weight decays, per regime:\n\n" + common.markdown_table(summary, list(summary[0])) +
        f"\n\nSmallest lazy D_LR minus largest rich D_LR: **{gap:.3f}**."
    )
    common.write_results("exp5_weight_decay", "Experiment 5 — weight decay", rows, columns, notes=notes,
                         extra={"summary": summary, "dlr_gap": gap, "args": vars(args)}, runtime_s=timer.seconds)
    _plot(rows)


def _plot(rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 3, figsize=(14, 4.2), constrained_layout=True)
    colours = {"rich": "tab:red", "lazy": "tab:blue"}
    for regime in ("rich", "lazy"):
        subset = [row for row in rows if row["regime"] == regime]
        x = [max(row["decay_per_step"], 3e-5) for row in subset]
        axes[0].semilogx(x, [row["dlr"] for row in subset], "-o", color=colours[regime], lw=2.5, label=f"{regime}: D_LR")
        axes[0].semilogx(x, [row["test_accuracy"] for row in subset], "--", color=colours[regime], label=f"{regime}: test accuracy")
        axes[1].semilogx(x, [row["s_init"] for row in subset], "-s", color=colours[regime], label=f"{regime}: S_init")
        axes[2].loglog(x, [row["param_norm_sq"] for row in subset], "-d", color=colours[regime], label=f"{regime}: ‖θ‖²")
    titles = ("D_LR (and test accuracy)", "S_init: CKA with the initial features", "‖θ‖²")
    for axis, title in zip(axes, titles):
        axis.set_xlabel("weight decay λ per step (λ = 0 drawn at 3e-5)")
        axis.set_title(title)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    axes[0].set_ylim(-0.02, 1.02)
    axes[1].set_ylim(-0.02, 1.02)
    common.savefig(figure, "exp5_weight_decay")


if __name__ == "__main__":
    main()
