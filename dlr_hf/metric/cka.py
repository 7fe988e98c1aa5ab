"""Streaming linear CKA between two feature sets on the same inputs (S_init, SPEC §4)."""

from __future__ import annotations

from typing import Any

import torch

from dlr_hf.errors import ShapeMismatchError, TooFewSamplesError, UndefinedDLRError
from dlr_hf.metric.dlr import _as_matrix, _check_statistics, _check_values
from dlr_hf.metric.moments import DTYPE, StreamingMoments
from dlr_hf.metric.precision import PRECISIONS, coarsest_eps, coordinate_scale, precision_slot, rounding_floor
from dlr_hf.metric.state import MergeableState


class LinearCKAAccumulator(MergeableState):
    """``CKA(A, B) = ‖A_cᵀB_c‖²_F / (‖A_cᵀA_c‖_F ‖B_cᵀB_c‖_F)`` from the joint moments of ``[A, B]``.

    Typical use: A = features of the initial model, B = features of the current one, row i of
    both from the same input.
    """

    def __init__(self, device: torch.device | str | None = None) -> None:
        super().__init__(device)
        self.dims: tuple[int, int] | None = None
        self.moments: StreamingMoments | None = None
        self.add_state("precision", torch.zeros(len(PRECISIONS)))

    def _initialise(self, dims: tuple[int, int]) -> None:
        self.dims = dims
        self.precision = self.precision.to(self.device)
        self.add_child("moments", lambda: StreamingMoments(sum(dims), self.device))
        self.child("moments")

    def signature(self) -> dict[str, int]:
        a, b = self.dims or (0, 0)
        return {"dim_a": a, "dim_b": b}

    def config(self) -> dict[str, Any]:
        return {"dims": None if self.dims is None else list(self.dims)}

    def _apply_config(self, config: dict[str, Any]) -> None:
        self._child_factories.clear()
        self.dims, self.moments = None, None
        if config.get("dims") is not None:
            self._initialise(tuple(config["dims"]))

    def _adopt_shape(self, other: "LinearCKAAccumulator") -> None:
        if self.dims is None and other.dims is not None:
            if self._device is None:
                self._device = other.device
            self._initialise(other.dims)

    def update(self, features_a: Any, features_b: Any) -> None:
        a = _as_matrix(features_a, "features")
        b = _as_matrix(features_b, "features")
        if a.shape[0] != b.shape[0]:
            raise ShapeMismatchError(f"the two feature sets have {a.shape[0]} and {b.shape[0]} rows")
        _check_values(a, b)
        if self.moments is None:
            if self._device is None:
                self._device = a.device
            self._initialise((a.shape[1], b.shape[1]))
        if (a.shape[1], b.shape[1]) != self.dims:
            raise ShapeMismatchError(f"feature dimensions {(a.shape[1], b.shape[1])} differ from earlier {self.dims}")
        self.precision[precision_slot(a.dtype)] += a.shape[0]
        self.precision[precision_slot(b.dtype)] += b.shape[0]
        device = self.device
        self.moments.update(torch.cat([a.to(device, DTYPE), b.to(device, DTYPE)], dim=1))

    @property
    def num_samples(self) -> int:
        return 0 if self.moments is None else int(self.moments.count)

    def compute(self) -> float:
        n = self.num_samples
        if n < 2:
            raise TooFewSamplesError(f"linear CKA needs at least 2 samples, got {n}")
        p = self.dims[0]
        scatter, mean = self.moments.scatter, self.moments.mean
        _check_statistics(scatter, "feature")
        eps = coarsest_eps(self.precision)
        for block, part in ((scatter[:p, :p], mean[:p]), (scatter[p:, p:], mean[p:])):
            # Every coordinate's variance within rounding: the set is constant up to rounding.
            if float(torch.diagonal(block).max()) <= rounding_floor(n, eps, coordinate_scale(part, block, n)):
                raise UndefinedDLRError(
                    "one feature set is constant over all samples (up to rounding), so linear CKA is undefined"
                )
        norm_a = torch.linalg.matrix_norm(scatter[:p, :p])
        norm_b = torch.linalg.matrix_norm(scatter[p:, p:])
        return float(torch.linalg.matrix_norm(scatter[:p, p:]) ** 2 / (norm_a * norm_b))
