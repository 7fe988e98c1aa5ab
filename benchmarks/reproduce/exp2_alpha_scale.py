"""Experiment 2 — lazy-training scale α (Chizat, Oyallon & Bach 2019): D_LR rises with α.

    python benchmarks/reproduce/exp2_alpha_scale.py             # ~1–2 min on one core

Model: ``f_α(x) = α · W·Φ(x)`` with ``Φ(x) = [φ_1(x), φ_2(x)]``, two identically initialised
ReLU MLPs 64-h-h (h = 128), and a single head ``W = [W_1, −W_1]`` (zero bias), so ``f_α ≡ 0`` at
initialisation for every α (the symmetrised initialisation that keeps the initial output from
blowing up as α grows). The head is one ``nn.Linear`` reading ``Φ``, so D_LR is measured on its
input and output exactly as for any other network. Squared loss on one-hot digit labels, plain SGD
with learning rate ``lr_0/α²`` (the same linearised function-space speed for every α), same number
of steps for every α. D_LR, S_init (linear CKA between the initial and final Φ on the test
digits) and ‖θ‖² are measured on the 360 test digits.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from dlr_hf.metric import parameter_snapshot  # noqa: E402

ALPHAS = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0)


class ScaledNet(nn.Module):
    def __init__(self, width: int = 128, alpha: float = 1.0, num_classes: int = 10) -> None:
        super().__init__()
        self.alpha = alpha
        branch = nn.Sequential(nn.Linear(64, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU())
        self.branch1 = branch
        self.branch2 = copy.deepcopy(branch)
        self.head = nn.Linear(2 * width, num_classes)
        with torch.no_grad():
            half = self.head.weight[:, :width].clone()
            self.head.weight.copy_(torch.cat([half, -half], dim=1))
            self.head.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.alpha * self.head(torch.cat([self.branch1(x), self.branch2(x)], dim=1))


def train_one(alpha: float, *, steps: int, lr0: float, width: int, batch_size: int, seed: int) -> dict:
    data = common.digits()
    common.seed_everything(seed)
    model = ScaledNet(width, alpha)
    initial_parameters = parameter_snapshot(model)
    initial = common.measure(model, model.head, data.test_flat, compute=False)  # f_α ≡ 0 here
    optimiser = torch.optim.SGD(model.parameters(), lr=lr0 / alpha**2)
    targets = nn.functional.one_hot(data.train_labels, 10).double().float()
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        batch = torch.randint(len(targets), (batch_size,), generator=generator)
        loss = 0.5 * (model(data.train_flat[batch]) - targets[batch]).pow(2).sum(1).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.eval()
    with torch.no_grad():
        train_loss = float(0.5 * (model(data.train_flat) - targets).pow(2).sum(1).mean())
        train_accuracy = common.accuracy(model(data.train_flat), data.train_labels)
    final = common.measure(model, model.head, data.test_flat, data.test_labels)
    return {
        "alpha": alpha,
        "lr": lr0 / alpha**2,
        "dlr": final.result.dlr,
        "s_init": common.s_init(initial.features, final.features),
        **common.baselines(model, initial_parameters),
        "train_loss": train_loss,
        "train_accuracy": train_accuracy,
        "test_accuracy": final.result.accuracy,
        "nc1": final.result.nc1,
        "effective_rank": final.result.effective_rank,
        "result": final.result,
    }


def run(alphas=ALPHAS, steps: int = 3000, lr0: float = 0.1, width: int = 128, batch_size: int = 128, seed: int = 0) -> list[dict]:
    common.setup(seed)
    return [train_one(alpha, steps=steps, lr0=lr0, width=width, batch_size=batch_size, seed=seed) for alpha in alphas]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--lr0", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    timer = common.Timer()
    rows = run(steps=args.steps, lr0=args.lr0, seed=args.seed)
    results = {row["alpha"]: row.pop("result") for row in rows}
    rho = common.spearman([r["alpha"] for r in rows], [r["dlr"] for r in rows])
    columns = ["alpha", "lr", "dlr", "s_init", "param_norm_sq", "param_change", "train_loss", "train_accuracy",
               "test_accuracy", "nc1", "effective_rank"]
    notes = (
        f"Symmetrised 2×(64-{128}-{128}) ReLU MLP, head on Φ ∈ R^256, C = 10; SGD batch 128, lr = {args.lr0}/α², "
        f"{args.steps} steps, squared loss, seed {args.seed}. D_LR / S_init / accuracy on the 360 test digits; "
        "`param_norm_sq` is ‖θ‖², `param_change` ‖θ−θ0‖/‖θ0‖.\n\n"
        f"Spearman rank correlation between α and D_LR: **{rho:.3f}**."
    )
    common.write_results("exp2_alpha_scale", "Experiment 2 — lazy-training scale α", rows, columns, notes=notes,
                         extra={"spearman_alpha_dlr": rho, "seed": args.seed, "steps": args.steps}, runtime_s=timer.seconds)
    _plot(rows, results)


def _plot(rows: list[dict], results: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5), constrained_layout=True)
    alphas = [r["alpha"] for r in rows]
    left.semilogx(alphas, [r["dlr"] for r in rows], "-o", lw=2.5, label="D_LR")
    left.semilogx(alphas, [r["s_init"] for r in rows], "-s", label="S_init (CKA with initial features)")
    left.semilogx(alphas, [r["test_accuracy"] for r in rows], "--^", label="test accuracy")
    left.semilogx(alphas, [r["param_change"] for r in rows], ":d", label="‖θ−θ0‖/‖θ0‖")
    left.set_xlabel("output scale α (lr ∝ 1/α²)")
    left.set_ylim(-0.02, 1.02)
    left.set_title("Lazy-training scale: D_LR rises with α")
    left.grid(alpha=0.3)
    left.legend(fontsize=8, loc="center right")
    for alpha, result in results.items():
        rho = np.asarray(result.spectrum)
        right.loglog(np.arange(1, len(rho) + 1), np.clip(rho / rho[0], 1e-12, None), label=f"α = {alpha:g}")
    right.axvline(10, color="grey", ls=":", label="k = C")
    right.set_ylim(1e-6, 1.5)
    right.set_xlabel("eigen-direction k")
    right.set_title("Feature spectrum ρ_k/ρ_1 (test digits)")
    right.grid(alpha=0.3)
    right.legend(fontsize=7, ncol=2)
    common.savefig(figure, "exp2_alpha_scale")


if __name__ == "__main__":
    main()
