"""Shared helpers for the small-scale reproductions (public dlr_hf API only).

Every experiment script imports this module from its own folder (``python
benchmarks/reproduce/expN_*.py`` puts that folder on ``sys.path``).

* data: scikit-learn's digits through ``dlr_hf.engine.demo.digits_dataset`` (the same 80/20
  split the demo and the callback tests use), as tensors;
* measuring plain-torch models: hook the input and output of the final ``nn.Linear`` and stream
  them through ``DLRAccumulator`` (the public API), S_init via ``LinearCKAAccumulator``;
* writing each table as markdown + JSON under ``results/``.
"""

from __future__ import annotations

import json
import os
import platform
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import torch
from torch import nn

from dlr_hf.metric import DLRAccumulator, DLRResult, LinearCKAAccumulator, parameter_change, parameter_norm

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def setup(seed: int = 0) -> None:
    """One thread (tiny models run fastest and deterministically on one), fixed seeds."""
    torch.set_num_threads(1)
    seed_everything(seed)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# -- data ----------------------------------------------------------------------------------------
@dataclass
class Digits:
    """Digits as tensors: ``pixels`` (n×3×8×8, ViT processor output) and ``flat`` (n×64, in [−1, 1])."""

    train_pixels: torch.Tensor
    train_flat: torch.Tensor
    train_labels: torch.Tensor
    test_pixels: torch.Tensor
    test_flat: torch.Tensor
    test_labels: torch.Tensor


_DIGITS: Digits | None = None


def digits() -> Digits:
    global _DIGITS
    if _DIGITS is None:
        from dlr_hf.engine.demo import digits_dataset, pixel_values

        data = digits_dataset()
        train_pixels, test_pixels = pixel_values(data["train"]), pixel_values(data["test"])
        _DIGITS = Digits(
            train_pixels=train_pixels,
            train_flat=train_pixels[:, 0].reshape(len(train_pixels), -1).contiguous(),
            train_labels=torch.tensor(data["train"]["label"]),
            test_pixels=test_pixels,
            test_flat=test_pixels[:, 0].reshape(len(test_pixels), -1).contiguous(),
            test_labels=torch.tensor(data["test"]["label"]),
        )
    return _DIGITS


# -- measuring plain-torch models ----------------------------------------------------------------
@dataclass
class Measurement:
    result: DLRResult | None
    features: torch.Tensor  # the head's input on every measured example, in order (float64)
    logits: torch.Tensor
    accumulator: DLRAccumulator


@torch.no_grad()
def measure(
    model: nn.Module,
    head: nn.Linear,
    inputs: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    batch_size: int = 512,
    forward=None,
    compute: bool = True,
) -> Measurement:
    """D_LR of ``model`` on ``inputs``: features = input of ``head``, outputs = its output (SPEC §1).

    Streams batch by batch through ``DLRAccumulator`` in eval mode. ``forward(model, batch)``
    overrides ``model(batch)``; ``compute=False`` only collects the features. The hook sees whatever positions the head is applied to, so
    models that apply the head to several positions must apply it only to the measured one.
    """
    captured: dict[str, torch.Tensor] = {}

    def hook(module, args, output):
        captured["features"] = args[0].detach()
        captured["logits"] = output.detach()

    was_training = model.training
    model.eval()
    handle = head.register_forward_hook(hook)
    accumulator = DLRAccumulator()
    features, logits = [], []
    try:
        for start in range(0, len(inputs), batch_size):
            batch = inputs[start : start + batch_size]
            (forward or (lambda m, b: m(b)))(model, batch)
            phi = captured["features"].reshape(-1, head.in_features)
            out = captured["logits"].reshape(-1, head.out_features)
            accumulator.update(phi, out, None if labels is None else labels[start : start + batch_size])
            features.append(phi.double())
            logits.append(out.double())
    finally:
        handle.remove()
        model.train(was_training)
    return Measurement(accumulator.compute() if compute else None, torch.cat(features), torch.cat(logits), accumulator)


def s_init(initial_features: torch.Tensor, features: torch.Tensor, batch_size: int = 512) -> float:
    """Linear CKA between the initial and the current features on the same inputs (SPEC §4)."""
    cka = LinearCKAAccumulator()
    for start in range(0, len(features), batch_size):
        cka.update(initial_features[start : start + batch_size], features[start : start + batch_size])
    return cka.compute()


def baselines(model: nn.Module, initial_parameters: dict[str, torch.Tensor] | None = None) -> dict[str, float]:
    row = {"param_norm_sq": parameter_norm(model)}
    if initial_parameters is not None:
        row["param_change"] = parameter_change(model, initial_parameters)
    return row


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float((logits.argmax(-1) == labels).double().mean())


