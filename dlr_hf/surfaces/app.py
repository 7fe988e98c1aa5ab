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
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd
import torch

import dlr_hf
from dlr_hf.engine import (
    APP,
    EvaluationReport,
    MeasurementOptions,
    ensure_demo,
    evaluate,
    load_data,
    load_model,
    looks_like_path,
    reading,
    write_atomic,
)
from dlr_hf.errors import DLRError
from dlr_hf.surfaces.history import HISTORY_COLUMNS, HistoryStore, RequestKey, model_reference
from dlr_hf.surfaces.plots import trajectory_figure, visualisation_figure

log = logging.getLogger(__name__)

CHECKPOINT_DIR = re.compile(r"^checkpoint-(\d+)$")
BASELINE_COLUMNS = ["measure", "value", "meaning"]
COMPARE_COLUMNS = ["checkpoint", "step", "D_LR", "reading", "accuracy", "rank r", "p", "C", "from history"]


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


def _option_input(name: str, value: Any = None, info: str | None = None) -> gr.components.Component:
    """The input of one APP option: a whole-number box or a textbox, labelled and explained from its declaration."""
    spec = MeasurementOptions.spec(name)
    default = getattr(_DEFAULTS, name)
    label = spec["label"][:1].upper() + spec["label"][1:]
    value = default if value is None else value
    if isinstance(default, int) and not isinstance(default, bool):
        return gr.Number(label=label, value=value, precision=0, info=info or spec["help"])
    return gr.Textbox(label=label, value=value or "", info=info or spec["help"])


