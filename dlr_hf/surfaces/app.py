"""The Gradio app: measure D_LR of a checkpoint, compare checkpoints, browse past results.

Thin on purpose: every number comes from ``dlr_hf.engine.evaluate`` (the same call the CLI
makes), every figure from ``dlr_hf.surfaces.plots``; this module adds input checks, the result
store (``dlr_hf.surfaces.history``) and the layout.

Server settings, all from the environment:

* ``DLR_HF_MAX_SAMPLES`` (default 2000), ``DLR_HF_MAX_BATCH`` (64), ``DLR_HF_MAX_CHECKPOINTS`` (12):
  caps on one request.
* ``DLR_HF_QUEUE_SIZE`` (16): requests waiting at most; more are turned away with "queue is full".
* ``DLR_HF_CONCURRENCY`` (1): evaluations running at once on the device (one concurrency slot per
  device, shared by the Evaluate, Compare and demo-example events).
* ``DLR_HF_HISTORY_DB``: the SQLite result store (default ``~/.cache/dlr-hf/history.sqlite``).
* ``DLR_HF_LOCAL_ROOTS``: folders (``:``-separated) under which local model / dataset paths may be
  read; unset = anywhere, except on a Hugging Face Space (``SPACE_ID`` set) where only the demo is.
* ``DLR_HF_DEMO`` (``1``): ``0`` skips building the bundled rich / lazy demo.

Safety: models never run remote code (``trust_remote_code=False``), and Hub models (as opposed
to local folders) are only read from safetensors weights.
"""

from __future__ import annotations

import hashlib
import html
import json
import logging
import math
import numbers
import os
import re
import tempfile
import threading
import time
import urllib.parse
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd
import torch

import dlr_hf
from dlr_hf.engine import (
    APP,
    MANY_SCHEMA,
    EvaluationReport,
    MeasurementOptions,
    ensure_demo,
    evaluate,
    is_linear_layer,
    load_data,
    load_model,
    looks_like_path,
    write_atomic,
)
from dlr_hf.engine.loading import load_processor
from dlr_hf.errors import DLRError
from dlr_hf.surfaces.history import HISTORY_COLUMNS, HistoryStore, RequestKey, distinguishing_columns, model_reference
from dlr_hf.surfaces.plots import (
    profile_figure,
    profile_plotly,
    runs_figure,
    runs_plotly,
    save_figure,
    visualisation_figure,
    visualisation_plotly,
)

log = logging.getLogger(__name__)

CHECKPOINT_DIR = re.compile(r"^checkpoint-(\d+)$")
BASELINE_COLUMNS = ["measure", "value", "meaning"]
COMPARE_COLUMNS = ["run", "checkpoint", "D_LR", "accuracy", "change", "verdict", "step", "rank r", "p", "C", "from history"]
"""The numbers right after the names, so that run, checkpoint, D_LR and accuracy fit a phone's width; then the change
from the run's initial (its reference, or its first checkpoint) and the verdict label ("(abs)": on the absolute scale)."""
PROFILE_COLUMNS = ["model", "layer", "D_LR", "S_init", "change", "depth", "p", "rank r", "effective rank"]
PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json", "tokenizer_config.json", "tokenizer.json")
"""Files whose presence means a checkpoint folder carries its own tokenizer / image processor."""
PROCESSOR_MODALITIES = ("image", "text", "audio")
URL_FIELDS = ("model", "revision", "dataset", "dataset_config", "split", *MeasurementOptions.on(APP), "processor")
"""Query parameters of a shared link, in the order of the Evaluate inputs."""
NOTHING_SELECTED = "Click a row to select a measurement, then open it in the Evaluate view or delete it."


class RequestError(DLRError):
    """A request the server refuses before any work: empty field, over a cap, forbidden path."""


# --- settings ------------------------------------------------------------------------------------
def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError as error:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from error
    if value < 1:
        raise ValueError(f"{name} must be at least 1, got {value}")
    return value


def device_name() -> str:
    """The device evaluations run on (what Accelerate will pick), for the concurrency slot."""
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


@dataclass
class AppConfig:
    """Caps and paths of one app instance (``AppConfig.from_env()`` reads the environment)."""

    max_samples: int = 2000
    max_batch: int = 64
    max_checkpoints: int = 12
    queue_size: int = 16
    concurrency: int = 1
    history_db: Path | None = None
    local_roots: list[Path] | None = None  # None = any local path
    demo: bool = True
    demo_root: Path | None = None

    @classmethod
    def from_env(cls) -> "AppConfig":
        roots_env = os.environ.get("DLR_HF_LOCAL_ROOTS")
        roots: list[Path] | None = None
        if roots_env:
            roots = [Path(root).expanduser().resolve() for root in roots_env.split(os.pathsep) if root.strip()]
        elif os.environ.get("SPACE_ID"):
            roots = []  # on a public Space: only the demo (added when it is built)
        history = os.environ.get("DLR_HF_HISTORY_DB")
        return cls(
            max_samples=_env_int("DLR_HF_MAX_SAMPLES", cls.max_samples),
            max_batch=_env_int("DLR_HF_MAX_BATCH", cls.max_batch),
            max_checkpoints=_env_int("DLR_HF_MAX_CHECKPOINTS", cls.max_checkpoints),
            queue_size=_env_int("DLR_HF_QUEUE_SIZE", cls.queue_size),
            concurrency=_env_int("DLR_HF_CONCURRENCY", cls.concurrency),
            history_db=Path(history).expanduser() if history else None,
            local_roots=roots,
            demo=os.environ.get("DLR_HF_DEMO", "1").strip().lower() not in ("0", "false", "no", "off"),
        )


# --- one request -----------------------------------------------------------------------------------
MAX_TEXT_LENGTH = 1000  # characters of one text field (a path, an id, a layer name): longer is an attack or a paste error


def _text(value: Any, name: str, limit: int = MAX_TEXT_LENGTH) -> str | None:
    """A textbox value: stripped, None when empty; refused when longer than ``limit`` characters."""
    if value is None:
        return None
    text = str(value).strip()
    if len(text) > limit:
        raise RequestError(f"the {name} field holds {len(text)} characters; this server accepts at most {limit}")
    return text or None


