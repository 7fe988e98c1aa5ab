"""The evaluation report: one JSON document a script can consume (schema ``dlr-hf/report/v3``).

Every field is documented in ``docs/report-schema.md``. Top-level keys:

* ``schema`` — ``"dlr-hf/report/v3"`` (v3 added ``verdict`` and ``initial`` and renamed
  ``baselines.param_norm`` to ``param_norm_squared``; v2 added ``layers``; v1 and v2 documents still load)
* ``dlr`` — the D_LR value (0 = maximally rich, 1 = maximally lazy)
* ``measured`` — the module whose input gave the features: the ``layer`` option, else the head's module path
* ``verdict`` — the reading: ``text``, ``label`` (rich / lazy / in between), ``basis`` ("change from
  initialisation" with a reference, else "absolute scale"), ``dlr``, ``dlr_initial``, ``change``,
  ``s_init``, ``tolerance``, ``yardstick`` (1 − √(C/p), the value of isotropic features)
* ``initial`` — D_LR of the reference (initial) model on the same batches: ``dlr``, ``accuracy``,
  ``rank``, ``feature_rank``, ``effective_rank``, ``degenerate``; null without a reference
* ``degenerate``, ``warnings`` — SPEC §2 edge cases and caveats (imbalanced classes, …)
* ``model`` — ``id``, ``revision``, ``commit`` (Hub checkpoints), ``path`` (local), ``class``, ``dtype``; for a
  PEFT adapter also ``adapter`` (``id``, ``revision``, ``commit``, ``path``, ``peft_type``, ``r``,
  ``target_modules``, ``modules_to_save``) and ``base`` (``id``, ``revision``, ``commit``, ``path``,
  ``class``): S_init and ``param_change`` then compare with the base (the adapter disabled, no reference needed)
* ``dataset`` — ``id``, ``config``, ``split``, ``revision``, ``fingerprint``, ``num_rows``,
  ``input_columns``, ``label_column``, ``num_examples`` (rows evaluated)
* ``head`` — ``module_path`` of the final Linear (null: none makes the logits, layer-wise only),
  ``selection`` (pooled / per_position / selected_position / per_choice), ``between`` (what sits
  between the last hidden state and the head), ``positions`` (per-position heads: which positions
  are samples, e.g. "first sub-token of each word (special tokens and padding excluded)"),
  ``layer`` (layer-wise mode: the tapped Linear), ``feature_dim`` (p), ``num_outputs`` (C);
  notices about the head (soft-capping, a logit scale, averaged heads, a wrapper) are in ``warnings``
* ``result`` — every field of ``DLRResult``: ``dlr``, ``cka``, ``rank``, ``feature_rank``,
  ``num_samples`` (n, one per prediction), ``spectrum`` (ρ_k), ``utilisation`` (U(k)), ``quality``
  (Q(k), labels only), ``pi`` (π_k), ``effective_rank``, ``nc1``, ``accuracy``, ``class_counts``,
  ``num_labelled`` (rows whose label is a class index in [0, C): the only rows accuracy, NC1 and
  Q(k) use), ``labels_dropped`` (rows whose label was not used, by reason: ``unlabelled``
  (negative), ``out_of_range`` (≥ C), ``not_integer`` (incl. NaN)), ``nc1_convention``, …
* ``baselines`` — ``accuracy``, ``nc1``, ``effective_rank``, ``param_norm_squared`` (‖θ‖², unless the
  ``baselines`` option is off) and, with a reference (initial) model, ``s_init`` and ``param_change``
* ``layers`` — the richness profile across depth (the ``layers`` option; empty without it), shallow
  to deep, one object per layer: ``name`` (``block_07``, or the module path), ``depth`` (1 = the
  shallowest layer profiled), ``module_path`` (the block, or the linear layer whose input is read),
  ``feature_dim`` (p), ``dlr`` (layer-wise D_LR: that layer's features against the final logits),
  ``rank`` (r of the logits), ``feature_rank``, ``effective_rank``, ``degenerate``, ``num_samples``,
  and, when a reference is given, ``s_init`` (linear CKA to the reference model's same layer),
  ``dlr_initial`` (D_LR of the reference's same layer against the reference's logits, on the same
  batches) and ``dlr_change`` (``dlr`` − ``dlr_initial``)
* ``settings`` — every ``MeasurementOptions`` field (``num_samples`` cap, ``batch_size``, ``layer``, ``layers``,
  ``seed``, ``reference`` when given, ``rtol``, ``precision``, ``max_length``, ``baselines``), and
  ``num_processes``, ``device``, ``device_map``
* ``timings`` — seconds: ``load_model``, ``load_data``, ``forward``, ``compute``, ``total``
* ``versions`` — dlr_hf, torch, transformers, datasets, accelerate, python
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, BinaryIO, Callable

from dlr_hf.errors import InvalidArgumentError
from dlr_hf.metric import DLRResult

SCHEMA = "dlr-hf/report/v3"
MANY_SCHEMA = "dlr-hf/reports/v3"
"""Several models' reports in one document: ``{"schema": MANY_SCHEMA, "reports": [report, ...]}``."""
_READABLE_SCHEMAS = ("dlr-hf/report/v1", "dlr-hf/report/v2", SCHEMA)
_RENAMED_BASELINES = {"param_norm": "param_norm_squared"}
"""Old baseline keys (v1, v2) and their names since v3."""

