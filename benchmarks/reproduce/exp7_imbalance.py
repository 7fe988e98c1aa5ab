"""Experiment 7 — a known limit: perfectly collapsed features with imbalanced classes give D_LR > 0.

    python benchmarks/reproduce/exp7_imbalance.py               # a few seconds

Pure math with ``compute_dlr``: C = 10 classes, features exactly collapsed onto their class means
(``Φ = M[y]``, no within-class spread), a head that reads exactly the class-mean space
(``W = M``, so ``Ŷ_c`` spans the centred class indicators, r = C − 1). For balanced classes this is
the SPEC's pinned case, D_LR = 0. Class counts are then made imbalanced with largest/smallest ratio
ρ, in three profiles:

* ``one-major``: one class ρ times as frequent as each of the others;
* ``step``: half of the classes ρ times as frequent as the other half;
* ``long-tail``: ``n_k ∝ ρ^(−k/(C−1))`` (geometric decay).

and two class-mean geometries: orthonormal means (one-hot, rotated into R^32) and the simplex
equiangular tight frame. For orthonormal means the value is checked against an independent closed
form: with ``P_Y Φ_c = Φ_c`` here, ``CKA = Σλ / (√r · √Σλ²)`` over the eigenvalues λ of the centred
class-count Gram ``diag(n) − n nᵀ/N`` (numpy, not the library). The library's imbalance warning is
shown, and the mitigation — measure on a class-balanced subsample — is checked (D_LR back to 0).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from dlr_hf import compute_dlr  # noqa: E402

C = 10
P = 32
N_MAX = 1000
RATIOS = (1, 1.5, 2, 3, 5, 10, 20, 50, 100)
PROFILES = ("one-major", "step", "long-tail")


def class_counts(profile: str, ratio: float) -> np.ndarray:
    if profile == "one-major":
        counts = np.full(C, N_MAX / ratio)
        counts[0] = N_MAX
    elif profile == "step":
        counts = np.where(np.arange(C) < C // 2, N_MAX, N_MAX / ratio)
    else:
        counts = N_MAX * ratio ** (-np.arange(C) / (C - 1))
    return np.maximum(np.round(counts), 1).astype(int)


def class_means(geometry: str, rng: np.random.Generator) -> np.ndarray:
    """C × P class means: orthonormal, or a simplex ETF, rotated by a random orthogonal matrix."""
    basis = np.eye(C)
    if geometry == "simplex":
        basis = (basis - 1.0 / C) * np.sqrt(C / (C - 1))
    rotation, _ = np.linalg.qr(rng.standard_normal((P, P)))
    return basis @ rotation[:C]


def collapsed(counts: np.ndarray, means: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    labels = np.repeat(np.arange(C), counts)
    features = means[labels]
    logits = features @ means.T  # the head reads the class-mean space exactly
    return features, logits, labels


def closed_form_dlr(counts: np.ndarray) -> float:
    """Orthonormal means: D_LR = 1 − Σλ/(√r √Σλ²), λ the eigenvalues of diag(n) − nnᵀ/N."""
    gram = np.diag(counts.astype(float)) - np.outer(counts, counts) / counts.sum()
    eigenvalues = np.linalg.eigvalsh(gram)
    eigenvalues = eigenvalues[eigenvalues > 1e-9 * eigenvalues.max()]
    return float(1 - eigenvalues.sum() / (np.sqrt(len(eigenvalues)) * np.sqrt((eigenvalues**2).sum())))


def balanced_subsample(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    smallest = np.bincount(labels).min()
    return np.concatenate([rng.choice(np.flatnonzero(labels == k), smallest, replace=False) for k in range(C)])


def run(seed: int = 0) -> tuple[list[dict], list[str]]:
    common.setup(seed)
    rng = np.random.default_rng(seed)
    rows, shown_warnings = [], []
    for geometry in ("orthonormal", "simplex"):
        means = class_means(geometry, rng)
        for profile in PROFILES:
            for ratio in RATIOS:
                counts = class_counts(profile, ratio)
                features, logits, labels = collapsed(counts, means)
                result = compute_dlr(torch.from_numpy(features), torch.from_numpy(logits), labels=torch.from_numpy(labels))
                keep = balanced_subsample(labels, rng)
                balanced = compute_dlr(features[keep], logits[keep])
                imbalance_warning = next((w for w in result.warnings if "far from balanced" in w), None)
                if imbalance_warning and not shown_warnings:
                    shown_warnings.append(imbalance_warning)
                rows.append({
                    "geometry": geometry, "profile": profile, "ratio": float(ratio),
                    "counts": counts.tolist(), "dlr": result.dlr,
                    "closed_form": closed_form_dlr(counts) if geometry == "orthonormal" else None,
                    "rank": result.rank, "nc1": result.nc1, "warned": imbalance_warning is not None,
                    "dlr_balanced_subsample": balanced.dlr,
                })
    return rows, shown_warnings


def main() -> None:
    timer = common.Timer()
    rows, shown = run()
    worst = max(abs(r["dlr"] - r["closed_form"]) for r in rows if r["closed_form"] is not None)
    table = []
    for ratio in RATIOS:
        subset = [r for r in rows if r["ratio"] == ratio]
        line = {"ratio ρ": float(ratio)}
        for profile in PROFILES:
            line[f"D_LR {profile}"] = next(r["dlr"] for r in subset if r["profile"] == profile and r["geometry"] == "orthonormal")
        line["max diff, orthonormal vs simplex"] = max(
            abs(a["dlr"] - b["dlr"]) for a in subset for b in subset
            if a["profile"] == b["profile"] and a["geometry"] == "orthonormal" and b["geometry"] == "simplex")
        line["max error vs closed form"] = max(abs(r["dlr"] - r["closed_form"]) for r in subset if r["closed_form"] is not None)
        line["max NC1"] = max(abs(r["nc1"]) for r in subset)
        line["warned"] = all(r["warned"] for r in subset)
        line["max D_LR, balanced subsample"] = max(r["dlr_balanced_subsample"] for r in subset)
        table.append(line)
    columns = list(table[0])
    notes = (
        f"C = {C}, p = {P}, largest class {N_MAX} samples. `D_LR <profile>`: compute_dlr on the perfectly collapsed "
        "features (NC1 = 0 to rounding) with orthonormal class means; the simplex-ETF means give the same values "
        "(the two geometries differ by a translation and a scale, which D_LR ignores); `closed form`: the "
        "independent numpy formula; `warned`: every result at that ratio carries the library's imbalance warning "
        "(largest/smallest > 2); `balanced subsample`: the same features subsampled to equal class counts. "
        "Every row (counts per class) is in the JSON.\n\n"
        f"Largest |library − closed form| = {worst:.2e}.\n\n"
        "The library's warning, verbatim:\n\n> " + (shown[0] if shown else "(none emitted)")
    )
    common.write_results("exp7_imbalance", "Experiment 7 — imbalanced classes: D_LR > 0 for perfect collapse", table,
                         columns, notes=notes, extra={"warning": shown, "max_closed_form_error": worst, "all_rows": rows},
                         runtime_s=timer.seconds)
    _plot(rows)


def _plot(rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(8, 4.8), constrained_layout=True)
    styles = {"orthonormal": "-", "simplex": "--"}
    colours = {"one-major": "tab:blue", "step": "tab:orange", "long-tail": "tab:green"}
    for geometry in styles:
        for profile in PROFILES:
            subset = [r for r in rows if r["geometry"] == geometry and r["profile"] == profile]
            axis.semilogx([r["ratio"] for r in subset], [r["dlr"] for r in subset], styles[geometry], marker="o",
                          color=colours[profile], label=f"{profile}, {geometry} means")
    axis.axvline(2, color="grey", ls=":", label="library warns above ratio 2")
    axis.set_xlabel("class imbalance ρ = largest / smallest count")
    axis.set_ylabel("D_LR of perfectly collapsed features")
    axis.set_title("Known limit: imbalance makes perfect collapse read D_LR > 0")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    common.savefig(figure, "exp7_imbalance")


if __name__ == "__main__":
    main()
