"""Label statistics over the labelled rows only (NC1, Q(k), accuracy, class counts; SPEC §3–§4).

Only a label that is an integer in ``[0, C)`` makes its row *labelled*. Negative integers
(transformers' −100, a dataset's −1) mean "unlabelled"; labels ≥ C, non-integers and NaN are not
used either, and are counted by reason so the report can say what was dropped. NC1 and Q(k)
equal their values on the labelled rows alone: the labelled rows' feature moments are kept apart
from those of all rows — but only from the first row without a usable label on. Until then they
*are* the all-rows moments (``DLRAccumulator.moments``), so cleanly labelled data stream one p×p
scatter, not two (half the memory and half the scatter updates).
"""

from __future__ import annotations

from typing import Any

import torch

from dlr_hf.metric.moments import ClassMoments, StreamingMoments
from dlr_hf.metric.state import DTYPE, MergeableState

DROP_REASONS = ("unlabelled", "out_of_range", "not_integer")
"""Why a row's label was not used: negative (unlabelled), ≥ C, or not an integer (incl. NaN/inf)."""


def classify_labels(labels: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(valid mask, class indices, per-reason drop counts)`` for a 1-D label tensor.

    Indices are only meaningful where the mask is set; nothing here allocates by label value.
    """
    if labels.dtype == torch.bool:
        labels = labels.long()
    if labels.is_floating_point() or labels.is_complex():
        values = labels.real.to(DTYPE) if labels.is_complex() else labels.to(DTYPE)
        integer = torch.isfinite(values) & (values == values.round())
        if labels.is_complex():
            integer &= labels.imag == 0
    else:
        values = labels.to(DTYPE)
        integer = torch.ones_like(values, dtype=torch.bool)
    negative = integer & (values < 0)
    too_large = integer & (values >= num_classes)
    valid = integer & ~negative & ~too_large
    indices = torch.where(valid, values, torch.zeros_like(values)).long()
    dropped = torch.stack([negative.sum(), too_large.sum(), (~integer).sum()]).to(DTYPE)
    return valid, indices, dropped


class LabelStatistics(MergeableState):
    """Everything the label-based baselines need, over labelled rows only.

    ``features`` (the labelled rows' feature moments) is None while every row streamed so far had a
    usable label: the labelled moments are then the all-rows moments the caller holds
    (``labelled_moments(all_rows)``). ``keep_apart(all_rows)`` starts keeping them separately.
    """

    def __init__(self, dim: int, num_classes: int, device: torch.device | str | None = None) -> None:
        super().__init__(device)
        self.dim, self.num_classes = dim, num_classes
        self.add_state("dropped", torch.zeros(len(DROP_REASONS)))
        self.add_state("correct", torch.zeros(()))
        self.add_state("scored", torch.zeros(()))  # labelled rows that had logits to score
        self.add_child("classes", lambda: ClassMoments(dim, num_classes, self.device))
        self.add_child("features", lambda: StreamingMoments(dim, self.device))

    def config(self) -> dict[str, Any]:
        return {"dim": self.dim, "num_classes": self.num_classes}

    @property
    def kept_apart(self) -> bool:
        """Whether the labelled rows' moments are held separately (some row had no usable label)."""
        return self.features is not None

    def keep_apart(self, all_rows: StreamingMoments | None) -> None:
        """Hold the labelled rows' moments separately from now on, starting from ``all_rows``'s leading
        ``dim`` coordinates (every row so far was labelled; None or empty: no row so far)."""
        if self.features is None:
            self.features = (
                all_rows.leading(self.dim).copy() if all_rows is not None and all_rows.count > 0
                else StreamingMoments(self.dim, self.device)
            )

    def labelled_moments(self, all_rows: StreamingMoments) -> StreamingMoments:
        """The labelled rows' feature moments: held apart, or (every row labelled) ``all_rows``'s leading part."""
        return self.features if self.features is not None else all_rows.leading(self.dim)

    def update(self, features: torch.Tensor, logits: torch.Tensor | None, labels: torch.Tensor,
               all_rows: StreamingMoments | None) -> None:
        """Add a batch; ``all_rows``: the caller's all-rows moments *before* this batch is added to them."""
        valid, indices, dropped = classify_labels(labels.to(self.device), self.num_classes)
        if not bool(valid.all()):
            self.keep_apart(all_rows)
        self.dropped += dropped
        rows, indices = features[valid], indices[valid]
        self.child("classes").update(rows, indices)
        if self.features is not None:
            self.features.update(rows)
        if logits is not None and logits.shape[1] > 1:
            predictions = logits.to(self.device).argmax(dim=1)[valid]
            self.correct += (predictions == indices).sum().to(DTYPE)
            self.scored += float(indices.numel())

    @property
    def num_labelled(self) -> int:
        return 0 if self.classes is None else int(self.classes.counts.sum())

    def dropped_counts(self) -> dict[str, int]:
        return {reason: int(count) for reason, count in zip(DROP_REASONS, self.dropped.tolist())}
