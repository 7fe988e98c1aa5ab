"""Streaming, mergeable first and second moments in float64.

Partial statistics (batches, processes, GPUs) are pooled with the pairwise update of Chan et al.:
each part's centred scatter is shifted to the pooled mean, ``S = Σ_i S_i + n_i (μ_i − μ)(μ_i − μ)ᵀ``.
The raw form ``Σ xxᵀ − n μμᵀ`` is never used: it cancels catastrophically when the data have a
large mean and a small spread (post-ReLU features, neural collapse).

The same pooling formula serves a local merge (sum over two parts) and a distributed all-reduce
(sum over processes through a caller-supplied sum function), so both are exact to rounding.
"""

from __future__ import annotations

import torch

from dlr_hf.errors import ShapeMismatchError
from dlr_hf.metric.state import DTYPE, MergeableState, SumFn, Total

__all__ = ["DTYPE", "ClassMoments", "StreamingMoments", "SumFn"]


class StreamingMoments(MergeableState):
    """Count, mean and centred scatter ``Σ (x − μ)(x − μ)ᵀ`` of a stream of d-dimensional rows."""

    def __init__(self, dim: int, device: torch.device | str | None = None) -> None:
        super().__init__(device)
        self.dim = dim
        self.add_state("count", torch.zeros(()))
        self.add_state("mean", torch.zeros(dim))
        self.add_state("scatter", torch.zeros(dim, dim))

    def config(self) -> dict[str, int]:
        return {"dim": self.dim}

    def update(self, rows: torch.Tensor) -> None:
        """Add a batch (n×d), centred on its own mean before its scatter is formed."""
        if rows.ndim != 2 or rows.shape[1] != self.dim:
            raise ShapeMismatchError(f"expected a batch of shape (n, {self.dim}), got {tuple(rows.shape)}")
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

    def leading(self, dim: int) -> StreamingMoments:
        """The moments of the first ``dim`` coordinates, as views of this statistic's tensors (no copy:
        later updates of this one show through; ``.copy()`` it to keep it apart)."""
        part = StreamingMoments(0, self.device)
        part.dim, part.count, part.mean, part.scatter = dim, self.count, self.mean[:dim], self.scatter[:dim, :dim]
        return part

    def copy(self) -> StreamingMoments:
        """An independent copy (its own tensors)."""
        twin = StreamingMoments(0, self.device)
        twin.dim = self.dim
        twin.count, twin.mean, twin.scatter = self.count.clone(), self.mean.clone(), self.scatter.clone()
        return twin

    def _pool(self, total: Total) -> None:
        count = total(lambda part: part.count)
        if count == 0:
            return
        mean = total(lambda part: part.count * part.mean) / count

        def shifted_scatter(part: StreamingMoments) -> torch.Tensor:
            offset = part.mean - mean
            return part.scatter + part.count * torch.outer(offset, offset)

        self.scatter = total(shifted_scatter)
        self.count, self.mean = count, mean


class ClassMoments(MergeableState):
    """Per-class counts and feature sums of labelled rows, for exactly ``num_classes`` classes.

    Sized once: labels are validated upstream to lie in ``[0, num_classes)``, so memory never
    depends on a label's value. Sums (not means) are kept, so pooling is a plain sum.
    """

    def __init__(self, dim: int, num_classes: int, device: torch.device | str | None = None) -> None:
        super().__init__(device)
        self.dim = dim
        self.num_classes = num_classes
        self.add_state("counts", torch.zeros(num_classes))
        self.add_state("sums", torch.zeros(num_classes, dim))

    def config(self) -> dict[str, int]:
        return {"dim": self.dim, "num_classes": self.num_classes}

    def update(self, rows: torch.Tensor, labels: torch.Tensor) -> None:
        """Add rows whose labels are class indices in ``[0, num_classes)`` (checked by the caller)."""
        if labels.numel() == 0:
            return
        labels = labels.to(self.device, torch.long)
        self.counts += torch.bincount(labels, minlength=self.num_classes).to(DTYPE)
        self.sums.index_add_(0, labels, rows.to(self.device, DTYPE))

    @property
    def means(self) -> torch.Tensor:
        """Class means (zero for classes without samples)."""
        return self.sums / self.counts.clamp(min=1)[:, None]