# -- output --------------------------------------------------------------------------------------
class Timer:
    def __init__(self) -> None:
        self.start = time.perf_counter()

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.start


def fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        value = float(value)
        if value == 0:
            return "0"
        if value == round(value, 2) and abs(value) < 1e4:
            return f"{value:g}"
        if abs(value) >= 1e4 or abs(value) < 1e-3:
            return f"{value:.3g}"
        return f"{value:.4f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(fmt(row.get(column)) for column in columns) + " |")
    return "\n".join(lines)


def write_results(name: str, title: str, rows: Sequence[dict[str, Any]], columns: Sequence[str], *,
                  notes: str = "", extra: dict[str, Any] | None = None, runtime_s: float | None = None) -> str:
    """Print the table and write ``results/<name>.md`` and ``results/<name>.json``; returns the markdown."""
    import transformers

    import dlr_hf

    RESULTS.mkdir(parents=True, exist_ok=True)
    table = markdown_table(rows, columns)
    text = f"# {title}\n\n{table}\n"
    if notes:
        text += f"\n{notes.strip()}\n"
    if runtime_s is not None:
        text += f"\nRuntime: {runtime_s:.0f} s (1 thread, torch {torch.__version__}).\n"
    (RESULTS / f"{name}.md").write_text(text)
    payload = {
        "experiment": name,
        "title": title,
        "rows": list(rows),
        "runtime_s": runtime_s,
        "versions": {"dlr_hf": dlr_hf.__version__, "torch": torch.__version__,
                     "transformers": transformers.__version__, "python": platform.python_version()},
        **(extra or {}),
    }
    (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=2, default=float) + "\n")
    print(text)
    return text


def savefig(figure, name: str) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.png"
    figure.savefig(path, dpi=110)
    print(f"plot: {path.relative_to(HERE.parent.parent)}")
    return path


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rank correlation (no ties expected)."""
    rx = np.argsort(np.argsort(np.asarray(x, dtype=float)))
    ry = np.argsort(np.argsort(np.asarray(y, dtype=float)))
    return float(np.corrcoef(rx, ry)[0, 1])


# -- plain-torch models and training ---------------------------------------------------------------
class MLP(nn.Module):
    """``depth`` hidden ReLU layers (optionally BatchNorm before each ReLU), then the linear ``head``."""

    def __init__(self, sizes: Sequence[int], num_classes: int = 10, batch_norm: bool = False) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
            layers.append(nn.Linear(fan_in, fan_out))
            if batch_norm:
                layers.append(nn.BatchNorm1d(fan_out))
            layers.append(nn.ReLU())
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(sizes[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def train_classifier(model: nn.Module, parameters, x: torch.Tensor, y: torch.Tensor, *, steps: int, lr: float,
                     batch_size: int = 64, optimiser: str = "adam", weight_decay: float = 0.0, seed: int = 0,
                     log_every: int | None = None, on_log=None, loss: str = "ce") -> None:
    """Cross-entropy (or ``loss="mse"`` on one-hot targets), mini-batches drawn by a seeded generator; ``on_log(step)`` every ``log_every`` steps."""
    parameters = list(parameters)
    if optimiser == "adam":
        opt = torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay)
    else:
        opt = torch.optim.SGD(parameters, lr=lr, momentum=0.9, weight_decay=weight_decay)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    order = torch.randperm(len(y), generator=generator)
    position = 0
    for step in range(1, steps + 1):
        if position + batch_size > len(y):
            order, position = torch.randperm(len(y), generator=generator), 0
        batch = order[position : position + batch_size]
        position += batch_size
        output = model(x[batch])
        if loss == "mse":
            value = 0.5 * (output - nn.functional.one_hot(y[batch], output.shape[-1]).to(output.dtype)).pow(2).sum(-1).mean()
        else:
            value = nn.functional.cross_entropy(output, y[batch])
        opt.zero_grad()
        value.backward()
        opt.step()
        if log_every and on_log is not None and step % log_every == 0:
            on_log(step)
            model.train()
    model.eval()


def train_full_batch(model: nn.Module, optimiser: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, *,
                     steps: int, every: int, record, clip: float | None = None) -> None:
    """Full-batch cross-entropy steps (the grokking set-ups); ``record(step, last loss)`` at step 0, every
    ``every`` steps and after the last, the model back in training mode after each record."""
    model.train()
    loss_value = float("nan")
    for step in range(steps + 1):
        if step % every == 0:
            record(step, loss_value)
            model.train()
        if step == steps:
            break
        loss = nn.functional.cross_entropy(model(x), y)
        optimiser.zero_grad()
        loss.backward()
        if clip:
            nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimiser.step()
        loss_value = float(loss.detach())
