"""What the inputs' floating-point precision can resolve: absolute floors for "zero" variance.

A scatter computed from constant features of 0.1 is ~1e-33, not 0: rounding leaves noise. Whether
a variance is real or rounding depends on the data's scale and on the precision the values arrived
in (a float32 feature carries up to ~6e-8 relative error before any float64 accumulation). An
eigenvalue of an n-sample scatter counts only above ``n · (resolution · scale)²``, with ``scale²``
the largest per-coordinate mean square ``max_j (μ_j² + S_jj/n)`` and ``resolution`` the larger of
a few ulps of the coarsest input precision and the float64 accumulation error.

Which precisions were seen is kept as per-dtype row counts, so it merges and all-reduces by sums.
"""

from __future__ import annotations

import torch

PRECISIONS = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
"""Slots of a precision-count vector; integer and other inputs count as float64 (exact here)."""

INPUT_ULPS = 4.0
"""Variation within a few ulps of the inputs' own precision is indistinguishable from rounding."""

ACCUMULATION_ULPS = 64.0
"""float64 rounding of means, Chan's merges and pairwise sums over up to ~1e12 rows stays below this."""

MAX_MAGNITUDE = 1e60
"""Largest |value| streamed: scatters reach n·x², and their squares (Frobenius norms, eigensolvers)
must stay below float64's 1.8e308 for any n up to 1e12."""


def precision_slot(dtype: torch.dtype) -> int:
    """Index of ``dtype`` in ``PRECISIONS`` (float64 for integers and anything exact)."""
    return PRECISIONS.index(dtype) if dtype in PRECISIONS else 0


def coarsest_eps(counts: torch.Tensor) -> float:
    """Machine epsilon of the coarsest precision with any rows in a per-slot count vector."""
    seen = [torch.finfo(dtype).eps for dtype, count in zip(PRECISIONS, counts.tolist()) if count > 0]
    return max(seen, default=torch.finfo(torch.float64).eps)


def coordinate_scale(mean: torch.Tensor, scatter: torch.Tensor, num_samples: float) -> float:
    """``max_j (μ_j² + S_jj/n)``: the largest per-coordinate mean square, the size rounding scales with."""
    return float((mean**2 + torch.diagonal(scatter) / num_samples).max())


def rounding_floor(num_samples: float, eps: float, scale: float, gain: float = 1.0) -> float:
    """Eigenvalue of an n-sample scatter below which a direction is rounding noise.

    ``gain`` scales the noise through a linear map (``‖W‖₂`` for outputs ``ΦWᵀ``).
    """
    resolution = max(INPUT_ULPS * eps, ACCUMULATION_ULPS * torch.finfo(torch.float64).eps)
    return num_samples * (resolution * gain) ** 2 * scale
