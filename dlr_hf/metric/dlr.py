"""D_LR as a streaming statistic: accumulate in one pass, merge, reduce, compute (SPEC §2–§4).

Precision choices. Every statistic is float64 (count, mean, the Chan-pooled centred scatter, class
sums), whatever precision the model runs in: fp16/bf16 features are cast batch by batch, and the
coarsest input precision seen sets the rounding floors below which variance counts as zero. The
statistics live on ``device`` — the engine passes the model's device — so the per-batch scatter
update and the finish's big products (``eigh`` of S, W·V in 1024-row float64 blocks of W) run where
the model is, in float64; only plain numbers and the per-direction lists of the result leave it.
"""

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
from dlr_hf.metric.labels import LabelStatistics
from dlr_hf.metric.moments import DTYPE, StreamingMoments
from dlr_hf.metric.precision import (
    MAX_MAGNITUDE,
    PRECISIONS,
    coarsest_eps,
    coordinate_scale,
    precision_slot,
    rounding_floor,
)
from dlr_hf.metric.spectral import (
    FeatureSpectrum,
    LearnedFunction,
    capture_per_direction,
    cumulative_share,
    effective_rank,
    learned_function_from_head,
    learned_function_from_moments,
)
from dlr_hf.metric.state import MergeableState, SumFn

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

    ``1 − dlr = cka = alignment × ceiling`` exactly: ``ceiling = Σ_{k≤r} ρ_k / (√r ‖ρ‖)`` is the CKA
    the best-placed r-dimensional function could reach on these features (how low-rank and
    isotropic they are; 1 only for r equal directions), ``alignment = Σ_k ρ_k π_k / Σ_{k≤r} ρ_k`` is
    how much of that the learned function takes (whether it reads the top feature directions). They
    tell apart "the head reads weak directions" from "the features are spread or anisotropic".
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
    alignment: float | None = None
    ceiling: float | None = None
    nc1: float | None = None
    accuracy: float | None = None
    num_labelled: int = 0
    class_counts: list[int] | None = None
    labels_dropped: dict[str, int] | None = None
    nc1_convention: str | None = None
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


