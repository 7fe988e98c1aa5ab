"""The SPEC §3 visualisations as matplotlib figures (shared by the CLI, the app and the callback)."""

from __future__ import annotations

from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # files and web apps, never a window
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from dlr_hf.engine import DLRResult


def visualisation_figure(results: Sequence[DLRResult], labels: Sequence[str]) -> Figure:
    """Spectrum, cumulative utilisation U(k), cumulative quality Q(k) and π_k, one line per result."""
    figure, axes = plt.subplots(2, 2, figsize=(11, 7.5), constrained_layout=True)
    spectrum, utilisation, quality, pi = axes.flat
    for result, label in zip(results, labels):
        k = np.arange(1, len(result.spectrum) + 1)
        rho = np.asarray(result.spectrum)
        name = f"{label} (D_LR {result.dlr:.3f})"
        spectrum.semilogy(k, np.clip(rho / rho[0], 1e-16, None), label=name)
        utilisation.plot(k, result.utilisation, label=name)
        if result.quality is not None:
            quality.plot(k, result.quality, label=name)
        pi.plot(k, result.pi, marker=".", linestyle="none", label=name)
    num_outputs = results[0].num_outputs if results else None
    for axis in (spectrum, utilisation, quality, pi):
        if num_outputs and num_outputs < len(results[0].spectrum):
            axis.axvline(num_outputs, color="grey", linestyle=":", label=f"k = C = {num_outputs}")
        axis.set_xlabel("eigen-direction k")
        axis.set_xscale("log")
        axis.grid(alpha=0.3)
    spectrum.set_title("Spectrum ρ_k / ρ_1 (rich: ~C dominant, then a cliff)")
    utilisation.set_title("Cumulative utilisation U(k): output variance in top-k directions")
    utilisation.set_ylim(0, 1.02)
    quality.set_title("Cumulative quality Q(k): target explained by top-k (labels)")
    quality.set_ylim(0, 1.02)
    if not any(result.quality is not None for result in results):
        quality.text(0.5, 0.5, "no labels", ha="center", va="center", transform=quality.transAxes, color="grey")
    pi.set_title("π_k: share of each eigenfunction the learned function uses")
    pi.set_ylim(-0.02, 1.02)
    spectrum.legend(fontsize=8)
    return figure


def trajectory_figure(steps: Sequence[float], series: dict[str, Sequence[float | None]], xlabel: str = "step") -> Figure:
    """D_LR (left axis, 0–1) beside accuracy or other metrics over checkpoints or training steps."""
    figure, axis = plt.subplots(figsize=(8, 4.5), constrained_layout=True)
    for name, values in series.items():
        points = [(s, v) for s, v in zip(steps, values) if v is not None]
        if points:
            x, y = zip(*points)
            axis.plot(x, y, marker="o", label=name, linewidth=2.5 if "dlr" in name.lower() else 1.5)
    axis.set_xlabel(xlabel)
    axis.set_ylim(-0.02, 1.02)
    axis.set_ylabel("D_LR (0 = rich, 1 = lazy) · accuracy")
    axis.grid(alpha=0.3)
    axis.legend()
    return figure