@dataclass
class Request:
    """A validated evaluation request: what to measure, and the measurement options (``options.on(APP)``)."""

    model: str
    dataset: str
    revision: str | None = None
    dataset_config: str | None = None
    split: str | None = None
    options: MeasurementOptions = field(default_factory=MeasurementOptions)

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
    label: str
    model: str
    revision: str | None
    step: int | None


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
                 **named_settings: Any) -> Request:
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
            options=MeasurementOptions(**values),
        )
        self._is_local(request.dataset, "dataset")
        self._is_local(request.model, "model")
        if request.reference:
            self._is_local(request.reference, "reference")
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

    @staticmethod
    def _key(request: Request, model_ref: str, source: dict[str, Any], reference_ref: str | None) -> RequestKey:
        fingerprint = source.get("fingerprint") or f"{source.get('id')}|{source.get('config')}|{source.get('num_rows')}"
        return RequestKey(
            model_ref=model_ref,
            dataset_fingerprint=str(fingerprint),
            split=source.get("split"),
            settings=request.options.keyed(),
            reference_ref=reference_ref,
            version=dlr_hf.__version__,
        )

    # -- Evaluate tab --------------------------------------------------------------------------
    def evaluate_ui(self, model, revision, dataset, dataset_config, split, num_samples, batch_size,
                    layer, seed, reference, progress=gr.Progress(track_tqdm=True)):
        """Measure D_LR of one checkpoint: headline, details, baselines, plots, JSON report, history."""
        with readable_errors():
            request = self.validate(model, revision, dataset, dataset_config, split, num_samples, batch_size,
                                    layer, seed, reference)
            outcome = self.measure(request, progress)
            report = outcome.report
            figure = visualisation_figure([report.result], [_short(request.model)])
            _release(figure)
            path = self._write_report(report, outcome)
            return (
                headline_markdown(report),
                details_markdown(report, outcome),
                baselines_frame(report),
                figure,
                str(path),
                self.history_table(),
            )

    def _write_report(self, report: EvaluationReport, outcome: Outcome) -> Path:
        digest = outcome.key.digest[:10] if outcome.key else "report"
        path = self.downloads / f"dlr-report-{_slug(_short(report.model.get('id') or 'model'))}-{digest}.json"
        write_atomic(path, report.to_json() + "\n")
        return path

    # -- Compare tab ---------------------------------------------------------------------------
    def expand_checkpoints(self, text: Any) -> list[Checkpoint]:
        """Entries (one per line or comma-separated): Hub ids (``id@revision``), local folders, or a
        training output folder whose ``checkpoint-*`` subfolders are taken in step order."""
        listed = _text(text, "checkpoints", limit=MAX_TEXT_LENGTH * self.config.max_checkpoints) or ""
        entries = [entry.strip() for entry in re.split(r"[\n,]", listed) if entry.strip()]
        if not entries:
            raise RequestError(
                "enter checkpoints to compare: Hub ids (ORG/NAME or ORG/NAME@revision), local checkpoint "
                "folders, or one training output folder holding checkpoint-* folders"
            )
        checkpoints: list[Checkpoint] = []
        for entry in entries:
            path = Path(entry).expanduser()
            if self._is_local(entry, "checkpoint"):
                children = [child for child in path.iterdir() if child.is_dir() and CHECKPOINT_DIR.match(child.name)] if path.is_dir() else []
                if children and not (path / "config.json").exists():
                    for child in sorted(children, key=lambda c: int(CHECKPOINT_DIR.match(c.name).group(1))):
                        checkpoints.append(Checkpoint(child.name, str(child), None, int(CHECKPOINT_DIR.match(child.name).group(1))))
                    continue
                match = CHECKPOINT_DIR.match(path.name)
                checkpoints.append(Checkpoint(path.name if match else _short(entry), entry, None, int(match.group(1)) if match else None))
            else:
                model, _, revision = entry.partition("@")
                checkpoints.append(Checkpoint(entry, model, revision or None, None))
        if len(checkpoints) > self.config.max_checkpoints:
            raise RequestError(
                f"{len(checkpoints)} checkpoints is over this server's cap of {self.config.max_checkpoints} "
                "(DLR_HF_MAX_CHECKPOINTS); compare fewer at a time"
            )
        return checkpoints

    def compare_ui(self, checkpoints, dataset, dataset_config, split, num_samples, batch_size, seed,
                   progress=gr.Progress(track_tqdm=True)):
        """D_LR and accuracy of several checkpoints on one dataset: table, line plot, JSON, history."""
        with readable_errors():
            entries = self.expand_checkpoints(checkpoints)
            requests = [
                (entry, self.validate(entry.model, entry.revision, dataset, dataset_config, split,
                                      num_samples=num_samples, batch_size=batch_size, seed=seed))
                for entry in entries
            ]
            rows, reports, keys = [], [], []
            for index, (entry, request) in enumerate(requests):
                progress((index, len(requests)), desc=f"checkpoint {entry.label}")
                try:
                    outcome = self.measure(request)
                except DLRError as error:
                    raise DLRError(f"{entry.label}: {error}") from error
                result = outcome.report.result
                keys.append(outcome.key.digest if outcome.key else entry.label)
                reports.append({"checkpoint": entry.label, "step": entry.step, **outcome.report.to_dict()})
                rows.append([
                    entry.label, "" if entry.step is None else entry.step, round(result.dlr, 4), reading(result.dlr),
                    None if result.accuracy is None else round(result.accuracy, 4),
                    result.rank, result.feature_dim, result.num_outputs, "yes" if outcome.cached else "no",
                ])
            table = pd.DataFrame(rows, columns=COMPARE_COLUMNS)
            stepped = all(entry.step is not None for entry in entries) and len({e.step for e in entries}) == len(entries)
            x = [entry.step for entry in entries] if stepped else list(range(1, len(entries) + 1))
            figure = trajectory_figure(
                x,
                {"D_LR (0 = rich, 1 = lazy)": [row[2] for row in rows], "accuracy": [row[4] for row in rows]},
                xlabel="training step" if stepped else "checkpoint",
            )
            if not stepped:
                figure.axes[0].set_xticks(x, [_short(entry.label) for entry in entries], rotation=15)
            axis = figure.axes[0]
            if axis.lines:
                axis.lines[0].set_linewidth(2.5)  # D_LR is the headline series
            axis.set_title("D_LR (richness) beside accuracy, checkpoint by checkpoint")
            _release(figure)
            # named by the requests' keys: asking the same comparison again rewrites the same file
            digest = hashlib.sha256("".join(key for key in keys).encode()).hexdigest()[:10]
            path = self.downloads / f"dlr-compare-{digest}.json"
            write_atomic(path, json.dumps(reports, indent=2, allow_nan=True) + "\n")
            return table, figure, str(path), self.history_table()

    # -- History tab -----------------------------------------------------------------------------
    def history_table(self) -> pd.DataFrame:
        """Past evaluations, newest first."""
        return pd.DataFrame(self.history.rows(), columns=HISTORY_COLUMNS)

    def demo_examples(self) -> list[list[Any]]:
        if not self.demo_paths:
            return []
        paths = {name: str(path) for name, path in self.demo_paths.items()}
        return [
            [paths["rich"], "", paths["data"], "", "test", 360, 32, "", 0, paths["initial"]],
            [paths["lazy"], "", paths["data"], "", "test", 360, 32, "", 0, paths["initial"]],
        ]