def _whole(value: Any, name: str) -> int:
    """A whole number from a Number box or an API call (an int, an integral float or its text), at most 40 digits."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        number = int(value)
    else:
        text = _text(value, name)
        if text is None:
            raise RequestError(f"{name} is empty; enter a whole number")
        shown = text if len(text) <= 40 else text[:39] + "…"
        try:
            number = int(text) if len(text) <= 40 and text.lstrip("+-").isdigit() else float(text)
            if not math.isfinite(number) or number != int(number):
                raise ValueError(text)
        except (ValueError, OverflowError) as error:
            raise RequestError(f"{name} must be a whole number, got {shown!r}") from error
        number = int(number)
    if abs(number) >= 10**40:
        raise RequestError(f"{name} is a whole number of more than 40 digits; enter a realistic one")
    return number


_DEFAULTS = MeasurementOptions()
MAIN_OPTIONS = ("num_samples", "batch_size")
"""APP options shown beside the dataset; the others (and any new one) go under "More options"."""


def _option_value(name: str, value: Any) -> Any:
    """One APP option from its input: a whole number for numeric options (empty: the default), else text."""
    label = MeasurementOptions.spec(name)["label"]
    default = getattr(_DEFAULTS, name)
    if isinstance(default, int) and not isinstance(default, bool):
        return default if value is None or value == "" else _whole(value, label)
    return _text(value, label)


def _option_input(name: str, value: Any = None, info: str | None = None, elem_id: str | None = None) -> gr.components.Component:
    """The input of one APP option: a whole-number box or a textbox, labelled and explained from its declaration."""
    spec = MeasurementOptions.spec(name)
    default = getattr(_DEFAULTS, name)
    label = spec["label"][:1].upper() + spec["label"][1:]
    value = default if value is None else value
    if isinstance(default, int) and not isinstance(default, bool):
        return gr.Number(label=label, value=value, precision=0, info=info or spec["help"], elem_id=elem_id)
    return gr.Textbox(label=label, value=value or "", info=info or spec["help"], elem_id=elem_id)


@dataclass
class Request:
    """A validated evaluation request: what to measure, and the measurement options (``options.on(APP)``)."""

    model: str
    dataset: str
    revision: str | None = None
    dataset_config: str | None = None
    split: str | None = None
    options: MeasurementOptions = field(default_factory=MeasurementOptions)
    processor: str | None = None  # where the tokenizer / image processor is, when the checkpoint has none

    @property
    def reference(self) -> str | None:
        return self.options.reference


@dataclass
class Outcome:
    """A report, and whether it came from the result store."""

    report: EvaluationReport
    cached: bool
    created: str | None = None
    seconds: float = 0.0
    key: RequestKey | None = None


@dataclass
class Checkpoint:
    """One checkpoint to compare; ``run`` groups the checkpoints of one training output folder into one line."""

    label: str
    model: str
    revision: str | None
    step: int | None
    run: str


class FailureNotes:
    """The last error message of each browser session, for the ``.failure`` step that shows it in the
    result area (Gradio hands that step no error). Bounded: API clients never read theirs."""

    def __init__(self, keep: int = 256) -> None:
        self._notes: OrderedDict[str, tuple[str, str]] = OrderedDict()
        self._keep = keep
        self._lock = threading.Lock()

    def record(self, session: gr.Request | None, title: str, message: str) -> None:
        if session is None or not session.session_hash:
            return
        with self._lock:
            self._notes[session.session_hash] = (title, message)
            self._notes.move_to_end(session.session_hash)
            while len(self._notes) > self._keep:
                self._notes.popitem(last=False)

    def take(self, session: gr.Request | None) -> tuple[str, str] | None:
        if session is None or not session.session_hash:
            return None
        with self._lock:
            return self._notes.pop(session.session_hash, None)


@dataclass
class DLRApp:
    """The app's functions: ``evaluate_ui``, ``compare_ui``, ``history_table``; ``build_demo`` lays them out."""

    config: AppConfig = field(default_factory=AppConfig.from_env)
    history: HistoryStore | None = None
    demo_paths: dict[str, Path] | None = None

    def __post_init__(self) -> None:
        self.history = self.history or HistoryStore(self.config.history_db)
        if self.demo_paths is None and self.config.demo:
            self.demo_paths = ensure_demo(self.config.demo_root)
        if self.config.local_roots is not None and self.demo_paths:
            demo_root = Path(self.demo_paths["data"]).resolve().parent
            self.config.local_roots = [*self.config.local_roots, demo_root]
        self.downloads = Path(tempfile.mkdtemp(prefix="dlr-hf-app-"))
        self.failures = FailureNotes()

    # -- checks ------------------------------------------------------------------------------
    def _is_local(self, name: str, what: str) -> bool:
        """Whether ``name`` is a local path; refuses missing paths and paths outside the allowed roots
        with one message, so that a request learns nothing about the server's file system."""
        path = Path(name).expanduser()
        unavailable = RequestError(
            f"the {what} {name} is not available here: it does not exist or is outside the allowed folders "
            "of this server (DLR_HF_LOCAL_ROOTS); use a Hub id (ORG/NAME)"
        )
        if not path.exists():
            if looks_like_path(name):
                raise unavailable
            return False
        roots = self.config.local_roots
        if roots is not None:
            resolved = path.resolve()
            if not any(resolved == root or root in resolved.parents for root in roots):
                raise unavailable
        return True

    def validate(self, model: Any, revision: Any, dataset: Any, dataset_config: Any, split: Any, *settings: Any,
                 processor: Any = None, **named_settings: Any) -> Request:
        """A request from the Evaluate tab's fields; ``settings`` are the APP options in declaration order
        (``MeasurementOptions.on(APP)``) or by name, the omitted ones at their defaults."""
        model_name, dataset_name = _text(model, "model"), _text(dataset, "dataset")
        if model_name is None:
            raise RequestError("enter a model (a Hub id such as ORG/NAME, or a local folder), or click a demo example")
        if dataset_name is None:
            raise RequestError("enter a dataset (a Hub id, a local folder or data file), or click a demo example")
        given = {**dict(zip(MeasurementOptions.on(APP), settings)), **named_settings}
        values = {name: _option_value(name, value) for name, value in given.items()}
        self._check_caps(values)
        request = Request(
            model=model_name, dataset=dataset_name, revision=_text(revision, "revision"),
            dataset_config=_text(dataset_config, "config"), split=_text(split, "split"),
            options=MeasurementOptions(**values), processor=_text(processor, "processor"),
        )
        self._is_local(request.dataset, "dataset")
        self._is_local(request.model, "model")
        if request.reference:
            self._is_local(request.reference, "reference")
        if request.processor:
            self._is_local(request.processor, "processor")
        return request

    def _check_caps(self, values: dict[str, Any]) -> None:
        """This server's limits on one request (the options' own checks come after)."""
        n = values.get("num_samples", MeasurementOptions().num_samples)
        if n < 2:
            raise RequestError(f"D_LR needs at least 2 samples; got {n}")
        if n > self.config.max_samples:
            raise RequestError(
                f"{n} samples is over this server's cap of {self.config.max_samples} (DLR_HF_MAX_SAMPLES); "
                "ask for fewer, or run dlr-hf locally for more"
            )
        batch = values.get("batch_size", MeasurementOptions().batch_size)
        if batch > self.config.max_batch:
            raise RequestError(f"batch size {batch} is over this server's cap of {self.config.max_batch} (DLR_HF_MAX_BATCH)")

    # -- the measurement -----------------------------------------------------------------------
    def measure(self, request: Request, progress: Any = None) -> Outcome:
        """Answer from the store when the same request was measured before, else evaluate."""
        started = time.perf_counter()
        step = progress or (lambda *args, **kwargs: None)
        step(0.0, desc="loading the dataset")
        data = load_data(request.dataset, config=request.dataset_config, split=request.split)
        step(0.05, desc="identifying the model")
        model_local = self._is_local(request.model, "model")
        model_ref = model_reference(request.model, request.revision)
        reference_ref = None
        if request.reference:
            reference_ref = model_reference(request.reference) or request.reference
        key = None
        if model_ref is not None:
            key = self._key(request, model_ref, data.source, reference_ref)
            stored = self.history.get(key)
            if stored is not None:
                return Outcome(stored.report, True, stored.created, time.perf_counter() - started, key)
        reference = None
        if request.reference:
            step(0.08, desc="loading the initial checkpoint")
            reference = load_model(
                request.reference, trust_remote_code=False,
                safetensors_only=not self._is_local(request.reference, "reference"),
            ).model
        step(0.1, desc="loading the model")
        report = evaluate(
            request.model,
            data.dataset,
            revision=request.revision,
            processor=self._processor(request, model_local),
            split=data.source["split"],
            options=request.options,
            reference_model=reference,
            trust_remote_code=False,
            safetensors_only=not model_local,
            # a fresh Accelerator per request (the engine's default): a long-lived one keeps a
            # reference to every DataLoader it prepared (Accelerator._dataloaders)
            progress=True,  # tqdm bars, which gr.Progress(track_tqdm=True) shows in the browser
        )
        # the engine was handed the loaded split: record where it came from
        report.dataset.update({name: data.source[name] for name in ("id", "config", "split", "revision")})
        if request.reference:
            report.settings["reference"] = request.reference
        if key is None:
            commit = report.model.get("commit")
            key = self._key(request, f"{request.model}@{commit}" if commit else f"unresolved:{request.model}", data.source, reference_ref)
        self.history.put(
            key, report, model=request.model, revision=request.revision, dataset=request.dataset,
            dataset_config=request.dataset_config, reference=request.reference,
        )
        return Outcome(report, False, None, time.perf_counter() - started, key)

    def _processor(self, request: Request, model_local: bool) -> Any:
        """The processor for a checkpoint saved without one (a Trainer without ``processing_class``): the
        Processor field, else the run folder above it, else the base model its config names; None
        (the engine loads the checkpoint's own) when it has one or none is found."""
        folder = Path(request.model).expanduser()
        if not request.processor and (not model_local or any((folder / name).exists() for name in PROCESSOR_FILES)):
            return None
        candidates = [request.processor] if request.processor else [str(folder.parent), _base_model_name(folder)]
        for candidate in filter(None, candidates):
            try:
                local = self._is_local(candidate, "processor")
            except RequestError:
                if request.processor:
                    raise
                continue
            if local and not any((Path(candidate).expanduser() / name).exists() for name in PROCESSOR_FILES):
                continue
            for modality in PROCESSOR_MODALITIES:
                try:
                    return load_processor(candidate, modality, None, trust_remote_code=False)
                except (OSError, ValueError, KeyError, TypeError):
                    continue
            if request.processor:
                raise RequestError(f"no tokenizer, image processor or feature extractor could be loaded from {candidate}")
        return None

    @staticmethod
    def _key(request: Request, model_ref: str, source: dict[str, Any], reference_ref: str | None) -> RequestKey:
        fingerprint = source.get("fingerprint") or f"{source.get('id')}|{source.get('config')}|{source.get('num_rows')}"
        # the seed only draws the sample: with every row measured it changes nothing, so it is not part of the key
        samples = request.options.num_samples
        subsampled = samples is not None and samples < source.get("num_rows", math.inf)
        settings = tuple((name, None if name == "seed" and not subsampled else value) for name, value in request.options.keyed())
        return RequestKey(
            model_ref=model_ref,
            dataset_fingerprint=str(fingerprint),
            split=source.get("split"),
            settings=settings,
            reference_ref=reference_ref,
            version=dlr_hf.__version__,
        )

    # -- Evaluate tab --------------------------------------------------------------------------
    def evaluate_ui(self, model, revision, dataset, dataset_config, split, num_samples, batch_size,
                    layer, seed, reference, processor=None, session: gr.Request = None,
                    progress=gr.Progress(track_tqdm=True)):
        """Measure D_LR of one checkpoint: headline, details, baselines, plots, JSON report, history."""
        with readable_errors(self.failures, session):
            request = self.validate(model, revision, dataset, dataset_config, split, num_samples, batch_size,
                                    layer, seed, reference, processor=processor)
            outcome = self.measure(request, progress)
            report = outcome.report
            digest = outcome.key.digest[:10] if outcome.key else "report"
            figure, files = self._result_files(report, _short(request.model), digest)
            return (
                headline_markdown(report),
                details_markdown(report, outcome, share_link(request)),
                baselines_frame(report),
                figure,
                files,
                result_markdown(report),
                self.history_view(),
            )

    def fields_from_url(self, session: gr.Request = None) -> tuple[Any, ...]:
        """The Evaluate fields from the page's query parameters (``URL_FIELDS``, as ``share_link`` writes
        them), so a link reproduces a measurement; fields the link does not name are left as they are."""
        given = dict(session.query_params) if session is not None else {}
        values = []
        for name in URL_FIELDS:
            text = given.get(name, "")[:MAX_TEXT_LENGTH]
            try:
                numeric = name in MeasurementOptions.on(APP) and isinstance(_option_value(name, None), int)
                values.append(gr.skip() if not text else _whole(text, name) if numeric else text)
            except RequestError:  # a number that is not one: the field keeps its value
                values.append(gr.skip())
        return tuple(values)

    def evaluate_linked(self, model, revision, dataset, dataset_config, split, num_samples, batch_size,
                        layer, seed, reference, processor=None, session: gr.Request = None,
                        progress=gr.Progress(track_tqdm=True)):
        """On page load: a link naming a model and a dataset (``share_link``) runs its measurement (answered
        from the history when it was measured before); any other page load leaves the result area as it is."""
        given = dict(session.query_params) if session is not None else {}
        if not (given.get("model") and given.get("dataset")):
            return tuple(gr.skip() for _ in range(7))
        return self.evaluate_ui(model, revision, dataset, dataset_config, split, num_samples, batch_size, layer, seed,
                                reference, processor, session=session, progress=progress)

    def evaluate_failed(self, session: gr.Request = None) -> tuple[Any, ...]:
        """After a failed measurement: the message in the headline's place, every stale number cleared."""
        return failure_markdown(self.failures.take(session)), "", _empty(BASELINE_COLUMNS), None, None, ""

    def _result_files(self, report: EvaluationReport, label: str, digest: str) -> tuple[Any, list[str]]:
        """The interactive visualisation of one result, and its downloads: the JSON report and the plot as PNG."""
        path = self.downloads / f"dlr-report-{_slug(_short(report.model.get('id') or 'model'))}-{digest}.json"
        write_atomic(path, report.to_json() + "\n")
        title = f"{label} on {_short(str(report.dataset.get('id')))} [{report.dataset.get('split')}] · {report.site}"
        png = save_figure(visualisation_figure([report.result], [label], title=title), path.with_suffix(".png"))
        return visualisation_plotly([report.result], [label]), [str(path), str(png)]

    # -- Compare tab ---------------------------------------------------------------------------
    def expand_checkpoints(self, text: Any) -> list[Checkpoint]:
        """Entries (one per line or comma-separated): Hub ids (``id@revision``), local folders, or a
        training output folder whose ``checkpoint-*`` subfolders are taken in step order (one run)."""
        listed = _text(text, "checkpoints", limit=MAX_TEXT_LENGTH * self.config.max_checkpoints) or ""
        entries = [entry.strip() for entry in re.split(r"[\n,]", listed) if entry.strip()]
        if not entries:
            raise RequestError(
                "enter checkpoints: Hub ids (ORG/NAME or ORG/NAME@revision), local checkpoint "
                "folders, or training output folders holding checkpoint-* folders"
            )
        checkpoints: list[Checkpoint] = []
        for entry in entries:
            path = Path(entry).expanduser()
            if self._is_local(entry, "checkpoint"):
                children = [child for child in path.iterdir() if child.is_dir() and CHECKPOINT_DIR.match(child.name)] if path.is_dir() else []
                if children and not (path / "config.json").exists():
                    for child in sorted(children, key=lambda c: int(CHECKPOINT_DIR.match(c.name).group(1))):
                        step = int(CHECKPOINT_DIR.match(child.name).group(1))
                        checkpoints.append(Checkpoint(child.name, str(child), None, step, str(path)))
                    continue
                match = CHECKPOINT_DIR.match(path.name)
                if match:  # one checkpoint of a run: named by its run folder
                    checkpoints.append(Checkpoint(path.name, entry, None, int(match.group(1)), str(path.parent)))
                else:
                    checkpoints.append(Checkpoint(_short(entry), entry, None, None, str(path)))
            else:
                model, _, revision = entry.partition("@")
                checkpoints.append(Checkpoint(entry, model, revision or None, None, entry))
        if len(checkpoints) > self.config.max_checkpoints:
            raise RequestError(
                f"{len(checkpoints)} checkpoints is over this server's cap of {self.config.max_checkpoints} "
                "(DLR_HF_MAX_CHECKPOINTS); compare fewer at a time"
            )
        return checkpoints

    def _measure_each(self, entries: list[Checkpoint], progress: Any, **request: Any) -> list[Outcome]:
        """One measurement per checkpoint, all on the same data and settings; a failure names its checkpoint."""
        requests = [self.validate(entry.model, entry.revision, **request) for entry in entries]
        outcomes = []
        for index, (entry, one) in enumerate(zip(entries, requests)):
            progress((index, len(requests)), desc=f"checkpoint {entry.label}")
            try:
                outcomes.append(self.measure(one))
            except DLRError as error:
                raise DLRError(f"{entry.label}: {error}") from error
        return outcomes

    def compare_ui(self, checkpoints, dataset, dataset_config, split, num_samples, batch_size, seed, reference=None,
                   session: gr.Request = None, progress=gr.Progress(track_tqdm=True)):
        """D_LR and accuracy of several checkpoints on one dataset: summary with each run's verdict, table,
        one line per run, the spectra overlaid, JSON, history.

        The verdicts are calibrated: against ``reference`` (the initial checkpoint, measured beside each one,
        with S_init) when given, else against each run's first checkpoint (its D_LR on the same examples,
        no extra forward); a lone checkpoint without a reference is read on the absolute scale."""
        with readable_errors(self.failures, session):
            entries = self.expand_checkpoints(checkpoints)
            outcomes = self._measure_each(
                entries, progress, dataset=dataset, dataset_config=dataset_config, split=split,
                num_samples=num_samples, batch_size=batch_size, seed=seed, reference=reference,
            )
            run_names = _unique_names([entry.run for entry in entries])
            firsts: dict[str, tuple[Checkpoint, EvaluationReport]] = {}
            rows, documents, readings = [], [], {}
            for entry, outcome in zip(entries, outcomes):
                first_entry, first = firsts.setdefault(entry.run, (entry, outcome.report))
                report = outcome.report if first_entry is entry else outcome.report.relative_to(first, first_entry.label)
                verdict, result, run = report.verdict, report.result, run_names[entry.run]
                readings[run] = (entry.label, verdict)
                documents.append({"run": run, "checkpoint": entry.label, "step": entry.step, **report.to_dict()})
                rows.append([
                    run, entry.label, round(result.dlr, 4),
                    None if result.accuracy is None else round(result.accuracy, 4),
                    None if verdict.change is None else round(verdict.change, 4),
                    _verdict_cell(verdict, starts_run=first_entry is entry and sum(e.run == entry.run for e in entries) > 1),
                    "" if entry.step is None else entry.step,
                    result.rank, result.feature_dim, result.num_outputs, "yes" if outcome.cached else "no",
                ])
            table = pd.DataFrame(rows, columns=COMPARE_COLUMNS)
            stepped = all(entry.step is not None for entry in entries)
            runs: dict[str, tuple[list, list, list]] = {}
            for position, row in enumerate(dict(zip(COMPARE_COLUMNS, row)) for row in rows):
                x, dlr, accuracy = runs.setdefault(row["run"], ([], [], []))
                x.append(row["step"] if stepped else position + 1)
                dlr.append(row["D_LR"])
                accuracy.append(row["accuracy"])
            axis = ("training step" if stepped else "checkpoint", None if stepped else [entry.label for entry in entries])
            # named by the requests' keys: asking the same comparison again rewrites the same files
            keys = [outcome.key.digest if outcome.key else entry.label for entry, outcome in zip(entries, outcomes)]
            path = self.downloads / f"dlr-compare-{hashlib.sha256(''.join(keys).encode()).hexdigest()[:10]}.json"
            write_atomic(path, json.dumps({"schema": MANY_SCHEMA, "reports": documents}, indent=2, allow_nan=True) + "\n")
            png = save_figure(runs_figure(runs, *axis), path.with_suffix(".png"))
            labels = [f"{run_names[entry.run]}/{entry.label}" if entry.label != run_names[entry.run] else entry.label
                      for entry in entries]
            spectra = visualisation_plotly([outcome.report.result for outcome in outcomes], labels)
            basis = ("against the reference (initial checkpoint)" if _text(reference, "reference") else
                     "against each run's first checkpoint (no reference given)")
            if any(verdict.endswith("(abs)") for verdict in table["verdict"]):
                basis += "; (abs): a lone checkpoint, read on the absolute scale — give the initial checkpoint to calibrate it"
            summary = "\n".join([
                f"**{len(entries)} checkpoints of {len(runs)} run{'s' if len(runs) != 1 else ''}** on "
                f"`{_short(str(dataset))}` · {sum(o.cached for o in outcomes)} answered from the history · verdicts {basis}",
                "",
                *(f"- **{run}** (last: {label}): {verdict.text}" for run, (label, verdict) in readings.items()),
                "",
                "Plots: D_LR (top) and accuracy (bottom) of each run; below, every checkpoint's spectrum, U(k), Q(k) "
                "and π_k overlaid. Hover for values, drag to zoom, click a legend entry to hide a line.",
            ])
            return summary, table, runs_plotly(runs, *axis), spectra, [str(path), str(png)], self.history_view()

    def compare_failed(self, session: gr.Request = None) -> tuple[Any, ...]:
        return failure_markdown(self.failures.take(session)), _empty(COMPARE_COLUMNS), None, None, None

    # -- Layers tab ----------------------------------------------------------------------------
    def layers_ui(self, checkpoints, dataset, dataset_config, split, layers, num_samples, batch_size, seed,
                  reference, session: gr.Request = None, progress=gr.Progress(track_tqdm=True)):
        """The richness profile across depth of one or more checkpoints: summary, overlaid plot, table, JSON, history."""
        with readable_errors(self.failures, session):
            entries = self.expand_checkpoints(checkpoints)
            if _text(layers, "layers") is None:
                raise RequestError("choose the layers: 'blocks' (every block's output) or module-path patterns")
            outcomes = self._measure_each(
                entries, progress, dataset=dataset, dataset_config=dataset_config, split=split,
                num_samples=num_samples, batch_size=batch_size, seed=seed, reference=reference, layers=layers,
            )
            reports = [outcome.report for outcome in outcomes]
            profile = ([report.layers for report in reports], [entry.label for entry in entries], [report.dlr for report in reports])
            table = pd.DataFrame(
                [[entry.label, row["name"], round(row["dlr"], 4), round(row["s_init"], 4) if "s_init" in row else None,
                  round(row["dlr_change"], 4) if "dlr_change" in row else None, row["depth"], row["feature_dim"], row["rank"], round(row["effective_rank"], 1)]
                 for entry, report in zip(entries, reports) for row in report.layers],
                columns=PROFILE_COLUMNS,
            )
            keys = [outcome.key.digest if outcome.key else entry.label for entry, outcome in zip(entries, outcomes)]
            path = self.downloads / f"dlr-layers-{hashlib.sha256(''.join(keys).encode()).hexdigest()[:10]}.json"
            documents = [{"checkpoint": entry.label, **report.to_dict()} for entry, report in zip(entries, reports)]
            write_atomic(path, json.dumps({"schema": MANY_SCHEMA, "reports": documents}, indent=2, allow_nan=True) + "\n")
            png = save_figure(profile_figure(*profile), path.with_suffix(".png"))
            summary = (f"**{len(reports[0].layers)} layers of {len(entries)} model{'s' if len(entries) != 1 else ''}** "
                       f"({_text(layers, 'layers')}), each layer's features against the final logits · ★ = the final head")
            return summary, profile_plotly(*profile), table, [str(path), str(png)], self.history_view()

    def layers_failed(self, session: gr.Request = None) -> tuple[Any, ...]:
        return failure_markdown(self.failures.take(session)), None, _empty(PROFILE_COLUMNS), None

    def layer_choices(self, checkpoints, session: gr.Request = None) -> gr.Dropdown:
        """'blocks' and the first checkpoint's linear layers as patterns (``*`` for the block number), so a
        first layer-wise request needs no module paths."""
        with readable_errors(self.failures, session):
            entry = self.expand_checkpoints(checkpoints)[0]
            loaded = load_model(entry.model, revision=entry.revision, trust_remote_code=False,
                                safetensors_only=not self._is_local(entry.model, "model"))
            return gr.Dropdown(choices=["blocks", *linear_layer_patterns(loaded.model)], value="blocks")

    # -- History tab -----------------------------------------------------------------------------
    def history_table(self) -> pd.DataFrame:
        """Past evaluations, newest first, every column (the API's and the CSV download's table)."""
        return pd.DataFrame(self.history.rows(), columns=HISTORY_COLUMNS)

    def history_view(self) -> pd.DataFrame:
        """The History tab's table: ``history_table`` with only the columns that tell its rows apart
        (a seed only where it drew the sample, a reference or layers only once one differs)."""
        table = self.history_table()
        return table[distinguishing_columns(table.values.tolist())]

    def history_selected(self, event: gr.SelectData) -> tuple[str, str]:
        """The clicked row's ``id`` (the table's last column, whatever else it shows), and a line saying
        which measurement the buttons act on."""
        row_id = str((event.row_value or [""])[-1] or "")
        found = self.history.find(row_id) if row_id else None
        if found is None:
            return "", NOTHING_SELECTED
        fields, stored = found
        return row_id, (f"Selected: `{_short(str(fields['model']))}` on `{_short(str(fields['dataset']))}`, "
                        f"D_LR {_fmt(stored.report.dlr)} ({stored.created} UTC, id `{row_id}`)")

    def reopen(self, row_id: str) -> tuple[Any, ...]:
        """A stored result in the Evaluate view, its request in the Evaluate fields: the selected tab,
        the fields (model, revision, dataset, config, split, then the APP options), the result."""
        with readable_errors():
            found = self.history.find(row_id) if row_id else None
            if found is None:
                raise RequestError("select a row of the history first (it may have been deleted)")
            fields, stored = found
            outcome = Outcome(stored.report, True, stored.created)
            figure, files = self._result_files(stored.report, _short(fields["model"]), row_id)
            # a value the store leaves empty (a seed that drew nothing) is the option's default
            options = [getattr(_DEFAULTS, name) if fields.get(name) is None else fields[name] for name in MeasurementOptions.on(APP)]
            return (
                gr.Tabs(selected="evaluate"),
                *(fields[name] or "" for name in ("model", "revision", "dataset", "dataset_config", "split")),
                *("" if value is None else value for value in options),
                headline_markdown(stored.report), details_markdown(stored.report, outcome), baselines_frame(stored.report),
                figure, files, result_markdown(stored.report),
            )

    def delete_rows(self, row_id: str) -> tuple[pd.DataFrame, str, str]:
        """Forget the selected measurement: the table without it, and nothing selected."""
        with readable_errors():
            if not row_id or not self.history.delete([row_id]):
                raise RequestError("select a row of the history first (it may have been deleted)")
            return self.history_view(), "", NOTHING_SELECTED

    def history_downloads(self) -> list[str]:
        """The whole history as CSV (the table's columns) and JSON (every request and full report)."""
        with readable_errors():
            table, documents = self.history_table(), self.history.documents()
            csv_path, json_path = self.downloads / "dlr-history.csv", self.downloads / "dlr-history.json"
            write_atomic(csv_path, table.to_csv(index=False))
            write_atomic(json_path, json.dumps(documents, indent=2, allow_nan=True) + "\n")
            return [str(csv_path), str(json_path)]

    def demo_examples(self) -> list[list[Any]]:
        if not self.demo_paths:
            return []
        paths = {name: str(path) for name, path in self.demo_paths.items()}
        return [
            [paths["rich"], "", paths["data"], "", "test", 360, 32, "", 0, paths["initial"], ""],
            [paths["lazy"], "", paths["data"], "", "test", 360, 32, "", 0, paths["initial"], ""],
        ]