CHANGE_TOLERANCE = 0.05
"""|D_LR − D_LR at initialisation| up to this is "stayed": seeds move D_LR by 0.006–0.017 (REPRODUCTION
exp8, std over 3 seeds) and weight decay by ~0.05 within one regime (exp5), while a rich run falls by
0.24 (the demo) to 0.39 (exp8 MSE) — five times more."""
FEATURES_UNMOVED = 0.99
"""S_init at or above this: the features did not move (lazy by SPEC §5 whatever D_LR does through the
head alone): head-only training gives 1.000 in every run of REPRODUCTION, rich runs 0.50–0.71."""
ABSOLUTE_RICH, ABSOLUTE_LAZY = 0.1, 0.5
"""The absolute scale without a reference (SPEC §5): the paper's rich runs read 0.009–0.07, its lazy ones 0.63–0.66."""


@dataclass(frozen=True)
class Verdict:
    """Rich or lazy, in words, with the numbers it rests on (the report's ``verdict``)."""

    text: str
    label: str
    """"rich", "lazy" or "in between"."""
    basis: str
    """"change from initialisation" (a reference was measured) or "absolute scale"."""
    dlr: float
    dlr_initial: float | None
    change: float | None
    s_init: float | None
    tolerance: float | None
    yardstick: float | None
    """1 − √(C/p): D_LR of isotropic features (no structure at all); None when C ≥ p."""

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def isotropic_dlr(feature_dim: int, num_outputs: int) -> float | None:
    """D_LR of isotropic features read by a full-rank head (SPEC §2): 1 − √(C/p); None when C ≥ p."""
    if num_outputs >= feature_dim:
        return None
    return 1.0 - (num_outputs / feature_dim) ** 0.5


def verdict(result: DLRResult, dlr_initial: float | None = None, s_init: float | None = None) -> Verdict:
    """The reading of ``result``: on the change from initialisation when ``dlr_initial`` is known (SPEC §5:
    lazy stays at its initial value), else on the absolute scale with the isotropic value as a yardstick."""
    dlr, p, c = result.dlr, result.feature_dim, result.num_outputs
    yardstick = isotropic_dlr(p, c)
    if dlr_initial is None:
        return _absolute_verdict(dlr, p, c, yardstick, s_init)
    change = dlr - dlr_initial
    moved = f"from {dlr_initial:.2f} at initialisation to {dlr:.2f} ({_signed(change)})"
    s_init_words = "" if s_init is None else f", S_init = {s_init:.2f}"
    if s_init is not None and s_init >= FEATURES_UNMOVED:
        label = "lazy"
        text = (f"lazy: D_LR stayed within ±{CHANGE_TOLERANCE:.2f} of its initial value ({dlr_initial:.2f} → {dlr:.2f}) "
                f"and S_init = {s_init:.2f} — the features did not move" if abs(change) <= CHANGE_TOLERANCE else
                f"lazy: S_init = {s_init:.2f} — the features did not move; D_LR went {moved} through the head alone")
    elif change < -CHANGE_TOLERANCE:
        label = "rich"
        text = f"rich: D_LR fell {moved}{s_init_words} — the features reorganised around the learned function"
    elif change > CHANGE_TOLERANCE:
        label = "lazy"
        text = (f"lazy: D_LR rose {moved}{s_init_words} — the learned function spreads over the features' "
                "existing directions instead of collapsing them onto itself")
    else:
        label = "lazy"
        text = (f"lazy: D_LR stayed within ±{CHANGE_TOLERANCE:.2f} of its initial value "
                f"({dlr_initial:.2f} → {dlr:.2f}){s_init_words}")
    return Verdict(text, label, "change from initialisation", dlr, dlr_initial, change, s_init, CHANGE_TOLERANCE, yardstick)