# --- presentation ----------------------------------------------------------------------------------
class readable_errors:
    """Turn errors into a ``gr.Error`` the browser shows as a message, never a traceback."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, error, trace) -> bool:
        if error is None or isinstance(error, gr.Error):
            return False
        if isinstance(error, DLRError):
            raise gr.Error(html.escape(str(error), quote=False), title="Cannot measure D_LR", print_exception=False) from None
        if isinstance(error, (KeyboardInterrupt, SystemExit)):
            return False
        log.exception("unexpected error in the app")
        first_line = (str(error).splitlines() or [""])[0][:300]
        raise gr.Error(
            html.escape(f"unexpected {type(error).__name__}: {first_line} (the server log has the details)", quote=False),
            title="Something went wrong",
            print_exception=False,
        ) from None


def _short(name: str) -> str:
    path = Path(str(name))
    if path.is_absolute() or str(name).startswith("."):
        parts = path.parts[-2:]
        return "/".join(parts)
    return str(name)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")[:60] or "model"


def _release(figure) -> None:
    """Detach a figure from pyplot's registry (Gradio renders it later; pyplot must not keep it)."""
    import matplotlib.pyplot as plt

    plt.close(figure)


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return "nan" if not math.isfinite(value) else f"{value:.{digits}g}" if abs(value) >= 1e4 or abs(value) < 1e-3 else f"{value:.{digits}f}"
    return str(value)


def headline_markdown(report: EvaluationReport) -> str:
    value = report.dlr
    words = reading(value)
    marker = " ⚠ degenerate" if report.degenerate else ""
    return (
        f"## D_LR = {value:.4f} — {words}{marker}\n"
        "0 = maximally rich (the features collapse onto the function the network learned) · "
        "1 = maximally lazy (features spread over directions the head hardly reads)"
    )


def details_markdown(report: EvaluationReport, outcome: Outcome) -> str:
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