class DLRAccumulator(MergeableState):
    """One pass over the data; memory independent of the number of samples.

    ``update(features, logits, labels)`` per batch, then ``compute()``. Partial accumulators (other
    shards, other processes) combine exactly with ``merge`` / ``all_reduce``.

    Args:
        track_outputs: stream the joint moments of features and outputs. Needed unless the head
            weight is passed to ``compute`` (then only the p×p feature scatter is kept — use this for
            language-model heads, whose C×C output scatter would not fit). Logits passed to
            ``update`` are still used for accuracy either way.
        num_classes: number of label classes C; labels outside ``[0, C)`` are not used. Default:
            the logits' width (2 for a single logit). Needed when labels come without logits.
        rtol: relative singular-value tolerance of every numerical rank, in ``[MIN_RTOL, 1)``.
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
        super().__init__(device)
        self.track_outputs = track_outputs
        self.num_classes = _optional_count(num_classes, "num_classes")
        self.rtol = validate_rtol(rtol)
        self.feature_dim: int | None = None
        self.num_outputs: int | None = None
        # Rows seen per input precision (features, outputs): sets the rounding floors of compute().
        self.add_state("feature_precision", torch.zeros(len(PRECISIONS)))
        self.add_state("output_precision", torch.zeros(len(PRECISIONS)))
        self.moments: StreamingMoments | None = None  # of [Φ, Ŷ] (or Φ alone)
        self.labels: LabelStatistics | None = None
        if feature_dim is not None:
            self._initialise(_optional_count(feature_dim, "feature_dim"), _optional_count(num_outputs, "num_outputs"))

    # -- shape ---------------------------------------------------------------------------------
    def _initialise(self, feature_dim: int, num_outputs: int | None) -> None:
        if self.track_outputs and num_outputs is None:
            raise MissingOutputsError("an accumulator that tracks outputs needs num_outputs (or logits)")
        self.feature_dim, self.num_outputs = feature_dim, num_outputs
        self.feature_precision = self.feature_precision.to(self.device)
        self.output_precision = self.output_precision.to(self.device)
        width = feature_dim + num_outputs if self.track_outputs else feature_dim
        self.add_child("moments", lambda: StreamingMoments(width, self.device))
        self.child("moments")
        classes = self.label_classes
        if classes is not None:
            self.add_child("labels", lambda: LabelStatistics(feature_dim, classes, self.device))

    @property
    def label_classes(self) -> int | None:
        """C for label statistics: ``num_classes``, else the outputs' width (2 for one logit)."""
        if self.num_classes is not None:
            return self.num_classes
        if self.num_outputs is not None:
            return max(self.num_outputs, 2)
        return None

    def signature(self) -> dict[str, int]:
        return {
            "feature_dim": self.feature_dim or 0,
            "num_outputs": self.num_outputs or 0,
            "label_classes": self.label_classes or 0,
            "track_outputs": int(self.track_outputs),
        }

    def config(self) -> dict[str, Any]:
        return {
            "track_outputs": self.track_outputs,
            "num_classes": self.num_classes,
            "feature_dim": self.feature_dim,
            "num_outputs": self.num_outputs,
        }

    def _apply_config(self, config: dict[str, Any]) -> None:
        self.track_outputs = config["track_outputs"]
        self.num_classes = config["num_classes"]
        self.feature_dim = self.num_outputs = None
        self._child_factories.clear()
        self.moments = self.labels = None
        if config["feature_dim"] is not None:
            self._initialise(config["feature_dim"], config["num_outputs"])

    def _adopt_shape(self, other: "DLRAccumulator") -> None:
        if self.feature_dim is None and other.feature_dim is not None and self.track_outputs == other.track_outputs:
            if self._device is None:
                self._device = other.device
            self.num_classes = self.num_classes if self.num_classes is not None else other.num_classes
            self._initialise(other.feature_dim, other.num_outputs)

    @property
    def num_samples(self) -> int:
        return 0 if self.moments is None else int(self.moments.count)

    # -- labelled rows' moments: shared with all rows' until a row without a usable label ---------
    def _labelled_apart(self) -> bool:
        """Whether this part holds rows whose labelled moments differ from the all-rows moments."""
        return self.num_samples > 0 and not (self.labels is not None and not self.labels.kept_apart)

    def _keep_labelled_apart(self) -> None:
        """Hold the labelled rows' moments separately (empty when no row so far had labels)."""
        if self.label_classes is None or self.moments is None:
            return
        if self.labels is None:
            self.child("labels").keep_apart(None)  # every row so far came without labels
        else:
            self.labels.keep_apart(self.moments)

    def merge(self, other: DLRAccumulator) -> None:
        """Pool ``other`` in; when either part has rows without usable labels, both hold their labelled
        moments apart first (``other`` only for the duration of the merge: it is left as it was)."""
        if type(other) is type(self) and (self._labelled_apart() or other._labelled_apart()):
            self._adopt_shape(other)
            self._keep_labelled_apart()
            had_labels = other.labels is not None
            shared = had_labels and not other.labels.kept_apart
            other._keep_labelled_apart()
            try:
                super().merge(other)
            finally:
                if not had_labels:
                    other.labels = None
                elif shared:
                    other.labels.features = None
            return
        super().merge(other)

    def _prepare_reduce(self, sum_fn: SumFn) -> None:
        """Before ``all_reduce`` pools the parts: if any process has rows without usable labels, every
        process holds its labelled moments apart (one extra one-number collective)."""
        apart = sum_fn(torch.tensor([float(self._labelled_apart())], dtype=DTYPE, device=self.device))
        if float(apart.sum()) > 0:
            self._keep_labelled_apart()

    # -- streaming -----------------------------------------------------------------------------
    def update(self, features: Any, logits: Any = None, labels: Any = None) -> None:
        """Add a batch: features (n×p), logits (n×C or n) and labels (n; class indices, <0 = none).

        Raises NonFiniteError (and adds nothing) if any streamed value (features, and logits when
        outputs are tracked) is NaN, infinite or too large for float64 statistics.
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
        # Without tracked outputs, logits only score accuracy: ΦWᵀ + b is finite when Φ and W are,
        # and W is checked once in compute(), so the n×C logits (vocabulary-wide) are not scanned.
        _check_values(features, logits if self.track_outputs else None)
        if self.moments is None:
            if self._device is None:
                self._device = features.device
            self._initialise(features.shape[1], None if logits is None else logits.shape[1])
        if features.shape[1] != self.feature_dim:
            raise ShapeMismatchError(f"features have dimension {features.shape[1]}, earlier batches {self.feature_dim}")
        if logits is not None and self.num_outputs is not None and logits.shape[1] != self.num_outputs:
            raise ShapeMismatchError(f"logits have {logits.shape[1]} columns, earlier batches {self.num_outputs}")
        if labels is not None and self.label_classes is None:
            raise InvalidArgumentError(
                "labels were given without logits, so the number of classes is unknown; pass "
                "num_classes= to DLRAccumulator (labels outside [0, num_classes) are not used)"
            )
        self.feature_precision[precision_slot(features.dtype)] += n
        if logits is not None:
            self.output_precision[precision_slot(logits.dtype)] += n
        features = features.to(self.device, DTYPE)
        rows = torch.cat([features, logits.to(self.device, DTYPE)], dim=1) if self.track_outputs else features
        # label statistics first: they may need the all-rows moments as they were before this batch
        if labels is not None:
            if self.labels is None and self.num_samples > 0:
                self._keep_labelled_apart()  # the rows so far came without labels
            self.child("labels").update(features, logits, labels, self.moments)
        elif self.labels is not None:
            self.labels.keep_apart(self.moments)  # this batch's rows come without labels
        self.moments.update(rows)

    # -- the measure ---------------------------------------------------------------------------
    def compute(self, head_weight: Any = None) -> DLRResult:
        """D_LR, its eigen-visualisations and the baselines the streamed data allow.

        Args:
            head_weight: the final layer's weight W (C×p). When given, outputs are taken to be
                ``Φ W ᵀ + b`` and only the feature scatter is used (the streamed output moments,
                if any, are ignored).
        """
        spectrum = self._feature_spectrum()
        if head_weight is not None:
            function = self._function_from_head(spectrum, head_weight)
        elif self.track_outputs and self.num_outputs:
            function = self._function_from_moments(spectrum)
        else:
            raise MissingOutputsError(
                "no outputs were streamed; pass head_weight= (the final linear layer's weight) to compute()"
            )
        result = self._assemble(spectrum, function)
        self._add_label_statistics(result, spectrum)
        return result

    def _feature_spectrum(self) -> FeatureSpectrum:
        """Eigendecomposition of S, ranked above rtol and the inputs' rounding floor."""
        n = self.num_samples
        if n < 2:
            raise TooFewSamplesError(f"D_LR needs at least 2 samples, got {n}")
        p = self.feature_dim
        scatter = self.moments.scatter[:p, :p]
        _check_statistics(scatter, "feature")
        scale = coordinate_scale(self.moments.mean[:p], scatter, n)
        floor = rounding_floor(n, coarsest_eps(self.feature_precision), scale)
        spectrum = FeatureSpectrum.of(scatter, self.rtol, floor)
        if spectrum.rank == 0:
            top = float(spectrum.eigenvalues[0]) / n
            raise UndefinedDLRError(
                f"the features are constant over all {n} samples up to rounding (largest variance "
                f"{top:.3g}, below the floor {floor / n:.3g} that their precision and scale can resolve), "
                "so D_LR is undefined; check that the tapped layer actually varies with the input"
            )
        return spectrum

    def _function_from_head(self, spectrum: FeatureSpectrum, head_weight: Any) -> LearnedFunction:
        p, n = self.feature_dim, self.num_samples
        weight = _as_matrix(head_weight, "head_weight")
        if weight.shape[1] != p:
            raise ShapeMismatchError(f"head_weight has {weight.shape[1]} columns but features have dimension {p}")
        scale = coordinate_scale(self.moments.mean[:p], self.moments.scatter[:p, :p], n)
        input_floor = rounding_floor(n, coarsest_eps(self.feature_precision), scale)
        float64_floor = rounding_floor(n, torch.finfo(DTYPE).eps, scale)
        return learned_function_from_head(spectrum, weight, self.rtol, input_floor, float64_floor)

    def _function_from_moments(self, spectrum: FeatureSpectrum) -> LearnedFunction:
        p, n = self.feature_dim, self.num_samples
        scatter = self.moments.scatter
        _check_statistics(scatter, "output")
        outputs = scatter[p:, p:]
        floor = rounding_floor(n, coarsest_eps(self.output_precision), coordinate_scale(self.moments.mean[p:], outputs, n))
        return learned_function_from_moments(spectrum, scatter[:p, p:], outputs, self.rtol, floor)

    def _assemble(self, spectrum: FeatureSpectrum, function: LearnedFunction) -> DLRResult:
        n, p = self.num_samples, self.feature_dim
        if function.rank == 0:
            raise UndefinedDLRError(
                f"the outputs are constant over all {n} samples up to rounding (rank 0): the learned "
                "function varies in no direction the features vary in, so D_LR is undefined"
            )
        feature_norm = float(torch.linalg.vector_norm(spectrum.eigenvalues))
        cka = function.captured_scatter(spectrum) / (feature_norm * math.sqrt(function.rank))
        if not math.isfinite(cka):
            raise NonFiniteError("D_LR came out non-finite: the statistics overflowed; rescale the features")
        cka = min(max(cka, 0.0), 1.0)
        top = float(spectrum.eigenvalues[: min(function.rank, spectrum.rank)].sum())
        ceiling = min(top / (feature_norm * math.sqrt(function.rank)), 1.0)
        warnings: list[str] = []
        degenerate = function.rank >= spectrum.rank
        reason = None
        if degenerate:
            reason = (
                f"the learned function's rank r={function.rank} reaches the feature rank {spectrum.rank} "
                f"(p={p}, C={function.num_outputs}, n={n}): the output space covers the whole feature space, so "
                "D_LR only measures how isotropic the feature spectrum is"
            )
            warnings.append("degenerate: " + reason)
        return DLRResult(
            dlr=1.0 - cka,
            cka=cka,
            rank=function.rank,
            feature_rank=spectrum.rank,
            num_samples=n,
            feature_dim=p,
            num_outputs=function.num_outputs,
            degenerate=degenerate,
            degenerate_reason=reason,
            warnings=warnings,
            spectrum=(spectrum.eigenvalues / n).tolist(),
            utilisation=cumulative_share(function.output_power.clamp(min=0)).tolist(),
            pi=capture_per_direction(spectrum, function).tolist(),
            effective_rank=effective_rank(spectrum),
            alignment=cka / ceiling,
            ceiling=ceiling,
            rtol=self.rtol,
        )

    def _add_label_statistics(self, result: DLRResult, spectrum: FeatureSpectrum) -> None:
        """Accuracy, class counts, Q(k) and NC1 over the labelled rows only (SPEC §3–§4)."""
        stats = self.labels
        if stats is None:
            return
        result.labels_dropped = stats.dropped_counts()
        labelled = stats.num_labelled
        result.num_labelled = labelled
        dropped = result.labels_dropped
        unusable = dropped["out_of_range"] + dropped["not_integer"]
        if unusable:
            result.warnings.append(
                f"{unusable} labels were not used: {dropped['out_of_range']} outside [0, {stats.num_classes}) "
                f"and {dropped['not_integer']} not integers (or NaN); label statistics use the "
                f"{labelled} rows with a class label"
            )
        if labelled != result.num_samples:
            result.warnings.append(
                f"labels were given for {labelled} of {result.num_samples} samples; accuracy, quality and "
                "NC1 use the labelled ones only (D_LR uses all)"
            )
        if stats.scored > 0:
            result.accuracy = float(stats.correct / stats.scored)
        if labelled < 2:
            return
        counts = stats.classes.counts
        result.class_counts = [int(c) for c in counts.tolist()]
        present = counts > 0
        moments = stats.labelled_moments(self.moments)
        offsets = stats.classes.means[present] - moments.mean  # μ_k − μ_L
        if labelled != result.num_samples:
            spectrum = self._labelled_spectrum(moments)
        result.quality = _quality(spectrum, counts[present], offsets)
        result.nc1 = _nc1(moments.scatter, counts[present], offsets, self.rtol)
        result.nc1_convention = NC1_CONVENTION
        present_counts = counts[present]
        if present_counts.numel() > 1 and float(present_counts.max() / present_counts.min()) > IMBALANCE_RATIO:
            result.warnings.append(
                f"classes are far from balanced (largest/smallest count = "
                f"{float(present_counts.max() / present_counts.min()):.1f}); D_LR assumes balanced, "
                "orthogonal targets and is above 0 even for perfectly collapsed features"
            )

    def _labelled_spectrum(self, moments: StreamingMoments) -> FeatureSpectrum:
        """Eigenbasis of the labelled rows' scatter (a second eigh only when some rows are unlabelled)."""
        scale = coordinate_scale(moments.mean, moments.scatter, float(moments.count))
        floor = rounding_floor(float(moments.count), coarsest_eps(self.feature_precision), scale)
        return FeatureSpectrum.of(moments.scatter, self.rtol, floor)


