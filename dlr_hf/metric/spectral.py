"""From second moments to D_LR and its eigen-visualisations (SPEC §2–§3), in float64.

Everything is expressed through S's one eigendecomposition and a factor of G:

* ``S = Φ_cᵀΦ_c`` — the centred feature scatter, eigendecomposed once as ``S = V diag(λ) Vᵀ``
  (``λ = n·ρ``); its rank k counts eigenvalues above rtol and the inputs' rounding floor;
* ``G = Φ_cᵀ P_Y Φ_c = B Bᵀ`` — the part of the scatter inside the span of the learned function,
  kept as its p×r factor B.

Then ``‖P_Y Φ_c‖²_F = ‖B‖²_F``, ``π_k = ‖Bᵀv_k‖² / λ_k`` and ``CKA = ‖B‖²_F / (‖S‖_F √r)``. B comes
either from streamed output moments (``S_ΦY``, ``S_YY``: one C×C eigh) or, when the head weight W is
known, from S's eigenbasis and W alone (one min(C, k)-sized decomposition; W read in blocks of rows,
so memory stays O(p²) whatever the number of outputs).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dlr_hf.errors import NonFiniteError


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


@dataclass(frozen=True)
class LearnedFunction:
    """The learned function as D_LR sees it, in S's eigenbasis.

    ``basis`` B (p×r) factors ``G = Φ_cᵀ P_Y Φ_c = B Bᵀ`` (G itself, p×p, is never formed); ``None``
    when the learned function spans every kept feature direction (``G = S`` on the feature rank's
    span, the LM-head case), which needs no factor at all. ``rank`` is r = rank(Y_c);
    ``output_power`` is ``λ_k ‖W v_k‖²`` per direction (0 past the feature rank), the centred output
    variance each feature direction carries.
    """

    basis: torch.Tensor | None
    rank: int
    output_power: torch.Tensor
    num_outputs: int

    def captured_scatter(self, spectrum: FeatureSpectrum) -> float:
        """``tr G = ‖P_Y Φ_c‖²_F``: ``‖B‖²_F``, or ``Σ_k λ_k`` over the feature rank when G = S."""
        if self.basis is None:
            return float(spectrum.eigenvalues[: spectrum.rank].sum())
        return float((self.basis**2).sum())


ROW_BLOCK = 1024
"""Rows of W converted to float64 at a time: a vocabulary-sized head is never copied whole (and
W's non-finite entries are counted on the way, not through a C×p mask)."""


def learned_function_from_moments(
    spectrum: FeatureSpectrum,
    feature_output_scatter: torch.Tensor,
    output_scatter: torch.Tensor,
    rtol: float,
    floor: float = 0.0,
) -> LearnedFunction:
    """From streamed moments: ``G = S_ΦY S_YY⁺ S_ΦYᵀ``, the pseudo-inverse cut at ``rtol`` and ``floor``."""
    values, vectors = torch.linalg.eigh(output_scatter)
    rank = numerical_rank(values.clamp(min=0), rtol, floor)
    kept = values.argsort(descending=True)[:rank]
    basis = feature_output_scatter @ (vectors[:, kept] / values[kept].sqrt())
    k = spectrum.rank
    along = feature_output_scatter.T @ spectrum.eigenvectors[:, :k]  # S_ΦYᵀ v_k = λ_k W v_k for a linear head
    output_power = torch.zeros_like(spectrum.eigenvalues)
    output_power[:k] = (along**2).sum(0) / spectrum.eigenvalues[:k]
    return LearnedFunction(basis, rank, output_power, output_scatter.shape[0])


def learned_function_from_head(
    spectrum: FeatureSpectrum,
    weight: torch.Tensor,
    rtol: float,
    input_floor: float = 0.0,
    float64_floor: float = 0.0,
) -> LearnedFunction:
    """From S's eigendecomposition and the head weight W (C×p) alone, for ``Y_c = Φ_c Wᵀ``.

    With ``Φ_c = A Λ^½ Vᵀ`` (A orthonormal) and ``N = W V`` (C×k), ``Y_c = A M`` with ``M = Λ^½ Nᵀ``,
    so ``r = rank(M)`` and ``G = V Λ^½ P_M Λ^½ Vᵀ``. The smaller side is decomposed: for C ≤ k the C×C
    ``MᵀM = N Λ Nᵀ`` (eigenvectors u_i give ``B = V Λ Nᵀ u_i / σ_i``); otherwise the k×k ``M Mᵀ``,
    whose eigenvalues alone suffice when M has full rank k (then ``P_M = I``, the LM-head case).
    Only the feature rank's k directions are used: the others are rounding noise, which a head
    reading them would turn into rank. Floors are given for a unit-gain map: the inputs' rounding
    passes through ``‖W V‖₂``, float64 rounding of V itself through at most ``‖W‖_F``.
    """
    k = spectrum.rank
    lam = spectrum.eigenvalues[:k]
    v = spectrum.eigenvectors[:, :k]
    num_outputs = weight.shape[0]
    output_power = torch.zeros_like(spectrum.eigenvalues)
    if num_outputs <= k:
        n_mat, frobenius = _head_rows_times(weight, v)  # C×k
        floor = input_floor * _largest_eigenvalue(n_mat @ n_mat.T) + float64_floor * frobenius
        values, vectors = torch.linalg.eigh((n_mat * lam) @ n_mat.T)
        rank = numerical_rank(values.clamp(min=0), rtol, floor)
        kept = values.argsort(descending=True)[:rank]
        basis = v @ ((lam[:, None] * (n_mat.T @ vectors[:, kept])) / values[kept].sqrt())
        output_power[:k] = lam * (n_mat**2).sum(0)
        return LearnedFunction(basis, rank, output_power, num_outputs)
    head_gram, frobenius = _head_gram_in(weight, v)  # k×k: NᵀN = VᵀWᵀWV
    output_power[:k] = lam * torch.diagonal(head_gram)
    floor = input_floor * _largest_eigenvalue(head_gram) + float64_floor * frobenius
    root = lam.sqrt()
    output_gram = head_gram.mul_(root[:, None]).mul_(root[None, :])  # M Mᵀ = Λ^½ NᵀN Λ^½, in place
    rank = numerical_rank(torch.linalg.eigvalsh(output_gram).clamp(min=0), rtol, floor)
    if rank == k:
        return LearnedFunction(None, rank, output_power, num_outputs)
    values, vectors = torch.linalg.eigh(output_gram)
    basis = v @ (root[:, None] * vectors[:, values.argsort(descending=True)[:rank]])
    return LearnedFunction(basis, rank, output_power, num_outputs)


class _HeadPass:
    """One pass over W's rows in float64 blocks, with ``‖W‖²_F`` and a count of non-finite entries."""

    def __init__(self, weight: torch.Tensor, like: torch.Tensor) -> None:
        self.weight, self.like = weight, like
        self.frobenius = 0.0
        self.non_finite = 0

    def __iter__(self):
        for i in range(0, self.weight.shape[0], ROW_BLOCK):
            block = self.weight[i : i + ROW_BLOCK].to(self.like.device, self.like.dtype)
            self.non_finite += int((~torch.isfinite(block)).sum())
            self.frobenius += float((block**2).sum())
            yield block

    def check(self) -> None:
        if self.non_finite:
            raise NonFiniteError(
                f"the head weight has {self.non_finite} non-finite entries (NaN/inf) of {self.weight.numel()}, so "
                "its outputs are undefined; the model has diverged or its checkpoint is damaged"
            )


def _head_rows_times(weight: torch.Tensor, vectors: torch.Tensor) -> tuple[torch.Tensor, float]:
    """``W V`` in float64 and ``‖W‖²_F``, converting W a block of rows at a time."""
    rows = _HeadPass(weight, vectors)
    product = torch.cat([block @ vectors for block in rows])
    rows.check()
    return product, rows.frobenius


def _head_gram_in(weight: torch.Tensor, vectors: torch.Tensor) -> tuple[torch.Tensor, float]:
    """``VᵀWᵀWV`` (k×k) in float64 and ``‖W‖²_F``, W read in blocks of rows (never copied whole).

    Either ``Σ_b (W_b V)ᵀ(W_b V)`` (C·p·k + C·k² work, k×k memory) or ``Vᵀ(Σ_b W_bᵀW_b)V``
    (C·p² + p²·k work, one p×p Gram); the cheaper one for this k (the first when k < 0.62 p).
    """
    p, k = vectors.shape
    rows = _HeadPass(weight, vectors)
    if k * (p + k) < p * p:
        gram = torch.zeros(k, k, dtype=vectors.dtype, device=vectors.device)
        for block in rows:
            product = block @ vectors
            gram.addmm_(product.T, product)
        rows.check()
        return gram, rows.frobenius
    weight_gram = torch.zeros(p, p, dtype=vectors.dtype, device=vectors.device)
    for block in rows:
        weight_gram.addmm_(block.T, block)
    rows.check()
    projected = weight_gram @ vectors
    del weight_gram
    return vectors.T @ projected, rows.frobenius


def _largest_eigenvalue(symmetric: torch.Tensor, steps: int = 32) -> float:
    """λ_max of a PSD matrix by power iteration (for a noise gain, so a close estimate suffices)."""
    if symmetric.numel() == 0:
        return 0.0
    vector = torch.ones(symmetric.shape[0], dtype=symmetric.dtype, device=symmetric.device)
    value = 0.0
    for _ in range(steps):
        image = symmetric @ vector
        norm = float(torch.linalg.vector_norm(image))
        if norm == 0.0:
            return float(torch.diagonal(symmetric).max().clamp(min=0))
        value = norm / float(torch.linalg.vector_norm(vector))
        vector = image / norm
    return value


def capture_per_direction(spectrum: FeatureSpectrum, function: LearnedFunction) -> torch.Tensor:
    """``π_k = ‖P_Y e_k‖² = ‖Bᵀv_k‖²/λ_k``: how much of each eigenfunction the learned function uses."""
    k = spectrum.rank
    pi = torch.zeros_like(spectrum.eigenvalues)
    if function.basis is None:
        pi[:k] = 1.0  # G = S on the kept span: every eigenfunction lies in the learned function's span
        return pi
    captured = ((spectrum.eigenvectors[:, :k].T @ function.basis) ** 2).sum(dim=1) / spectrum.eigenvalues[:k]
    pi[:k] = captured.clamp(0.0, 1.0)
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