# --- presentation ----------------------------------------------------------------------------------
class readable_errors:
    """Turn errors into a ``gr.Error`` (a message, never a traceback) and note it for the session, whose
    ``.failure`` step then shows it in place of the result."""

    def __init__(self, notes: FailureNotes | None = None, session: gr.Request | None = None) -> None:
        self.notes, self.session = notes, session

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, error, trace) -> bool:
        if error is None or isinstance(error, (KeyboardInterrupt, SystemExit)):
            return False
        if isinstance(error, gr.Error):
            title, message = error.title, error.message
        elif isinstance(error, DLRError):
            title, message = "Cannot measure D_LR", str(error)
        else:
            log.exception("unexpected error in the app")
            first_line = (str(error).splitlines() or [""])[0][:300]
            title, message = "Something went wrong", f"unexpected {type(error).__name__}: {first_line} (the server log has the details)"
        if self.notes is not None:
            self.notes.record(self.session, title, message)
        if isinstance(error, gr.Error):
            return False
        raise gr.Error(html.escape(message, quote=False), title=title, print_exception=False) from None


def failure_markdown(note: tuple[str, str] | None) -> str:
    """The error in the result area: it stays until the next run, and says that nothing stale is shown."""
    title, message = note or ("The request failed", "the server gave no reason (a full queue, or a lost connection)")
    quoted = "\n> ".join(html.escape(message, quote=False).splitlines())
    return f"## ⚠ {title}\n> {quoted}\n\nNo result is shown: correct the input and run it again."