NC1_CONVENTION = (
    "Papyan et al.: tr(Σ_W Σ_B⁺)/K over the labelled samples (labels in [0, C)), K = classes present; "
    "Σ_B centred at the class-count-weighted mean. The neural-collapse package (rhubarbwu) centres Σ_B "
    "at the unweighted mean of the class means: the same for balanced classes."
)


def _optional_count(value: Any, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InvalidArgumentError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _check_values(features: torch.Tensor, logits: torch.Tensor | None) -> None:
    """Non-finite or float64-overflowing rows: an error naming how many, and nothing added."""
    rows = [features] if logits is None else [features, logits]
    bad = torch.zeros(features.shape[0], dtype=torch.bool, device=features.device)
    huge = torch.zeros_like(bad)
    for tensor in rows:
        if not (tensor.is_floating_point() or tensor.is_complex()):
            tensor = tensor.to(DTYPE)
        bad |= ~torch.isfinite(tensor).all(dim=1).to(bad.device)
        huge |= (tensor.abs() > MAX_MAGNITUDE).any(dim=1).to(bad.device)
    if bad.any():
        raise NonFiniteError(
            f"{int(bad.sum())} of {features.shape[0]} samples in this batch have non-finite "
            "features or outputs (NaN/inf); the batch was not added. Check the model's precision "
            "(try fp32) and its inputs."
        )
    huge &= ~bad
    if huge.any():
        raise NonFiniteError(
            f"{int(huge.sum())} of {features.shape[0]} samples in this batch have values above "
            f"{MAX_MAGNITUDE:g} in magnitude, whose float64 second moments would overflow; the batch was "
            "not added. Rescale the features (D_LR is scale-invariant)."
        )


def _check_statistics(scatter: torch.Tensor, what: str) -> None:
    if not bool(torch.isfinite(scatter).all()):
        raise NonFiniteError(
            f"the streamed {what} statistics are not finite (float64 overflow); rescale the inputs "
            "(D_LR is scale-invariant)"
        )


def _quality(spectrum: FeatureSpectrum, counts: torch.Tensor, offsets: torch.Tensor) -> list[float] | None:
    """Q(k): share of the centred one-hot targets explained by the top-k eigenfunctions.

    ``S_ΦT = Φ_cᵀT_c`` has column ``n_k (μ_k − μ)``; ``‖T_c‖² = Σ_k n_k (1 − n_k/N)``.
    """
    total = counts.sum()
    target_norm = float((counts * (1 - counts / total)).sum())
    if target_norm <= 0:
        return None
    k = spectrum.rank
    along = (counts[:, None] * offsets) @ spectrum.eigenvectors[:, :k]  # rows: classes, columns: directions
    per_direction = torch.zeros_like(spectrum.eigenvalues)
    per_direction[:k] = (along**2).sum(0) / spectrum.eigenvalues[:k]
    return (per_direction.cumsum(0) / target_norm).clamp(max=1.0).tolist()


def _nc1(scatter: torch.Tensor, counts: torch.Tensor, offsets: torch.Tensor, rtol: float) -> float | None:
    """Papyan et al.'s NC1 ``tr(Σ_W Σ_B⁺)/K`` from the labelled rows' scatter and class means.

    Worked in the K-dimensional span of the class-mean offsets O (K×p): with ``O = U Σ Vᵀ``,
    ``Σ_B = OᵀO/K`` gives ``tr(Σ_W Σ_B⁺)/K = Σ_i v_iᵀ Σ_W v_i / σ_i²`` — no p×p pseudo-inverse.
    """
    num_classes = counts.numel()
    if num_classes < 2:
        return None
    _, singular, right = torch.linalg.svd(offsets, full_matrices=False)
    keep = singular > rtol * singular.max() if singular.numel() and singular.max() > 0 else singular > 0
    if not bool(keep.any()):
        return None
    basis, singular = right[keep].T, singular[keep]  # p×k, k
    # Σ_W v = (S v − Oᵀ diag(n) O v) / N
    within = (scatter @ basis - offsets.T @ (counts[:, None] * (offsets @ basis))) / counts.sum()
    nc1 = float(((basis * within).sum(0) / singular**2).sum())
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
