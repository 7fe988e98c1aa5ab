"""D_LR as a streaming statistic: accumulate in one pass, merge, reduce, compute (SPEC §2–§4)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from dlr_hf.errors import (
    InvalidArgumentError,
    MissingOutputsError,
    NonFiniteError,
    ShapeMismatchError,
    TooFewSamplesError,
    UndefinedDLRError,
)
from dlr_hf.metric.moments import DTYPE, ClassMoments, StreamingMoments, SumFn
from dlr_hf.metric.spectral import (
    FeatureSpectrum,
    capture_per_direction,
    cumulative_share,
    effective_rank,
    projected_scatter_from_head,
    projected_scatter_from_moments,
)

DEFAULT_RTOL = 1e-6
MIN_RTOL = 1e-8
"""Smallest usable rtol: ranks come from eigenvalues of Gram matrices (σ²), whose float64 rounding
(~1e-16 of the largest) hides singular values below ~1e-8 of the largest, so a smaller rtol
would count noise directions as rank."""
IMBALANCE_RATIO = 2.0
"""Largest/smallest class count above which D_LR's balanced-target assumption is called out."""


@dataclass
class DLRResult:
    """D_LR with everything needed to read it (SPEC §2–§4). All sequences are plain lists.

    ``spectrum`` holds ρ_k (eigenvalues of the feature covariance ``S/n``, descending);
    ``utilisation`` U(k), ``quality`` Q(k) (labels only) and ``pi`` π_k are indexed like it.
    """

    dlr: float
    cka: float
    rank: int
    feature_rank: int
    num_samples: int
    feature_dim: int
    num_outputs: int
    degenerate: bool
    degenerate_reason: str | None
    warnings: list[str]
    spectrum: list[float]
    utilisation: list[float]
    pi: list[float]
    quality: list[float] | None = None
    effective_rank: float | None = None
    nc1: float | None = None
    accuracy: float | None = None
    num_labelled: int = 0
    class_counts: list[int] | None = None
    rtol: float = DEFAULT_RTOL
    extras: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def validate_rtol(rtol: Any) -> float:
    """``rtol`` as a float in ``[MIN_RTOL, 1)``, or InvalidArgumentError saying what is allowed."""
    if isinstance(rtol, bool) or not isinstance(rtol, (int, float)) or not math.isfinite(rtol) or not MIN_RTOL <= rtol < 1:
        raise InvalidArgumentError(
            f"rtol must be a number in [{MIN_RTOL:g}, 1), got {rtol!r}: it is the relative singular-value "
            f"cut-off of every numerical rank (default {DEFAULT_RTOL:g}); below {MIN_RTOL:g} float64 "
            "rounding noise would be counted as rank"
        )
    return float(rtol)


def _as_tensor(array: Any, name: str) -> torch.Tensor:
    if isinstance(array, torch.Tensor):
        return array.detach()
    try:
        return torch.as_tensor(np.asarray(array))
    except (TypeError, ValueError) as error:
        raise ShapeMismatchError(f"{name} must be a tensor or array, got {type(array).__name__}") from error


def _as_matrix(array: Any, name: str) -> torch.Tensor:
    tensor = _as_tensor(array, name)
    if tensor.ndim == 1 and name == "logits":
        tensor = tensor[:, None]  # a single output (regression, one logit)
    if tensor.ndim != 2:
        raise ShapeMismatchError(f"{name} must have shape (n, dim), got {tuple(tensor.shape)}")
    return tensor


