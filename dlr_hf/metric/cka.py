"""Streaming linear CKA between two feature sets on the same inputs (S_init, SPEC §4)."""

from __future__ import annotations

from typing import Any

import torch

from dlr_hf.errors import ShapeMismatchError, TooFewSamplesError, UndefinedDLRError
from dlr_hf.metric.dlr import _as_matrix
from dlr_hf.metric.moments import StreamingMoments, SumFn


class LinearCKAAccumulator:
    """``CKA(A, B) = ‖A_cᵀB_c‖²_F / (‖A_cᵀA_c‖_F ‖B_cᵀB_c‖_F)`` from the joint moments of ``[A, B]``.

    Typical use: A = features of the initial model, B = features of the current one, row i of
    both from the same input.
    """

    def __init__(self, device: torch.device | str | None = None) -> None:
        self.device = device
        self.dims: tuple[int, int] | None = None
        self.moments: StreamingMoments | None = None

    def update(self, features_a: Any, features_b: Any) -> None:
        a = _as_matrix(features_a, "features")
        b = _as_matrix(features_b, "features")
        if a.shape[0] != b.shape[0]:
            raise ShapeMismatchError(f"the two feature sets have {a.shape[0]} and {b.shape[0]} rows")
        if self.moments is None:
            self.dims = (a.shape[1], b.shape[1])
            self.moments = StreamingMoments(sum(self.dims), self.device or a.device)
        if (a.shape[1], b.shape[1]) != self.dims:
            raise ShapeMismatchError(f"feature dimensions {(a.shape[1], b.shape[1])} differ from earlier {self.dims}")
        device = self.moments.device
        self.moments.update(torch.cat([a.to(device, torch.float64), b.to(device, torch.float64)], dim=1))

    def merge(self, other: "LinearCKAAccumulator") -> None:
        if other.moments is None:
            return
        if self.moments is None:
            self.dims, self.moments = other.dims, other.moments.to(other.moments.device)
            return
        self.moments.merge(other.moments)

    def all_reduce(self, sum_fn: SumFn) -> None:
        """Collective: every process calls it, after at least one batch each."""
        if self.moments is None:
            raise TooFewSamplesError("this process saw no samples; give every process at least one batch")
        self.moments.all_reduce(sum_fn)

    @property
    def num_samples(self) -> int:
        return 0 if self.moments is None else int(self.moments.count)

    def state_dict(self) -> dict[str, Any]:
        return {"dims": self.dims, "moments": None if self.moments is None else self.moments.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.dims = None if state["dims"] is None else tuple(state["dims"])
        self.moments = None
        if state["moments"] is not None:
            self.moments = StreamingMoments(sum(self.dims), self.device or state["moments"]["mean"].device)
            self.moments.load_state_dict(state["moments"])

    def compute(self) -> float:
        if self.num_samples < 2:
            raise TooFewSamplesError(f"linear CKA needs at least 2 samples, got {self.num_samples}")
        p = self.dims[0]
        scatter = self.moments.scatter
        norm_a = torch.linalg.matrix_norm(scatter[:p, :p])
        norm_b = torch.linalg.matrix_norm(scatter[p:, p:])
        if norm_a == 0 or norm_b == 0:
            raise UndefinedDLRError("one feature set is constant over all samples, so linear CKA is undefined")
        return float(torch.linalg.matrix_norm(scatter[:p, p:]) ** 2 / (norm_a * norm_b))