def _verdict_cell(verdict: Any, starts_run: bool) -> str:
    """The Compare table's verdict: the label; "run start" for the checkpoint a run's others are read
    against; "(abs)" when it is on the absolute scale (no initial known). Short, so a phone shows it whole."""
    if starts_run and verdict.dlr_initial is None:
        return "run start"
    return verdict.label if verdict.dlr_initial is not None else f"{verdict.label} (abs)"


def _empty(columns: list[str]) -> pd.DataFrame:
    return pd.DataFrame([], columns=columns)


def _base_model_name(folder: Path) -> str | None:
    """The model a checkpoint was fine-tuned from, as its ``config.json`` names it (``_name_or_path``)."""
    try:
        name = json.loads((folder / "config.json").read_text()).get("_name_or_path")
    except (OSError, ValueError, AttributeError):
        return None
    return name if isinstance(name, str) and name.strip() and Path(name).expanduser() != folder else None


def linear_layer_patterns(model: torch.nn.Module) -> list[str]:
    """Module paths of the model's linear layers (``is_linear_layer``: GPT-2's Conv1D and LoRA layers too), block
    numbers replaced by ``*`` (one pattern per kind of layer)."""
    paths = (name for name, module in model.named_modules() if is_linear_layer(module))
    return list(dict.fromkeys(re.sub(r"(?<=\.)\d+(?=\.|$)", "*", path) for path in paths))