class DLRAccumulator:
    """One pass over the data; memory independent of the number of samples.

    ``update(features, logits, labels)`` per batch, then ``compute()``. Partial accumulators (other
    shards, other processes) combine exactly with ``merge`` / ``all_reduce``.

    Args:
        track_outputs: stream the joint moments of features and outputs. Needed unless the head
            weight is passed to ``compute`` (then only the p×p feature scatter is kept — use this for
            language-model heads, whose C×C output scatter would not fit). Logits passed to
            ``update`` are still used for accuracy either way.
        num_classes: number of label classes; required for ``all_reduce`` when labels are seen
            but no logits are, otherwise taken from the logits' width.
        rtol: relative singular-value tolerance of every numerical rank.
        device: where statistics live (default: the first batch's device).
        feature_dim, num_outputs: shape the statistics up front instead of from the first batch,
            so that a process that sees no batch can still take part in ``all_reduce``.
    """

    def __init__(
        self,
        *,
        track_outputs: bool = True,
        num_classes: int | None = None,
        rtol: float = DEFAULT_RTOL,
        device: torch.device | str | None = None,
        feature_dim: int | None = None,
        num_outputs: int | None = None,
    ) -> None:
        self.track_outputs = track_outputs
        self.num_classes = num_classes
        self.rtol = rtol
        self.device = torch.device(device) if device is not None else None
        self.feature_dim: int | None = None
        self.num_outputs: int | None = None
        self.moments: StreamingMoments | None = None  # of [Φ, Ŷ] (or Φ alone)
        self.classes: ClassMoments | None = None
        self.correct = torch.zeros((), dtype=DTYPE)
        self.labelled = torch.zeros((), dtype=DTYPE)
        if feature_dim is not None:
            self._initialise(feature_dim, num_outputs)

    # -- streaming -----------------------------------------------------------------------------
    def update(self, features: Any, logits: Any = None, labels: Any = None) -> None:
        """Add a batch: features (n×p), logits (n×C or n) and integer labels (n; −100 = none).

        Raises NonFiniteError (and adds nothing) if any sample is NaN or infinite.
        """
        features = _as_matrix(features, "features")
        n = features.shape[0]
        logits = None if logits is None else _as_matrix(logits, "logits")
        labels = None if labels is None else _as_tensor(labels, "labels").reshape(-1)
        for name, other in (("logits", logits), ("labels", labels)):
            if other is not None and other.shape[0] != n:
                raise ShapeMismatchError(f"features have {n} rows but {name} have {other.shape[0]}")
        if self.track_outputs and logits is None:
            raise MissingOutputsError(
                "this accumulator tracks outputs, so update() needs logits; create it with "
                "track_outputs=False to stream features only and pass head_weight to compute()"
            )
        self._check_finite(features, logits)
        if self.moments is None:
            self.device = self.device or features.device
            self._initialise(features.shape[1], None if logits is None else logits.shape[1])
        if features.shape[1] != self.feature_dim:
            raise ShapeMismatchError(f"features have dimension {features.shape[1]}, earlier batches {self.feature_dim}")
        if logits is not None and self.num_outputs is not None and logits.shape[1] != self.num_outputs:
            raise ShapeMismatchError(f"logits have {logits.shape[1]} columns, earlier batches {self.num_outputs}")
        features = features.to(self.device, DTYPE)
        rows = torch.cat([features, logits.to(self.device, DTYPE)], dim=1) if self.track_outputs else features
        self.moments.update(rows)
        if labels is not None:
            labels = labels.to(self.device, torch.long)
            self._update_labels(features, logits, labels)

    def _check_finite(self, features: torch.Tensor, logits: torch.Tensor | None) -> None:
        bad = ~torch.isfinite(features).all(dim=1)
        if logits is not None:
            bad |= ~torch.isfinite(logits).all(dim=1)
        if bad.any():
            raise NonFiniteError(
                f"{int(bad.sum())} of {features.shape[0]} samples in this batch have non-finite "
                "features or outputs (NaN/inf); the batch was not added. Check the model's precision "
                "(try fp32) and its inputs."
            )

    def _initialise(self, feature_dim: int, num_outputs: int | None) -> None:
        if self.track_outputs and num_outputs is None:
            raise MissingOutputsError("an accumulator that tracks outputs needs num_outputs (or logits)")
        self.device = self.device or torch.device("cpu")
        self.feature_dim = feature_dim
        self.num_outputs = num_outputs
        width = feature_dim + num_outputs if self.track_outputs else feature_dim
        self.moments = StreamingMoments(width, self.device)
        self.correct = self.correct.to(self.device)
        self.labelled = self.labelled.to(self.device)

    def _update_labels(self, features: torch.Tensor, logits: torch.Tensor | None, labels: torch.Tensor) -> None:
        if self.classes is None:
            self.classes = ClassMoments(self.feature_dim, self.num_classes or self.num_outputs or 0, self.device)
        self.classes.update(features, labels)
        if logits is not None and logits.shape[1] > 1:
            valid = labels >= 0
            predictions = logits.to(self.device).argmax(dim=1)
            self.correct += (predictions[valid] == labels[valid]).sum().to(DTYPE)
            self.labelled += valid.sum().to(DTYPE)

    @property
    def num_samples(self) -> int:
        return 0 if self.moments is None else int(self.moments.count)

    # -- combining -----------------------------------------------------------------------------
    def merge(self, other: "DLRAccumulator") -> None:
        """Pool another accumulator of the same shape into this one (exact to rounding)."""
        if other.moments is None:
            return
        if self.moments is None:
            self.load_state_dict(other.state_dict())
            return
        if (other.feature_dim, other.num_outputs) != (self.feature_dim, self.num_outputs):
            raise ShapeMismatchError(
                f"cannot merge (p={other.feature_dim}, C={other.num_outputs}) into "
                f"(p={self.feature_dim}, C={self.num_outputs})"
            )
        self.moments.merge(other.moments)
        if other.classes is not None:
            if self.classes is None:
                self.classes = ClassMoments(self.feature_dim, 0, self.device)
            self.classes.merge(other.classes)
        self.correct = self.correct + other.correct.to(self.device)
        self.labelled = self.labelled + other.labelled.to(self.device)

    def all_reduce(self, sum_fn: SumFn) -> None:
        """Pool the accumulators of all processes; every process must call this (it is collective).

        ``sum_fn`` sums a tensor over processes, e.g. ``lambda t: accelerator.reduce(t, "sum")``.
        Every process must have seen at least one batch (shapes must agree everywhere).
        """
        if self.moments is None:
            raise TooFewSamplesError(
                "this process saw no samples, so its statistics have no shape; give every process "
                "at least one batch (use fewer processes or more samples)"
            )
        self.moments.all_reduce(sum_fn)
        has_classes = sum_fn(torch.tensor(float(self.classes is not None), dtype=DTYPE, device=self.device))
        if has_classes > 0:
            if self.classes is None:
                self.classes = ClassMoments(self.feature_dim, self.num_classes or self.num_outputs or 0, self.device)
            width = torch.tensor(float(self.classes.num_classes), dtype=DTYPE, device=self.device)
            processes = sum_fn(torch.ones((), dtype=DTYPE, device=self.device))
            if sum_fn(width) != width * processes:
                raise ShapeMismatchError(
                    "processes saw different numbers of label classes; pass num_classes= to DLRAccumulator"
                )
            self.classes.all_reduce(sum_fn)
        self.correct = sum_fn(self.correct)
        self.labelled = sum_fn(self.labelled)

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume or ship the statistics (tensors plus plain metadata)."""
        return {
            "track_outputs": self.track_outputs,
            "num_classes": self.num_classes,
            "rtol": self.rtol,
            "feature_dim": self.feature_dim,
            "num_outputs": self.num_outputs,
            "moments": None if self.moments is None else self.moments.state_dict(),
            "classes": None if self.classes is None else self.classes.state_dict(),
            "correct": self.correct,
            "labelled": self.labelled,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.track_outputs = state["track_outputs"]
        self.num_classes = state["num_classes"]
        self.rtol = state["rtol"]
        self.feature_dim = state["feature_dim"]
        self.num_outputs = state["num_outputs"]
        self.moments = self.classes = None
        if state["moments"] is not None:
            self.device = self.device or state["moments"]["mean"].device
            self.moments = StreamingMoments(state["moments"]["mean"].shape[0], self.device)
            self.moments.load_state_dict(state["moments"])
        if state["classes"] is not None:
            self.classes = ClassMoments(self.feature_dim, 0, self.device)
            self.classes.load_state_dict(state["classes"])
        self.correct = state["correct"].to(self.device, DTYPE)
        self.labelled = state["labelled"].to(self.device, DTYPE)

    # -- the measure ---------------------------------------------------------------------------
    def compute(self, head_weight: Any = None) -> DLRResult:
        """D_LR, its eigen-visualisations and the baselines the streamed data allow.

        Args:
            head_weight: the final layer's weight W (C×p). When given, outputs are taken to be
                ``Φ W ᵀ + b`` and only the feature scatter is used (the streamed output moments,
                if any, are ignored).
        """
        n = self.num_samples
        if n < 2:
            raise TooFewSamplesError(f"D_LR needs at least 2 samples, got {n}")
        p = self.feature_dim
        scatter = self.moments.scatter
        feature_scatter = scatter[:p, :p]
        feature_norm = float(torch.linalg.matrix_norm(feature_scatter))
        if feature_norm == 0.0:
            raise UndefinedDLRError(
                f"the features are identical for all {n} samples (zero scatter), so D_LR is undefined"
            )
        spectrum = FeatureSpectrum.of(feature_scatter, self.rtol)

        if head_weight is not None:
            weight = _as_matrix(head_weight, "head_weight").to(self.device, DTYPE)
            if weight.shape[1] != p:
                raise ShapeMismatchError(f"head_weight has {weight.shape[1]} columns but features have dimension {p}")
            num_outputs = weight.shape[0]
            head_gram = weight.T @ weight
            projected, rank = projected_scatter_from_head(spectrum, head_gram, self.rtol)
            output_power = spectrum.eigenvalues * (spectrum.eigenvectors * (head_gram @ spectrum.eigenvectors)).sum(0)
        elif self.track_outputs and self.num_outputs:
            num_outputs = self.num_outputs
            cross = scatter[:p, p:]
            projected, rank = projected_scatter_from_moments(cross, scatter[p:, p:], self.rtol)
            along = cross.T @ spectrum.eigenvectors  # S_ΦYᵀ v_k = λ_k W v_k for a linear head
            output_power = torch.zeros_like(spectrum.eigenvalues)
            k = spectrum.rank
            output_power[:k] = (along[:, :k] ** 2).sum(0) / spectrum.eigenvalues[:k]
        else:
            raise MissingOutputsError(
                "no outputs were streamed; pass head_weight= (the final linear layer's weight) to compute()"
            )
        if rank == 0:
            raise UndefinedDLRError(
                f"the outputs are identical for all {n} samples (rank 0), so the learned function spans "
                "nothing and D_LR is undefined"
            )

        cka = float(torch.trace(projected)) / (feature_norm * math.sqrt(rank))
        cka = min(max(cka, 0.0), 1.0)
        warnings: list[str] = []
        degenerate = rank >= spectrum.rank
        reason = None
        if degenerate:
            reason = (
                f"the learned function's rank r={rank} reaches the feature rank {spectrum.rank} "
                f"(p={p}, C={num_outputs}, n={n}): the output space covers the whole feature space, so "
                "D_LR only measures how isotropic the feature spectrum is"
            )
            warnings.append("degenerate: " + reason)

        result = DLRResult(
            dlr=1.0 - cka,
            cka=cka,
            rank=rank,
            feature_rank=spectrum.rank,
            num_samples=n,
            feature_dim=p,
            num_outputs=num_outputs,
            degenerate=degenerate,
            degenerate_reason=reason,
            warnings=warnings,
            spectrum=(spectrum.eigenvalues / n).tolist(),
            utilisation=cumulative_share(output_power.clamp(min=0)).tolist(),
            pi=capture_per_direction(spectrum, projected).tolist(),
            effective_rank=effective_rank(spectrum),
            rtol=self.rtol,
        )
        self._add_label_statistics(result, spectrum)
        return result

    def _add_label_statistics(self, result: DLRResult, spectrum: FeatureSpectrum) -> None:
        if self.labelled > 0:
            result.accuracy = float(self.correct / self.labelled)
        if self.classes is None or self.classes.counts.sum() == 0:
            return
        counts = self.classes.counts
        present = counts > 0
        result.class_counts = [int(c) for c in counts.tolist()]
        result.num_labelled = int(counts.sum())
        if int(result.num_labelled) != result.num_samples:
            result.warnings.append(
                f"labels were given for {result.num_labelled} of {result.num_samples} samples; "
                "quality and NC1 use the labelled ones"
            )
        mean = self.moments.mean[: result.feature_dim]
        # S_ΦT = Φ_cᵀ T_c has column n_k (μ_k − μ); ‖T_c‖² = Σ_k n_k (1 − n_k/N) over the labelled N.
        offsets = self.classes.means[present] - mean
        weighted = counts[present][:, None] * offsets
        labelled_total = counts.sum()
        target_norm = float((counts * (1 - counts / labelled_total)).sum())
        k = spectrum.rank
        along = weighted @ spectrum.eigenvectors[:, :k]  # rows: classes, columns: directions
        per_direction = torch.zeros_like(spectrum.eigenvalues)
        per_direction[:k] = (along**2).sum(0) / spectrum.eigenvalues[:k]
        if target_norm > 0:
            result.quality = (per_direction.cumsum(0) / target_norm).clamp(max=1.0).tolist()
        result.nc1 = _nc1(self.moments.scatter[: result.feature_dim, : result.feature_dim], counts[present], offsets, self.rtol)
        present_counts = counts[present]
        if present_counts.numel() > 1 and float(present_counts.max() / present_counts.min()) > IMBALANCE_RATIO:
            result.warnings.append(
                f"classes are far from balanced (largest/smallest count = "
                f"{float(present_counts.max() / present_counts.min()):.1f}); D_LR assumes balanced, "
                "orthogonal targets and is above 0 even for perfectly collapsed features"
            )


def _nc1(scatter: torch.Tensor, counts: torch.Tensor, offsets: torch.Tensor, rtol: float) -> float | None:
    """Papyan et al.'s NC1 ``tr(Σ_W Σ_B⁺)/K`` from the total scatter and per-class means.

    Uses the total scatter over all samples (unlabelled ones included, as the streaming layout
    allows); with every sample labelled this is exact.
    """
    num_classes = counts.numel()
    if num_classes < 2:
        return None
    total = counts.sum()
    between_scatter = offsets.T @ (counts[:, None] * offsets)
    within = (scatter - between_scatter) / total
    between = offsets.T @ offsets / num_classes
    nc1 = float(torch.trace(within @ torch.linalg.pinv(between, rtol=rtol**2, hermitian=True)) / num_classes)
    return max(nc1, 0.0)  # a trace of PSD products: negative only by rounding (exact collapse)


def compute_dlr(
    features: Any,
    logits: Any,
    *,
    labels: Any = None,
    rtol: float = DEFAULT_RTOL,
) -> DLRResult:
    """D_LR of in-memory features (n×p) and logits (n×C), tensors or numpy arrays (SPEC §2)."""
    accumulator = DLRAccumulator(rtol=rtol)
    accumulator.update(features, logits, labels)
    return accumulator.compute()
