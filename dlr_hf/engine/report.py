"""The evaluation report: one JSON document a script can consume (schema ``dlr-hf/report/v2``).

Top-level keys:

* ``schema`` — ``"dlr-hf/report/v2"`` (v2 added ``layers``; v1 documents still load, with no layers)
* ``dlr`` — the D_LR value (0 = maximally rich, 1 = maximally lazy)
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
* ``baselines`` — ``accuracy``, ``nc1``, ``effective_rank``, ``param_norm`` (‖θ‖², unless the
  ``baselines`` option is off) and, with a reference (initial) model, ``s_init`` and ``param_change``
* ``layers`` — the richness profile across depth (the ``layers`` option; empty without it), shallow
  to deep, one object per layer: ``name`` (``block_07``, or the module path), ``depth`` (1 = the
  shallowest layer profiled), ``module_path`` (the block, or the linear layer whose input is read),
  ``feature_dim`` (p), ``dlr`` (layer-wise D_LR: that layer's features against the final logits),
  ``rank`` (r of the logits), ``feature_rank``, ``effective_rank``, ``degenerate``, ``num_samples``,
  and ``s_init`` (linear CKA to the reference model's same layer) when a reference is given
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Callable

from dlr_hf.errors import InvalidArgumentError
from dlr_hf.metric import DLRResult

SCHEMA = "dlr-hf/report/v2"
_READABLE_SCHEMAS = ("dlr-hf/report/v1", SCHEMA)


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
    versions: dict[str, str] = field(default_factory=library_versions)

    @property
    def dlr(self) -> float:
        return self.result.dlr

    @property
    def degenerate(self) -> bool:
        return self.result.degenerate

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "dlr": self.result.dlr,
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
        if data.get("schema") not in _READABLE_SCHEMAS:
            raise ValueError(f"not a {SCHEMA} report (schema = {data.get('schema')!r})")
        return cls(
            result=DLRResult(**data["result"]),
            model=data["model"],
            dataset=data["dataset"],
            head=data["head"],
            baselines=data["baselines"],
            settings=data["settings"],
            timings=data["timings"],
            warnings=data["warnings"],
            layers=data.get("layers", []),
            versions=data["versions"],
        )

    def summary(self) -> str:
        """A few readable lines for a terminal."""
        r = self.result
        lines = [
            f"model    {self.model.get('id')}" + (f" @ {self.model['commit'][:10]}" if self.model.get("commit") else ""),
            f"dataset  {self.dataset.get('id')}"
            + (f" [{self.dataset['split']}]" if self.dataset.get("split") else "")  # a bare Dataset has no split name
            + f" · {self.dataset.get('num_examples')} examples → n = {r.num_samples} samples",
            f"head     {self.head.get('layer') or self.head.get('module_path')} (p = {r.feature_dim}, C = {r.num_outputs}) · {self.head.get('between')}",
            f"D_LR     {r.dlr:.4f}  ({reading(r.dlr)})   rank r = {r.rank}, feature rank = {r.feature_rank}",
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
    width = max(len(row["name"]) for row in layers)
    header = f"{'layer':<{width}}  depth      p    D_LR  rank  feat.rank  eff.rank" + ("  S_init" if s_init else "")
    lines = ["profile  D_LR of each layer's features against the final logits", "  " + header]
    for row in layers:
        line = (f"{row['name']:<{width}}  {row['depth']:>5}  {row['feature_dim']:>5}  {row['dlr']:.4f}  {row['rank']:>4}"
                f"  {row['feature_rank']:>9}  {row['effective_rank']:>8.1f}")
        if s_init:
            line += f"  {row['s_init']:.4f}" if "s_init" in row else "       —"
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