def _absolute_verdict(dlr: float, p: int, c: int, yardstick: float | None, s_init: float | None) -> Verdict:
    label = "rich" if dlr < ABSOLUTE_RICH else "lazy" if dlr >= ABSOLUTE_LAZY else "in between"
    scale = (f"isotropic features (no structure) give 1 − √(C/p) = {yardstick:.2f} for p = {p}, C = {c}"
             if yardstick is not None else f"with C = {c} ≥ p = {p} the head reads every feature direction")
    text = (f"{label} on the absolute scale: D_LR = {dlr:.2f}; 0 = features collapsed onto the learned function, "
            f"{scale}. Without an initial checkpoint the change cannot be measured, and the value at "
            "initialisation depends on the architecture: pass the initial checkpoint (reference) for a calibrated verdict")
    return Verdict(text, label, "absolute scale", dlr, None, None, s_init, None, yardstick)


def _signed(change: float) -> str:
    return f"{'+' if change >= 0 else '−'}{abs(change):.2f}"


def library_versions() -> dict[str, str]:
    import accelerate
    import datasets
    import torch
    import transformers

    import dlr_hf

    return {
        "dlr_hf": dlr_hf.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "datasets": datasets.__version__,
        "accelerate": accelerate.__version__,
        "python": platform.python_version(),
    }


@dataclass
class EvaluationReport:
    """Everything an evaluation measured, where its inputs came from, and how long it took."""

    result: DLRResult
    model: dict[str, Any]
    dataset: dict[str, Any]
    head: dict[str, Any]
    baselines: dict[str, Any]
    settings: dict[str, Any]
    timings: dict[str, float]
    warnings: list[str] = field(default_factory=list)
    layers: list[dict[str, Any]] = field(default_factory=list)
    initial: dict[str, Any] | None = None
    """D_LR of the reference model on the same batches (``dlr``, ``accuracy``, ranks); None without one."""
    versions: dict[str, str] = field(default_factory=library_versions)

    @property
    def dlr(self) -> float:
        return self.result.dlr

    @property
    def degenerate(self) -> bool:
        return self.result.degenerate

    @property
    def verdict(self) -> Verdict:
        """Rich or lazy, calibrated by the value at initialisation when a reference was measured."""
        initial = (self.initial or {}).get("dlr")
        return verdict(self.result, initial, self.baselines.get("s_init"))

    def relative_to(self, earlier: "EvaluationReport", checkpoint: str) -> "EvaluationReport":
        """This report read against an earlier checkpoint of the same run, measured on the same examples
        (same dataset, split, samples and seed): ``earlier``'s D_LR stands in for the value at initialisation,
        so the verdict is on the change, at no extra forward pass. ``initial["checkpoint"]`` names it.
        A report that already has a measured initial (a reference model) is returned unchanged."""
        if self.initial is not None:
            return self
        first = earlier.result
        initial = {
            "dlr": first.dlr, "accuracy": first.accuracy, "rank": first.rank, "feature_rank": first.feature_rank,
            "effective_rank": first.effective_rank, "degenerate": first.degenerate, "checkpoint": checkpoint,
        }
        return replace(self, initial=initial, warnings=list(self.warnings))

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "dlr": self.result.dlr,
            "measured": self.site,
            "verdict": self.verdict.to_dict(),
            "initial": self.initial,
            "degenerate": self.result.degenerate,
            "warnings": list(self.warnings),
            "model": self.model,
            "dataset": self.dataset,
            "head": self.head,
            "result": self.result.to_dict(),
            "baselines": self.baselines,
            "layers": list(self.layers),
            "settings": self.settings,
            "timings": self.timings,
            "versions": self.versions,
        }

    def to_json(self, path: str | Path | None = None, indent: int = 2) -> str:
        text = json.dumps(self.to_dict(), indent=indent, allow_nan=True)
        if path is not None:
            write_atomic(path, text + "\n")
        return text

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "EvaluationReport":
        """A report from ``to_dict()`` output (v1 and v2 documents too; ``verdict`` is recomputed, never read)."""
        if data.get("schema") not in _READABLE_SCHEMAS:
            raise InvalidArgumentError(f"not a {SCHEMA} report (schema = {data.get('schema')!r})")
        return cls(
            result=DLRResult(**data["result"]),
            model=data["model"],
            dataset=data["dataset"],
            head=data["head"],
            baselines={_RENAMED_BASELINES.get(key, key): value for key, value in data["baselines"].items()},
            initial=data.get("initial"),
            settings=data["settings"],
            timings=data["timings"],
            warnings=data["warnings"],
            layers=data.get("layers", []),
            versions=data["versions"],
        )

    def __str__(self) -> str:
        return self.summary()

    def __repr__(self) -> str:
        return (f"EvaluationReport(model={self.model.get('id')!r}, dataset={self.dataset.get('id')!r}, "
                f"site={self.site!r}, dlr={self.dlr:.4f}, verdict={self.verdict.label!r}, n={self.result.num_samples})")

    @property
    def site(self) -> str:
        """What was measured: the ``--layer`` given, else the head's module path."""
        return self.head.get("layer") or self.head.get("module_path") or "head"

    def summary(self) -> str:
        """A few readable lines for a terminal: where, D_LR, the verdict, the baselines, the profile, the warnings."""
        r = self.result
        verdict = self.verdict
        measured = (f"layer    {self.head['layer']} (its input against the final logits; p = {r.feature_dim}, C = {r.num_outputs})"
                    if self.head.get("layer") else
                    f"head     {self.head.get('module_path')} (p = {r.feature_dim}, C = {r.num_outputs}) · {self.head.get('between')}")
        initial = ""
        if verdict.dlr_initial is not None:
            initial = f"   at initialisation {verdict.dlr_initial:.4f} (change {_signed(verdict.change)})"
        lines = [
            f"model    {self.model.get('id')}" + (f" @ {self.model['commit'][:10]}" if self.model.get("commit") else ""),
            f"dataset  {self.dataset.get('id')}"
            + (f" [{self.dataset['split']}]" if self.dataset.get("split") else "")  # a bare Dataset has no split name
            + f" · {self.dataset.get('num_examples')} examples → n = {r.num_samples} samples",
            measured,
            f"D_LR     {r.dlr:.4f}{initial}   rank r = {r.rank}, feature rank = {r.feature_rank}",
            f"verdict  {verdict.text}",
        ]
        extras = [f"{key} = {value:.4g}" for key, value in self.baselines.items() if isinstance(value, (int, float)) and value is not None]
        if extras:
            lines.append("also     " + ", ".join(extras))
        lines += profile_table(self.layers)
        lines += [f"warning  {warning}" for warning in self.warnings]
        return "\n".join(lines)