def build_demo(app: DLRApp | None = None) -> gr.Blocks:
    """The Blocks app, queue configured; serve it with ``demo.launch(**launch_options())``."""
    app = app or DLRApp()
    cfg = app.config
    # one concurrency slot per device, shared by every event that runs a model
    slot = {"concurrency_limit": cfg.concurrency, "concurrency_id": f"device-{device_name()}"}
    examples = app.demo_examples()
    defaults = examples[0] if examples else ["", "", "", "", ""] + [None] * len(MeasurementOptions.on(APP))
    with gr.Blocks(title="D_LR — dynamical richness", analytics_enabled=False, delete_cache=(3600, 86400)) as demo:
        gr.Markdown(INTRO)
        with gr.Tabs():
            with gr.Tab("Evaluate", id="evaluate"):
                with gr.Row():
                    with gr.Column(scale=2, min_width=320):
                        model = gr.Textbox(label="Model", value=defaults[0], placeholder="ORG/NAME or /path/to/checkpoint",
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
                                settings[name] = _option_input(name, example.get(name), caps.get(name))
                        with gr.Accordion("More options", open=False):
                            for name in options:
                                if name not in MAIN_OPTIONS:
                                    settings[name] = _option_input(name, example.get(name), caps.get(name))
                        run = gr.Button("Measure D_LR", variant="primary", elem_id="evaluate-button")
                        inputs = [model, revision, dataset, dataset_config, split, *(settings[name] for name in options)]
                        demo_examples = None
                        if examples:
                            demo_examples = gr.Examples(
                                examples, inputs, label="Built-in demo (offline): click one to run it",
                                example_labels=["rich ViT on digits (full back-propagation)", "lazy ViT on digits (last layer only)"],
                                cache_examples=False, api_name="load_demo_example", api_visibility="private",
                                elem_id="demo-examples",
                            )
                    with gr.Column(scale=3, min_width=420):
                        headline = gr.Markdown("## D_LR = ?\nRun a measurement to see it here.", elem_id="dlr-headline")
                        details = gr.Markdown(elem_id="dlr-details")
                        baselines = gr.Dataframe(headers=BASELINE_COLUMNS, label="D_LR and the baselines", interactive=False, wrap=True,
                                                 column_widths=["22%", "16%", "62%"])
                        plot = gr.Plot(label="Spectrum, utilisation U(k), quality Q(k), π_k", show_label=False, format="png",
                                       elem_id="dlr-plot")
                        report_file = gr.File(label="JSON report", interactive=False, elem_id="dlr-report")
            with gr.Tab("Compare", id="compare"):
                with gr.Row():
                    with gr.Column(scale=2, min_width=320):
                        checkpoints = gr.Textbox(
                            label="Checkpoints", lines=5,
                            placeholder="one per line: ORG/NAME@revision, /path/checkpoint-500, …\nor one training output folder",
                            info="a training output folder is expanded into its checkpoint-* folders, in step order",
                        )
                        c_dataset = gr.Textbox(label="Dataset", value=defaults[2])
                        with gr.Row():
                            c_config = gr.Textbox(label="Config", placeholder="default")
                            c_split = gr.Textbox(label="Split", value=defaults[4], placeholder="test")
                        with gr.Row():
                            c_samples, c_batch, c_seed = (
                                _option_input(name, example.get(name)) for name in ("num_samples", "batch_size", "seed")
                            )
                        compare = gr.Button("Compare", variant="primary", elem_id="compare-button")
                        c_inputs = [checkpoints, c_dataset, c_config, c_split, c_samples, c_batch, c_seed]
                        compare_examples = None
                        if examples:
                            paths = {name: str(path) for name, path in app.demo_paths.items()}
                            compare_examples = gr.Examples(
                                [["\n".join(paths[name] for name in ("initial", "lazy", "rich")), paths["data"], "", "test", 360, 32, 0]],
                                c_inputs, label="Built-in demo: initial, lazy and rich checkpoints",
                                example_labels=["demo: initial → lazy → rich"],
                                cache_examples=False, api_name="load_compare_example", api_visibility="private",
                            )
                    with gr.Column(scale=3, min_width=420):
                        c_plot = gr.Plot(label="D_LR and accuracy against checkpoint", show_label=False, format="png",
                                         elem_id="compare-plot")
                        c_table = gr.Dataframe(headers=COMPARE_COLUMNS, label="Checkpoints", interactive=False, wrap=True)
                        c_file = gr.File(label="JSON reports", interactive=False)
            with gr.Tab("History", id="history"):
                gr.Markdown(f"Every measurement is kept in `{app.history.path}`; a repeated request is answered from it at once.")
                history = gr.Dataframe(headers=HISTORY_COLUMNS, label="Past evaluations",
                                       interactive=False, wrap=True, elem_id="history-table")
                refresh = gr.Button("Refresh")

        outputs = [headline, details, baselines, plot, report_file, history]
        c_outputs = [c_table, c_plot, c_file, history]
        run.click(app.evaluate_ui, inputs, outputs, api_name="evaluate", **slot)
        compare.click(app.compare_ui, c_inputs, c_outputs, api_name="compare", **slot)
        refresh.click(app.history_table, None, history, api_name="history")
        demo.load(app.history_table, None, history, api_visibility="private")
        if demo_examples is not None:
            demo_examples.load_input_event.then(app.evaluate_ui, inputs, outputs, api_visibility="private", **slot)
            compare_examples.load_input_event.then(app.compare_ui, c_inputs, c_outputs, api_visibility="private", **slot)
    demo.queue(max_size=cfg.queue_size, default_concurrency_limit=cfg.concurrency)
    return demo


def launch_options() -> dict[str, Any]:
    """Keyword arguments for ``demo.launch``: theme and the server settings Gradio reads from the environment."""
    return {"theme": gr.themes.Soft(), "show_error": False}