def _short(name: str) -> str:
    path = Path(str(name))
    if path.is_absolute() or str(name).startswith("."):
        parts = path.parts[-2:]
        return "/".join(parts)
    return str(name)


def _unique_names(keys: list[str]) -> dict[str, str]:
    """Short names for runs: each one's folder name, or its last two path parts when another run shares it."""
    shared = Counter(Path(key).name for key in set(keys))
    return {key: Path(key).name if shared[Path(key).name] == 1 else _short(key) for key in keys}


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")[:60] or "model"


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return "nan" if not math.isfinite(value) else f"{value:.{digits}g}" if abs(value) >= 1e4 or abs(value) < 1e-3 else f"{value:.{digits}f}"
    return str(value)


def headline_markdown(report: EvaluationReport) -> str:
    """D_LR and the engine's verdict: on the change from initialisation when a reference was measured,
    else on the absolute scale (the verdict says which, and what that scale means for this p and C)."""
    verdict = report.verdict
    marker = " ⚠ degenerate" if report.degenerate else ""
    return (
        f"## D_LR = {report.dlr:.4f} — {verdict.label}{marker}\n"
        f"{verdict.text}.  \n*Verdict on the {verdict.basis}* · 0 = maximally rich (features collapsed onto the "
        "learned function) · 1 = maximally lazy (features spread over directions the head hardly reads)"
    )


