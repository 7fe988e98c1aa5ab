"""The SPEC §3 visualisations as matplotlib figures (shared by the CLI, the app and the callback)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")  # files and web apps, never a window
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from dlr_hf.engine import DLRResult, write_atomic


def visualisation_figure(results: Sequence[DLRResult], labels: Sequence[str], title: str | None = None) -> Figure:
    """Spectrum, cumulative utilisation U(k), cumulative quality Q(k) and π_k, one line per result.

    ``title``: what was measured (model, dataset, layer), above the four panels.
    """
    figure, axes = plt.subplots(2, 2, figsize=(11, 7.5), constrained_layout=True)
    if title:
        figure.suptitle(title)
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
    spectrum.set_title("Spectrum ρ_k / ρ_1\n(rich: ~C dominant, then a cliff)", fontsize=10)
    spectrum.set_ylabel("ρ_k / ρ_1 (log)")
    utilisation.set_ylabel("U(k)")
    quality.set_ylabel("Q(k)")
    pi.set_ylabel("π_k")
    utilisation.set_title("Cumulative utilisation U(k)\n(output variance in the top-k directions)", fontsize=10)
    utilisation.set_ylim(0, 1.02)
    quality.set_title("Cumulative quality Q(k)\n(target explained by the top k; labels)", fontsize=10)
    quality.set_ylim(0, 1.02)
    if not any(result.quality is not None for result in results):
        quality.text(0.5, 0.5, "no labels", ha="center", va="center", transform=quality.transAxes, color="grey")
    pi.set_title("π_k\n(share of each eigenfunction the learned function uses)", fontsize=10)
    pi.set_ylim(-0.02, 1.02)
    spectrum.legend(fontsize=8)
    return figure


def save_figure(figure: Figure, path: str | Path, dpi: int = 110) -> Path:
    """Write ``figure`` (format from the suffix) whole or not at all, then release it from pyplot's registry
    (a long-lived app or training run must not keep every figure it ever drew)."""
    path = Path(path)
    file_format = path.suffix.lower().lstrip(".") or "png"
    try:
        write_atomic(path, lambda stream: figure.savefig(stream, format=file_format, dpi=dpi))
    finally:
        plt.close(figure)
    return path


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


def profile_figure(profiles: Sequence[Sequence[dict[str, Any]]], labels: Sequence[str],
                   heads: Sequence[float | None] | None = None, title: str | None = None) -> Figure:
    """D_LR (and S_init, when measured) against depth, one line per model; the final head's D_LR as a star.

    ``profiles``: each model's report ``layers`` rows; ``heads``: each model's final-head D_LR;
    ``title``: what was measured (model, dataset), above the panels.
    """
    with_s_init = any("s_init" in row for rows in profiles for row in rows)
    figure, axes = plt.subplots(1, 2 if with_s_init else 1, figsize=(12 if with_s_init else 7.5, 4.5),
                                constrained_layout=True, squeeze=False)
    if title:
        figure.suptitle(title)
    dlr_axis = axes[0][0]
    for index, (rows, label) in enumerate(zip(profiles, labels)):
        depth = [row["depth"] for row in rows]
        line, = dlr_axis.plot(depth, [row["dlr"] for row in rows], marker="o", label=label)
        head = heads[index] if heads else None
        if head is not None and rows:
            dlr_axis.plot([max(depth) + 1], [head], marker="*", markersize=13, color=line.get_color(), linestyle="none")
        if with_s_init:
            points = [(row["depth"], row["s_init"]) for row in rows if "s_init" in row]
            if points:
                axes[0][1].plot(*zip(*points), marker="o", color=line.get_color(), label=label)
    names = [row["name"] for row in profiles[0]] if profiles else []
    if names:
        ticks = list(range(1, len(names) + 1)) + ([len(names) + 1] if heads else [])
        tick_names = [name.replace("block_", "") for name in names] + (["head"] if heads else [])
        for axis in axes[0]:
            axis.set_xticks(ticks, tick_names, rotation=0 if len(names) <= 16 and max(map(len, tick_names)) <= 4 else 60,
                            fontsize=8)
            axis.set_xlabel("block" if names[0].startswith("block_") else "layer")
            axis.grid(alpha=0.3)
    dlr_axis.set_ylim(-0.02, 1.02)
    dlr_axis.set_ylabel("D_LR (0 = rich, 1 = lazy)")
    dlr_axis.set_title("Richness across depth: each layer's features against the final logits (★ the head)")
    dlr_axis.legend(fontsize=8)
    if with_s_init:
        axes[0][1].set_ylim(-0.02, 1.02)
        axes[0][1].set_ylabel("S_init (CKA to the initial features)")
        axes[0][1].set_title("Similarity to initialisation across depth")
    return figure


def runs_figure(runs: dict[str, tuple[Sequence[float], Sequence[float], Sequence[float | None]]],
                xlabel: str = "training step", tick_labels: Sequence[str] | None = None) -> Figure:
    """D_LR (top) and accuracy (bottom, its own panel) over training, one line per run in the same colour.

    ``runs``: run name → (x, D_LR, accuracy) of its checkpoints in order; ``tick_labels`` names the
    positions 1, 2, … when the checkpoints carry no training step. One line per run, so two runs are
    never joined into one line.
    """
    figure, (dlr_axis, accuracy_axis) = plt.subplots(2, 1, figsize=(8, 6.5), sharex=True, constrained_layout=True)
    for name, (x, dlr, accuracy) in runs.items():
        line, = dlr_axis.plot(x, dlr, marker="o", linewidth=2.5, label=name)
        points = [(step, value) for step, value in zip(x, accuracy) if value is not None]
        if points:
            accuracy_axis.plot(*zip(*points), marker="s", linewidth=1.5, color=line.get_color(), label=name)
    dlr_axis.set_ylim(-0.02, 1.02)
    dlr_axis.set_ylabel("D_LR (0 = rich, 1 = lazy)")
    dlr_axis.set_title("Richness (D_LR) and accuracy of each run's checkpoints")
    dlr_axis.legend(fontsize=8, title="run", title_fontsize=8)
    accuracy_axis.set_ylim(-0.02, 1.02)
    accuracy_axis.set_ylabel("accuracy")
    accuracy_axis.set_xlabel(xlabel)
    if tick_labels is not None:
        accuracy_axis.set_xticks(range(1, len(tick_labels) + 1), tick_labels, rotation=15)
    for axis in (dlr_axis, accuracy_axis):
        axis.grid(alpha=0.3)
    return figure


# --- interactive versions for the app (plotly: hover, zoom, legend toggles), beside the PNGs above ---
def _interactive_layout(figure: Any, height: int) -> Any:
    """No title (the app names each plot above it; a plotly title is clipped, not wrapped, on a 390 px phone),
    room at the top for the zoom / PNG toolbar, the legend under the plot."""
    figure.update_layout(
        height=height, margin={"l": 56, "r": 12, "t": 36, "b": 16}, hovermode="closest", template="plotly_white",
        legend={"orientation": "h", "yanchor": "top", "y": -0.12, "x": 0, "title": {"text": ""}},
    )
    return figure


def runs_plotly(runs: dict[str, tuple[Sequence[float], Sequence[float], Sequence[float | None]]],
                xlabel: str = "training step", tick_labels: Sequence[str] | None = None) -> Any:
    """``runs_figure`` as an interactive plotly figure: D_LR above, accuracy below, one coloured line per run."""
    import plotly.graph_objects as go
    from plotly.colors import qualitative
    from plotly.subplots import make_subplots

    figure = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08)
    for index, (name, (x, dlr, accuracy)) in enumerate(runs.items()):
        colour = qualitative.Plotly[index % len(qualitative.Plotly)]
        figure.add_trace(go.Scatter(x=list(x), y=list(dlr), name=name, legendgroup=name, mode="lines+markers",
                                    line={"color": colour, "width": 3},
                                    hovertemplate=f"{name}<br>{xlabel} %{{x}}<br>D_LR %{{y:.4f}}<extra></extra>"), row=1, col=1)
        points = [(step, value) for step, value in zip(x, accuracy) if value is not None]
        if points:
            steps, values = zip(*points)
            figure.add_trace(go.Scatter(x=list(steps), y=list(values), name=name, legendgroup=name, showlegend=False,
                                        mode="lines+markers", marker={"symbol": "square"}, line={"color": colour},
                                        hovertemplate=f"{name}<br>{xlabel} %{{x}}<br>accuracy %{{y:.4f}}<extra></extra>"),
                             row=2, col=1)
    figure.update_yaxes(title_text="D_LR (0 rich, 1 lazy)", range=[-0.02, 1.02], row=1, col=1)
    figure.update_yaxes(title_text="accuracy", range=[-0.02, 1.02], row=2, col=1)
    figure.update_xaxes(title_text=xlabel, row=2, col=1)
    if tick_labels is not None:
        figure.update_xaxes(tickvals=list(range(1, len(tick_labels) + 1)), ticktext=list(tick_labels), row=2, col=1)
    return _interactive_layout(figure, 560)


def profile_plotly(profiles: Sequence[Sequence[dict[str, Any]]], labels: Sequence[str],
                   heads: Sequence[float | None] | None = None) -> Any:
    """``profile_figure`` as an interactive plotly figure: D_LR (and S_init below, when measured) against depth."""
    import plotly.graph_objects as go
    from plotly.colors import qualitative
    from plotly.subplots import make_subplots

    with_s_init = any("s_init" in row for rows in profiles for row in rows)
    figure = make_subplots(rows=2 if with_s_init else 1, cols=1, shared_xaxes=True, vertical_spacing=0.08)
    for index, (rows, label) in enumerate(zip(profiles, labels)):
        colour = qualitative.Plotly[index % len(qualitative.Plotly)]
        names = [row["name"] for row in rows]
        figure.add_trace(go.Scatter(x=names, y=[row["dlr"] for row in rows], name=label, legendgroup=label,
                                    mode="lines+markers", line={"color": colour, "width": 3},
                                    hovertemplate=f"{label}<br>%{{x}}<br>D_LR %{{y:.4f}}<extra></extra>"), row=1, col=1)
        head = heads[index] if heads else None
        if head is not None and rows:
            figure.add_trace(go.Scatter(x=["head"], y=[head], name=f"{label}: final head", legendgroup=label, showlegend=False,
                                        mode="markers", marker={"symbol": "star", "size": 14, "color": colour},
                                        hovertemplate=f"{label}<br>final head<br>D_LR %{{y:.4f}}<extra></extra>"), row=1, col=1)
        points = [(row["name"], row["s_init"]) for row in rows if "s_init" in row]
        if with_s_init and points:
            x, y = zip(*points)
            figure.add_trace(go.Scatter(x=list(x), y=list(y), name=label, legendgroup=label, showlegend=False,
                                        mode="lines+markers", line={"color": colour},
                                        hovertemplate=f"{label}<br>%{{x}}<br>S_init %{{y:.4f}}<extra></extra>"), row=2, col=1)
    figure.update_yaxes(title_text="D_LR (0 rich, 1 lazy)", range=[-0.02, 1.02], row=1, col=1)
    if with_s_init:
        figure.update_yaxes(title_text="S_init (CKA to initial)", range=[-0.02, 1.02], row=2, col=1)
    figure.update_xaxes(title_text="layer (★ = final head)", row=2 if with_s_init else 1, col=1)
    return _interactive_layout(figure, 560 if with_s_init else 400)


def visualisation_plotly(results: Sequence[DLRResult], labels: Sequence[str]) -> Any:
    """``visualisation_figure`` as an interactive plotly figure, one colour per model overlaid in every panel:
    the spectrum, U(k), Q(k) and π_k stacked (one column, so each panel keeps a phone's full width), a shared
    log k axis, and a dotted line at k = C."""
    import plotly.graph_objects as go
    from plotly.colors import qualitative
    from plotly.subplots import make_subplots

    panels = (("ρ_k / ρ_1 (log)", "spectrum"), ("U(k)", "utilisation"), ("Q(k)", "quality"), ("π_k", "pi"))
    figure = make_subplots(rows=len(panels), cols=1, shared_xaxes=True, vertical_spacing=0.035)
    for index, (result, label) in enumerate(zip(results, labels)):
        colour = qualitative.Plotly[index % len(qualitative.Plotly)]
        k = list(range(1, len(result.spectrum) + 1))
        rho = np.asarray(result.spectrum, dtype=float)
        series = {
            "spectrum": np.clip(rho / rho[0], 1e-16, None).tolist() if len(rho) else [],
            "utilisation": result.utilisation, "quality": result.quality, "pi": result.pi,
        }
        name = f"{label} (D_LR {result.dlr:.3f})"
        for row, (axis_title, key) in enumerate(panels, start=1):
            values = series[key]
            if values is None:
                continue
            figure.add_trace(go.Scatter(
                x=k, y=list(values), name=name, legendgroup=name, showlegend=row == 1,
                mode="markers" if key == "pi" else "lines", line={"color": colour, "width": 2}, marker={"color": colour, "size": 5},
                hovertemplate=f"{label}<br>k = %{{x}}<br>{axis_title.split(' ')[0]} = %{{y:.4g}}<extra></extra>",
            ), row=row, col=1)
    num_outputs = results[0].num_outputs if results else None
    for row, (axis_title, key) in enumerate(panels, start=1):
        figure.update_yaxes(title_text=axis_title, row=row, col=1,
                            **({"type": "log", "exponentformat": "power"} if key == "spectrum" else {"range": [-0.02, 1.02]}))
        if num_outputs and results and num_outputs < len(results[0].spectrum):
            figure.add_vline(x=num_outputs, line={"color": "grey", "dash": "dot", "width": 1}, row=row, col=1)
    if not any(result.quality is not None for result in results):
        figure.add_annotation(text="Q(k): no labels", showarrow=False, xref="x3 domain", yref="y3 domain", x=0.5, y=0.5,
                              font={"color": "#555"})
    figure.update_xaxes(type="log")
    figure.update_xaxes(row=len(panels), col=1,
                        title_text=f"eigen-direction k (dotted: k = C = {num_outputs})" if num_outputs else "eigen-direction k")
    return _interactive_layout(figure, 860)
