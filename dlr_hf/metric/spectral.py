"""From second moments to D_LR and its eigen-visualisations (SPEC §2–§3), in float64.

Everything is expressed through two p×p matrices:

* ``S = Φ_cᵀΦ_c`` — the centred feature scatter, eigendecomposed as ``S = V diag(λ) Vᵀ``
  (``λ = n·ρ``);
* ``G = Φ_cᵀ P_Y Φ_c`` — the part of the scatter inside the span of the learned function.

Then ``‖P_Y Φ_c‖²_F = tr G``, ``π_k = v_kᵀ G v_k / λ_k`` and ``CKA = tr G / (‖S‖_F √r)``. ``G`` is
obtained either from streamed output moments (``S_ΦY``, ``S_YY``) or, when the head weight ``W`` is
known, from ``S`` and ``WᵀW`` alone — O(p²C + p³) and memory O(p²) whatever the number of outputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class FeatureSpectrum:
    """Eigendecomposition of the feature scatter, descending, with its numerical rank."""

    eigenvalues: torch.Tensor  # λ_k ≥ 0, descending (scatter, not covariance)
    eigenvectors: torch.Tensor  # columns v_k
    rank: int

    @classmethod
    def of(cls, scatter: torch.Tensor, rtol: float, floor: float = 0.0) -> "FeatureSpectrum":
        """Eigendecompose ``scatter``; its rank counts eigenvalues above ``rtol²·λ_max`` and ``floor``."""
        eigenvalues, eigenvectors = torch.linalg.eigh(scatter)
        eigenvalues = eigenvalues.flip(0).clamp(min=0)
        eigenvectors = eigenvectors.flip(1)
        return cls(eigenvalues, eigenvectors, numerical_rank(eigenvalues, rtol, floor))


def numerical_rank(squared_singular_values: torch.Tensor, rtol: float, floor: float = 0.0) -> int:
    """Rank with singular values ``σ > rtol·σ_max`` and ``σ² > floor``, given ``σ²`` (Gram eigenvalues).

    ``floor`` is absolute (rounding noise of the inputs, see ``precision.rounding_floor``): without
    it, a matrix that is zero up to rounding has full relative rank.
    """
    top = squared_singular_values.max() if squared_singular_values.numel() else 0.0
    if top <= 0:
        return 0
    return int((squared_singular_values > max((rtol**2) * float(top), floor)).sum())


def projected_scatter_from_moments(
    feature_output_scatter: torch.Tensor, output_scatter: torch.Tensor, rtol: float, floor: float = 0.0
) -> tuple[torch.Tensor, int]:
    """``G = S_ΦY S_YY⁺ S_ΦYᵀ`` and ``r = rank(Y_c)``, the pseudo-inverse cut at ``rtol`` and ``floor``."""
    values, vectors = torch.linalg.eigh(output_scatter)
    rank = numerical_rank(values.clamp(min=0), rtol, floor)
    kept = values.argsort(descending=True)[:rank]
    whitened = feature_output_scatter @ (vectors[:, kept] / values[kept].sqrt())
    return whitened @ whitened.T, rank


def projected_scatter_from_head(
    spectrum: FeatureSpectrum, head_gram: torch.Tensor, rtol: float, floor: float = 0.0
) -> tuple[torch.Tensor, int]:
    """``G`` and ``r`` for ``Y_c = Φ_c Wᵀ`` from ``S`` and ``WᵀW`` only.

    With ``Φ_c = A Λ^½ Vᵀ`` (A orthonormal), ``Y_c = A M`` with ``M = Λ^½ VᵀWᵀ``, so ``P_Y = A P_M Aᵀ``,
    ``r = rank(M)`` and ``G = V Λ^½ P_M Λ^½ Vᵀ``; ``M Mᵀ = Λ^½ (VᵀWᵀWV) Λ^½``. Only the feature
    rank's directions are kept: the others carry rounding noise, which a head reading them would
    otherwise turn into rank.
    """
    k = spectrum.rank
    root = spectrum.eigenvalues[:k].sqrt()
    v = spectrum.eigenvectors[:, :k]
    output_gram = root[:, None] * (v.T @ head_gram @ v) * root[None, :]
    values, vectors = torch.linalg.eigh(output_gram)
    rank = numerical_rank(values.clamp(min=0), rtol, floor)
    kept = vectors[:, values.argsort(descending=True)[:rank]]
    basis = v @ (root[:, None] * kept)  # V Λ^½ P_M-basis
    return basis @ basis.T, rank


def capture_per_direction(spectrum: FeatureSpectrum, projected_scatter: torch.Tensor) -> torch.Tensor:
    """``π_k = ‖P_Y e_k‖²``: how much of each eigenfunction the learned function uses (0 past the rank)."""
    v = spectrum.eigenvectors[:, : spectrum.rank]
    captured = (v * (projected_scatter @ v)).sum(dim=0) / spectrum.eigenvalues[: spectrum.rank]
    pi = torch.zeros_like(spectrum.eigenvalues)
    pi[: spectrum.rank] = captured.clamp(0.0, 1.0)
    return pi


def cumulative_share(per_direction: torch.Tensor) -> torch.Tensor:
    """Running share of a non-negative per-direction quantity (1 at the end; zeros if it is all 0)."""
    total = per_direction.sum()
    if total <= 0:
        return torch.zeros_like(per_direction)
    return per_direction.cumsum(0) / total


def effective_rank(spectrum: FeatureSpectrum) -> float:
    """RankMe: ``exp(H(σ/Σσ))`` over the singular values of Φ_c."""
    singular = spectrum.eigenvalues.sqrt()
    singular = singular[singular > 0]
    if singular.numel() == 0:
        return 0.0
    share = singular / singular.sum()
    return float(torch.exp(-(share * share.log()).sum()))
