"""Streaming, mergeable first and second moments in float64.

Partial statistics (batches, processes, GPUs) are pooled with the pairwise update of Chan et al.:
each part's centred scatter is shifted to the pooled mean, ``S = Σ_i S_i + n_i (μ_i − μ)(μ_i − μ)ᵀ``.
The raw form ``Σ xxᵀ − n μμᵀ`` is never used: it cancels catastrophically when the data have a
large mean and a small spread (post-ReLU features, neural collapse).

The same pooling formula serves a local merge (sum over two parts) and a distributed all-reduce
(sum over processes through a caller-supplied sum function), so both are exact to rounding.
"""

from __future__ import annotations

from typing import Callable

import torch

from dlr_hf.errors import ShapeMismatchError

SumFn = Callable[[torch.Tensor], torch.Tensor]
"""Sums a tensor across processes and returns the total on every process (e.g. an all-reduce)."""

_Total = Callable[[Callable[["StreamingMoments"], torch.Tensor]], torch.Tensor]

DTYPE = torch.float64


class StreamingMoments:
    """Count, mean and centred scatter ``Σ (x − μ)(x − μ)ᵀ`` of a stream of d-dimensional rows."""

    def __init__(self, dim: int, device: torch.device | str | None = None) -> None:
        self.dim = dim
        self.count = torch.zeros((), dtype=DTYPE, device=device)
        self.mean = torch.zeros(dim, dtype=DTYPE, device=device)
        self.scatter = torch.zeros(dim, dim, dtype=DTYPE, device=device)

    @property
    def device(self) -> torch.device:
        return self.mean.device

    def update(self, rows: torch.Tensor) -> None:
        """Add a batch (n×d), centred on its own mean before its scatter is formed."""
        if rows.ndim != 2 or rows.shape[1] != self.dim:
            raise ShapeMismatchError(
                f"expected a batch of shape (n, {self.dim}), got {tuple(rows.shape)}"
            )
        if rows.shape[0] == 0:
            return
        rows = rows.to(device=self.device, dtype=DTYPE)
        # Chan's pairwise update, in place: S += S_batch + (n_a n_b / n) δδᵀ, δ = μ_batch − μ.
        batch_count = rows.shape[0]
        batch_mean = rows.mean(dim=0)
        centred = rows - batch_mean
        count = self.count + batch_count
        delta = batch_mean - self.mean
        self.scatter.addmm_(centred.T, centred)
        self.scatter.addr_(delta, delta, alpha=float(self.count * batch_count / count))
        self.mean = self.mean + delta * (batch_count / count)
        self.count = count

    def merge(self, other: "StreamingMoments") -> None:
        """Pool another part into this one (Chan et al.)."""
        if other.dim != self.dim:
            raise ShapeMismatchError(f"cannot merge moments of dimension {other.dim} into {self.dim}")
        other_on_device = other.to(self.device)
        self._pool(lambda field: field(self) + field(other_on_device))

    def all_reduce(self, sum_fn: SumFn) -> None:
        """Pool this part with the same-shaped parts of every other process; all end up equal."""
        self._pool(lambda field: sum_fn(field(self)))

    def _pool(self, total: _Total) -> None:
        count = total(lambda part: part.count)
        if count == 0:
            return
        mean = total(lambda part: part.count * part.mean) / count

        def shifted_scatter(part: StreamingMoments) -> torch.Tensor:
            offset = part.mean - mean
            return part.scatter + part.count * torch.outer(offset, offset)

        scatter = total(shifted_scatter)
        self.count, self.mean, self.scatter = count, mean, scatter

    def to(self, device: torch.device | str) -> "StreamingMoments":
        moved = StreamingMoments.__new__(StreamingMoments)
        moved.dim = self.dim
        moved.count = self.count.to(device)
        moved.mean = self.mean.to(device)
        moved.scatter = self.scatter.to(device)
        return moved

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"count": self.count, "mean": self.mean, "scatter": self.scatter}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        mean = state["mean"]
        if mean.shape != (self.dim,):
            raise ShapeMismatchError(f"state of dimension {mean.shape[0]} loaded into {self.dim}")
        self.count = state["count"].to(self.device, DTYPE)
        self.mean = mean.to(self.device, DTYPE)
        self.scatter = state["scatter"].to(self.device, DTYPE)


class ClassMoments:
    """Per-class counts and means of a stream of labelled rows (for NC1 and the quality curve).

    Labels are class indices in ``[0, num_classes)``; negative labels (transformers' ``-100``) are
    ignored. ``num_classes`` grows on demand for local use; give it up front when parts are
    all-reduced across processes, since the reduced tensors must have equal shapes.
    """

    def __init__(self, dim: int, num_classes: int = 0, device: torch.device | str | None = None) -> None:
        self.dim = dim
        self.counts = torch.zeros(num_classes, dtype=DTYPE, device=device)
        self.means = torch.zeros(num_classes, dim, dtype=DTYPE, device=device)

    @property
    def num_classes(self) -> int:
        return self.counts.shape[0]

    def _grow(self, num_classes: int) -> None:
        extra = num_classes - self.num_classes
        if extra > 0:
            device = self.counts.device
            self.counts = torch.cat([self.counts, torch.zeros(extra, dtype=DTYPE, device=device)])
            self.means = torch.cat([self.means, torch.zeros(extra, self.dim, dtype=DTYPE, device=device)])

    def update(self, rows: torch.Tensor, labels: torch.Tensor) -> None:
        keep = labels >= 0
        rows = rows[keep].to(self.counts.device, DTYPE)
        labels = labels[keep].to(self.counts.device, torch.long)
        if labels.numel() == 0:
            return
        self._grow(int(labels.max()) + 1)
        batch_counts = torch.bincount(labels, minlength=self.num_classes).to(DTYPE)
        batch_sums = torch.zeros_like(self.means).index_add_(0, labels, rows)
        self._pool_sums(self.counts + batch_counts, self.counts[:, None] * self.means + batch_sums)

    def merge(self, other: "ClassMoments") -> None:
        self._grow(other.num_classes)
        counts = torch.zeros_like(self.counts)
        sums = torch.zeros_like(self.means)
        counts[: other.num_classes] = other.counts.to(counts.device)
        sums[: other.num_classes] = other.counts[:, None].to(sums.device) * other.means.to(sums.device)
        self._pool_sums(self.counts + counts, self.counts[:, None] * self.means + sums)

    def all_reduce(self, sum_fn: SumFn) -> None:
        self._pool_sums(sum_fn(self.counts), sum_fn(self.counts[:, None] * self.means))

    def _pool_sums(self, counts: torch.Tensor, sums: torch.Tensor) -> None:
        self.counts = counts
        self.means = sums / counts.clamp(min=1)[:, None]

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"counts": self.counts, "means": self.means}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.counts = state["counts"].to(self.counts.device, DTYPE)
        self.means = state["means"].to(self.counts.device, DTYPE)