def share_link(request: Request) -> str:
    """A relative link (``?model=…&dataset=…``) that opens the app with this request's fields filled in."""
    values = {
        "model": request.model, "revision": request.revision, "dataset": request.dataset,
        "dataset_config": request.dataset_config, "split": request.split, "processor": request.processor,
        **{name: getattr(request.options, name) for name in MeasurementOptions.on(APP)},
    }
    return "?" + urllib.parse.urlencode({name: value for name, value in values.items() if value not in (None, "")})


def result_markdown(report: EvaluationReport) -> str:
    """The result as a Markdown table to paste into an issue or a paper's notes."""
    dataset = report.dataset
    lines = [
        f"**{report.model.get('id')}** on **{dataset.get('id')}** [{dataset.get('split')}], "
        f"n = {report.result.num_samples}: {report.verdict.text}",
        "",
        "| measure | value |",
        "|---|---|",
    ]
    lines += [f"| {row.measure} | {row.value} |" for row in baselines_frame(report).itertuples()]
    return "\n".join(lines) + "\n"


def details_markdown(report: EvaluationReport, outcome: Outcome, link: str | None = None) -> str:
    r = report.result
    model = report.model
    where = model.get("commit") and f"commit `{model['commit'][:10]}`" or (outcome.key.model_ref[:17] if outcome.key else "")
    lines = [
        f"**Model** `{model.get('id')}` ({model.get('class')}, {where})  ",
        f"**Dataset** `{report.dataset.get('id')}` [{report.dataset.get('split')}] · "
        f"{report.dataset.get('num_examples')} examples → n = {r.num_samples} samples  ",
        f"**Head** `{report.head.get('layer') or report.head.get('module_path')}` · {report.head.get('between')}  ",
        f"**rank r** = {r.rank} · **feature rank** = {r.feature_rank} · **p** = {r.feature_dim} · **C** = {r.num_outputs}",
    ]
    if r.degenerate:
        lines.append(f"\n> ⚠ **Degenerate**: {r.degenerate_reason or 'the learned function spans the whole feature space'} "
                     "— D_LR then only measures how isotropic the spectrum is.")
    for warning in report.warnings:
        if not (r.degenerate and warning == r.degenerate_reason):
            lines.append(f"\n> ⚠ {warning}")
    if outcome.cached:
        lines.append(f"\n*Answered from the history (measured {outcome.created} UTC).*")
    else:
        lines.append(f"\n*Measured in {outcome.seconds:.1f} s and stored in the history.*")
    if link:
        lines.append(f"[Link to this measurement]({link}) (opens the app with these fields filled in and shows this result)")
    return "\n".join(lines)


def baselines_frame(report: EvaluationReport) -> pd.DataFrame:
    b = report.baselines
    rows = [
        ["D_LR", report.dlr, "0 = rich, 1 = lazy (labels not used)"],
        ["accuracy", b.get("accuracy"), "reported, never used by D_LR"],
        ["NC1", b.get("nc1"), "within-class / between-class variability (0 = neural collapse)"],
        ["effective rank", b.get("effective_rank"), "RankMe of the features"],
        ["‖θ‖²", b.get("param_norm"), "squared parameter norm"],
    ]
    if "s_init" in b:
        rows.append(["S_init", b.get("s_init"), "linear CKA to the initial checkpoint's features"])
        rows.append(["‖θ − θ0‖ / ‖θ0‖", b.get("param_change"), "relative change from the initial checkpoint"])
    return pd.DataFrame([[name, _fmt(value), meaning] for name, value, meaning in rows], columns=BASELINE_COLUMNS)


INTRO = """# D_LR — how rich or lazy was this network's learning?
D_LR (Nam et al., ICLR 2026) compares a network's last-layer features with the function its head
computes: **0** when the features collapsed onto the learned function (*rich* dynamics), **1** when
they stay spread over directions the head hardly reads (*lazy*). It uses no labels, so it moves
independently of accuracy. Enter a Hub model or a local checkpoint, or click a demo example."""


def _data_inputs(tab: str, defaults: list[Any], example: dict[str, Any]) -> tuple[gr.components.Component, ...]:
    """The inputs every multi-checkpoint tab shares, in its column: dataset, config, split, then number of
    samples, batch size and seed (the demo example's values, ``compare-num_samples``-style element ids)."""
    dataset = gr.Textbox(label="Dataset", value=defaults[2])
    with gr.Row():
        config = gr.Textbox(label="Config", placeholder="default")
        split = gr.Textbox(label="Split", value=defaults[4], placeholder="test")
    with gr.Row():
        samples, batch, seed = (_option_input(name, example.get(name), elem_id=f"{tab}-{name}")
                                for name in ("num_samples", "batch_size", "seed"))
    return dataset, config, split, samples, batch, seed