def profile_table(layers: list[dict[str, Any]]) -> list[str]:
    """The richness profile as a small text table (no lines without one)."""
    if not layers:
        return []
    s_init = any("s_init" in row for row in layers)
    change = any("dlr_change" in row for row in layers)
    width = max(len(row["name"]) for row in layers)
    header = (f"{'layer':<{width}}  depth      p    D_LR  rank  feat.rank  eff.rank" + ("  S_init" if s_init else "")
              + ("   change" if change else ""))
    lines = ["profile  D_LR of each layer's features against the final logits", "  " + header]
    for row in layers:
        line = (f"{row['name']:<{width}}  {row['depth']:>5}  {row['feature_dim']:>5}  {row['dlr']:.4f}  {row['rank']:>4}"
                f"  {row['feature_rank']:>9}  {row['effective_rank']:>8.1f}")
        if s_init:
            line += f"  {row['s_init']:.4f}" if "s_init" in row else "       —"
        if change:
            line += f"  {row['dlr_change']:+.4f}" if "dlr_change" in row else "        —"
        lines.append("  " + line + ("  (degenerate)" if row["degenerate"] else ""))
    return lines


def check_writable(path: str | Path, what: str = "output") -> Path:
    """Fail before a run, not after it: ``path`` must be a file that can be created or replaced.

    Probes with a real temporary file in the nearest existing folder (``os.access`` says yes to
    root even on a read-only file system); creates no folder.
    """
    target = Path(path).expanduser()
    if target.is_dir():
        raise InvalidArgumentError(f"{what} {target} is a folder; give a file name such as {target / 'report.json'}")
    folder = target.parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        raise InvalidArgumentError(f"cannot create the folder of {what} {target}: {folder} is a file")
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise InvalidArgumentError(
            f"cannot write {what} {target}: {folder} is not writable ({error.strerror or error}); choose another path"
        ) from error
    return target


def write_atomic(path: str | Path, content: str | bytes | Callable[[BinaryIO], None]) -> Path:
    """Write a file whole or not at all: a temporary file in the same folder, then ``os.replace``.

    ``content`` is text, bytes, or a function writing to a binary stream (e.g. ``figure.savefig``).
    A failure leaves any earlier file at ``path`` untouched and no temporary file behind.
    """
    target = Path(path).expanduser()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    except OSError as error:
        raise InvalidArgumentError(f"cannot write {target}: {error.strerror or error}") from error
    try:
        with os.fdopen(handle, "wb") as stream:
            if callable(content):
                content(stream)
            else:
                stream.write(content.encode() if isinstance(content, str) else content)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temporary, target.stat().st_mode & 0o777 if target.exists() else 0o644)
        os.replace(temporary, target)
    except BaseException as error:
        Path(temporary).unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise InvalidArgumentError(f"cannot write {target}: {error.strerror or error}") from error
        raise
    return target


def reading(dlr: float) -> str:
    """D_LR in plain words (the paper: rich ≈ 0.01–0.1, lazy ≈ 0.5 and above)."""
    if dlr < 0.1:
        return "rich: features collapsed onto the learned function"
    if dlr < 0.3:
        return "fairly rich"
    if dlr < 0.5:
        return "in between"
    return "lazy: features spread over directions the head hardly reads"