def build_demo(app: DLRApp | None = None) -> gr.Blocks:
    """The Blocks app, queue configured; serve it with ``demo.launch(**launch_options())``."""
    app = app or DLRApp()
    cfg = app.config
    # one concurrency slot per device, shared by every event that runs a model
    slot = {"concurrency_limit": cfg.concurrency, "concurrency_id": f"device-{device_name()}"}
    examples = app.demo_examples()
    defaults = examples[0] if examples else ["", "", "", "", ""] + [None] * (len(MeasurementOptions.on(APP)) + 1)
    paths = {name: str(path) for name, path in (app.demo_paths or {}).items()}
    with gr.Blocks(title="D_LR — dynamical richness", analytics_enabled=False, delete_cache=(3600, 86400)) as demo:
        gr.Markdown(INTRO)
        with gr.Tabs() as tabs:
            with gr.Tab("Evaluate", id="evaluate"):
                with gr.Row():
                    with gr.Column(scale=2, min_width=320):
                        model = gr.Textbox(label="Model", elem_id="evaluate-model", value=defaults[0], placeholder="ORG/NAME or /path/to/checkpoint",
                                           info="Hub id (safetensors weights only) or local folder")
                        revision = gr.Textbox(label="Revision", placeholder="main", info="branch, tag or commit (Hub)")
                        dataset = gr.Textbox(label="Dataset", value=defaults[2], placeholder="ORG/NAME or /path/to/data",
                                             info="Hub id, local folder (save_to_disk) or data file")
                        with gr.Row():
                            dataset_config = gr.Textbox(label="Config", placeholder="default")
                            split = gr.Textbox(label="Split", value=defaults[4], placeholder="test")
                        caps = {"num_samples": f"at most {cfg.max_samples}", "batch_size": f"at most {cfg.max_batch}"}
                        options = MeasurementOptions.on(APP)
                        example = dict(zip(options, defaults[5:]))
                        settings = {}
                        with gr.Row():
                            for name in MAIN_OPTIONS:
                                settings[name] = _option_input(name, example.get(name), caps.get(name), f"evaluate-{name}")
                        with gr.Accordion("More options", open=False):
                            for name in options:
                                if name not in MAIN_OPTIONS:
                                    settings[name] = _option_input(name, example.get(name), caps.get(name), f"evaluate-{name}")
                            processor = gr.Textbox(
                                label="Processor", placeholder="ORG/NAME or /path/with/tokenizer",
                                info="where the tokenizer / image processor is, for a checkpoint saved without one "
                                     "(otherwise its run folder and the base model in its config are tried)",
                            )
                        run = gr.Button("Measure D_LR", variant="primary", elem_id="evaluate-button")
                        inputs = [model, revision, dataset, dataset_config, split, *(settings[name] for name in options), processor]
                        demo_examples = None
                        if examples:
                            demo_examples = gr.Examples(
                                examples, inputs, label="Built-in demo (offline): click one to run it",
                                example_labels=["rich ViT on digits (full back-propagation)", "lazy ViT on digits (last layer only)"],
                                cache_examples=False, api_name="load_demo_example", api_visibility="private",
                                elem_id="demo-examples",
                            )
                    with gr.Column(scale=3, min_width=320):
                        headline = gr.Markdown("## D_LR = ?\nRun a measurement to see it here.", elem_id="dlr-headline")
                        details = gr.Markdown(elem_id="dlr-details")
                        baselines = gr.Dataframe(headers=BASELINE_COLUMNS, label="D_LR and the baselines", interactive=False, wrap=True,
                                                 column_widths=["22%", "16%", "62%"], elem_id="dlr-baselines")
                        plot = gr.Plot(label="Spectrum, utilisation U(k), quality Q(k), π_k", show_label=False, elem_id="dlr-plot")
                        report_file = gr.File(label="JSON report and the plot as PNG", file_count="multiple", interactive=False,
                                              elem_id="dlr-report")
                        with gr.Accordion("Copy as Markdown", open=False):
                            copy_markdown = gr.Code(language="markdown", label="Result as Markdown", buttons=["copy"],
                                                    interactive=False, elem_id="dlr-markdown")
            with gr.Tab("Compare", id="compare"):
                with gr.Row():
                    with gr.Column(scale=2, min_width=320):
                        checkpoints = gr.Textbox(
                            label="Checkpoints", lines=5, elem_id="compare-checkpoints",
                            placeholder="one per line: ORG/NAME@revision, /path/checkpoint-500, …\nor training output folders",
                            info="a training output folder (a run) is expanded into its checkpoint-* folders, in step order; "
                                 "each run is one line of the plot",
                        )
                        c_dataset, c_config, c_split, c_samples, c_batch, c_seed = _data_inputs("compare", defaults, example)
                        c_reference = _option_input(
                            "reference", elem_id="compare-reference",
                            info="the initial checkpoint: every verdict is then on the change from it (with S_init); "
                                 "empty: each run's first checkpoint is its initial",
                        )
                        compare = gr.Button("Compare", variant="primary", elem_id="compare-button")
                        c_inputs = [checkpoints, c_dataset, c_config, c_split, c_samples, c_batch, c_seed, c_reference]
                        compare_examples = None
                        if examples:
                            compare_examples = gr.Examples(
                                [["\n".join(paths[name] for name in ("initial", "lazy", "rich")), paths["data"], "", "test", 360, 32, 0,
                                  paths["initial"]]],
                                c_inputs, label="Built-in demo: initial, lazy and rich checkpoints",
                                example_labels=["demo: initial → lazy → rich"],
                                cache_examples=False, api_name="load_compare_example", api_visibility="private",
                            )
                    with gr.Column(scale=3, min_width=320):
                        c_message = gr.Markdown(elem_id="compare-message")
                        c_table = gr.Dataframe(headers=COMPARE_COLUMNS, label="Checkpoints", interactive=False, wrap=False,
                                               max_chars=16, elem_id="compare-table")
                        c_plot = gr.Plot(label="D_LR and accuracy of each run", show_label=False, elem_id="compare-plot")
                        c_spectra = gr.Plot(label="Spectra of every checkpoint", show_label=False, elem_id="compare-spectra")
                        c_file = gr.File(label="JSON reports and the plot as PNG", file_count="multiple", interactive=False)
            with gr.Tab("Layers", id="layers"):
                with gr.Row():
                    with gr.Column(scale=2, min_width=320):
                        l_checkpoints = gr.Textbox(
                            label="Checkpoints", lines=3, elem_id="layers-checkpoints",
                            placeholder="one per line: ORG/NAME@revision or /path/to/checkpoint",
                            info="every model's profile is drawn in the same plot",
                        )
                        with gr.Row():
                            l_layers = gr.Dropdown(
                                ["blocks"], value="blocks", allow_custom_value=True, label="Layers", elem_id="layers-choice",
                                info="'blocks': every block's output, read where the head reads; or module-path "
                                     "patterns ('*' = one path part, comma-separated)",
                            )
                            l_list = gr.Button("List the model's layers", size="sm", elem_id="layers-list")
                        l_dataset, l_config, l_split, l_samples, l_batch, l_seed = _data_inputs("layers", defaults, example)
                        l_reference = _option_input("reference", example.get("reference"))
                        profile = gr.Button("Measure the profile", variant="primary", elem_id="layers-button")
                        l_inputs = [l_checkpoints, l_dataset, l_config, l_split, l_layers, l_samples, l_batch, l_seed, l_reference]
                        layers_examples = None
                        if examples:
                            layers_examples = gr.Examples(
                                [["\n".join(paths[name] for name in ("rich", "lazy")), paths["data"], "", "test", "blocks", 360, 32, 0,
                                  paths["initial"]]],
                                l_inputs, label="Built-in demo: rich and lazy, every block",
                                example_labels=["demo: rich vs lazy across depth"],
                                cache_examples=False, api_name="load_layers_example", api_visibility="private",
                            )
                    with gr.Column(scale=3, min_width=320):
                        l_message = gr.Markdown(elem_id="layers-message")
                        l_plot = gr.Plot(label="D_LR and S_init against depth", show_label=False, elem_id="layers-plot")
                        l_table = gr.Dataframe(headers=PROFILE_COLUMNS, label="Profile", interactive=False, wrap=False,
                                               max_chars=16, elem_id="layers-table")
                        l_file = gr.File(label="JSON reports and the plot as PNG", file_count="multiple", interactive=False)
            with gr.Tab("History", id="history"):
                gr.Markdown("Every measurement is kept on this server; a repeated request is answered from it at once.")
                selected = gr.State("")
                selection = gr.Markdown(NOTHING_SELECTED, elem_id="history-selection")
                with gr.Row():
                    reopen = gr.Button("Open in Evaluate", elem_id="history-open")
                    delete = gr.Button("Delete", variant="stop", elem_id="history-delete")
                    refresh = gr.Button("Refresh")
                    download = gr.Button("Download CSV and JSON", elem_id="history-download")
                history = gr.Dataframe(headers=HISTORY_COLUMNS, label="Past evaluations",
                                       interactive=False, wrap=True, elem_id="history-table")
                history_files = gr.File(label="History", file_count="multiple", interactive=False, elem_id="history-files")

        # each run: the result, or (.failure) its message in the result's place with nothing stale left
        heavy = [
            (app.evaluate_ui, app.evaluate_failed, inputs, [headline, details, baselines, plot, report_file, copy_markdown],
             run, demo_examples, "evaluate"),
            (app.compare_ui, app.compare_failed, c_inputs, [c_message, c_table, c_plot, c_spectra, c_file],
             compare, compare_examples, "compare"),
            (app.layers_ui, app.layers_failed, l_inputs, [l_message, l_plot, l_table, l_file],
             profile, layers_examples, "layers"),
        ]
        for function, failed, fn_inputs, results, button, button_examples, name in heavy:
            events = [button.click(function, fn_inputs, [*results, history], api_name=name, **slot)]
            if button_examples is not None:
                events.append(button_examples.load_input_event.then(
                    function, fn_inputs, [*results, history], api_visibility="private", **slot))
            for event in events:
                event.failure(failed, None, results, api_visibility="private", queue=False)
        l_list.click(app.layer_choices, l_checkpoints, l_layers, api_name="layer_choices", **slot)
        refresh.click(app.history_view, None, history, api_name="history")
        history.select(app.history_selected, None, [selected, selection], api_visibility="private", queue=False)
        reopen.click(app.reopen, selected, [tabs, model, revision, dataset, dataset_config, split,
                                            *(settings[name] for name in options), headline, details, baselines, plot,
                                            report_file, copy_markdown], api_visibility="private")
        delete.click(app.delete_rows, selected, [history, selected, selection], api_visibility="private")
        download.click(app.history_downloads, None, history_files, api_name="history_download")
        demo.load(app.history_view, None, history, api_visibility="private")
        evaluate_results = [headline, details, baselines, plot, report_file, copy_markdown]
        linked = demo.load(app.fields_from_url, None, inputs, api_visibility="private", queue=False).then(
            app.evaluate_linked, inputs, [*evaluate_results, history], api_visibility="private", **slot)
        linked.failure(app.evaluate_failed, None, evaluate_results, api_visibility="private", queue=False)
    demo.queue(max_size=cfg.queue_size, default_concurrency_limit=cfg.concurrency)
    return demo


CSS = """
/* a visible keyboard focus on every text field */
textarea:focus-visible, input:focus-visible { outline: 3px solid #3730a3 !important; outline-offset: 1px; }
/* on a phone the result tables keep their names and first numbers on screen (the rest scrolls sideways) */
@media (max-width: 480px) {
  #compare-table .cell-wrap, #layers-table .cell-wrap { font-size: 12px !important; padding: 4px !important; }
  #compare-table .cell-wrap span, #layers-table .cell-wrap span { padding: 0 !important; }
  #compare-table th:nth-child(1), #compare-table td:nth-child(1), #layers-table th:nth-child(1), #layers-table td:nth-child(1) { width: 80px !important; min-width: 80px !important; max-width: 80px !important; }
  #compare-table th:nth-child(2), #compare-table td:nth-child(2), #layers-table th:nth-child(2), #layers-table td:nth-child(2) { width: 108px !important; min-width: 108px !important; max-width: 108px !important; }
  #compare-table th:nth-child(3), #compare-table td:nth-child(3), #layers-table th:nth-child(3), #layers-table td:nth-child(3) { width: 60px !important; min-width: 60px !important; max-width: 60px !important; }
  #compare-table th:nth-child(4), #compare-table td:nth-child(4), #layers-table th:nth-child(4), #layers-table td:nth-child(4) { width: 74px !important; min-width: 74px !important; max-width: 74px !important; }
}
"""


PLOT_DESCRIPTIONS = {
    "dlr-plot": "Four panels for the measured checkpoint: the eigenvalue spectrum, the cumulative utilisation U(k), "
                "the cumulative quality Q(k) and pi_k against the eigen-direction k; the numbers are in the table above",
    "compare-plot": "D_LR (top) and accuracy (bottom) of each run's checkpoints, one line per run; "
                    "the numbers are in the table above",
    "compare-spectra": "Every compared checkpoint's eigenvalue spectrum, cumulative utilisation U(k), cumulative "
                       "quality Q(k) and pi_k against the eigen-direction k, one colour per checkpoint",
    "layers-plot": "D_LR (and S_init with a reference) against depth, one line per model, the final head as a star; "
                   "the numbers are in the table below",
}
"""The plots' text alternative: an image's alt (Gradio writes "undefined plot visualising provided data" for
matplotlib figures), an interactive plot's accessible name."""

ACCESSIBILITY_SCRIPT = """
() => {
  const descriptions = PLOT_DESCRIPTIONS;
  const repair = () => {
    // Gradio's empty-output placeholders carry an aria-label without a role (axe: aria-prohibited-attr)
    document.querySelectorAll(".empty[aria-label]:not([role])").forEach((box) => box.setAttribute("role", "group"));
    for (const [id, text] of Object.entries(descriptions)) {
      document.querySelectorAll(`#${id} img`).forEach((img) => { if (img.alt !== text) img.alt = text; });
      document.querySelectorAll(`#${id} .js-plotly-plot:not([aria-label])`).forEach((plot) => {
        plot.setAttribute("role", "figure");
        plot.setAttribute("aria-label", text);
      });
    }
  };
  repair();
  new MutationObserver(repair).observe(document.body, { childList: true, subtree: true, attributeFilter: ["alt"] });
}
""".replace("PLOT_DESCRIPTIONS", json.dumps(PLOT_DESCRIPTIONS))


def theme() -> gr.themes.Base:
    """Gradio's Soft theme with text dark enough for WCAG AA (4.5:1): its hint text is 2.5:1, its label chips 3.6:1."""
    return gr.themes.Soft().set(
        block_info_text_color="*neutral_600",
        block_label_text_color="*primary_800",
        block_title_text_color="*primary_800",
        body_text_color_subdued="*neutral_600",
        button_primary_background_fill="*primary_600",
        button_primary_background_fill_hover="*primary_700",
    )


def launch_options() -> dict[str, Any]:
    """Keyword arguments for ``demo.launch``: theme, style and script, and the server settings Gradio reads from the environment."""
    return {"theme": theme(), "show_error": False, "css": CSS, "js": ACCESSIBILITY_SCRIPT}
