"""The app's result store: every evaluation kept in an embedded SQLite database.

A result is keyed by everything that determines it — the model's Hub commit (or a content hash
of a local folder), the dataset's fingerprint, split, every measurement option that changes the
numbers (``MeasurementOptions.keyed()``: number of samples, seed, layer, …), the reference (initial)
checkpoint and the package version — so a repeated request is answered from
the store at once, and a new package version never serves an old number.

The database path is ``$DLR_HF_HISTORY_DB`` (default ``~/.cache/dlr-hf/history.sqlite``, or under
``$DLR_HF_CACHE`` when that is set). Standard library only; one short-lived connection per call,
so the store is safe to use from Gradio's worker threads.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sqlite3
import threading
from contextlib import closing
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from dlr_hf.engine import EvaluationReport

HISTORY_ENV = "DLR_HF_HISTORY_DB"

# Files of a checkpoint folder that determine the model (weights, configs, tokenizer /
# processor files); training state (optimizer, scheduler, RNG, trainer_state.json) is left out.
MODEL_FILE_SUFFIXES = (".json", ".safetensors", ".bin", ".txt", ".model", ".tiktoken", ".pt", ".pth")
TRAINING_STATE_FILES = {
    "optimizer.pt", "scheduler.pt", "scaler.pt", "trainer_state.json", "training_args.bin", "rng_state.pth",
}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS evaluations (
    key TEXT PRIMARY KEY,
    created TEXT NOT NULL,
    model TEXT NOT NULL,
    revision TEXT,
    model_ref TEXT NOT NULL,
    dataset TEXT NOT NULL,
    dataset_config TEXT,
    split TEXT,
    dataset_fingerprint TEXT NOT NULL,
    num_samples INTEGER,
    seed INTEGER,
    layer TEXT,
    reference TEXT,
    version TEXT NOT NULL,
    dlr REAL,
    accuracy REAL,
    degenerate INTEGER,
    seconds REAL,
    report TEXT NOT NULL
)
"""

HISTORY_COLUMNS = [
    "when (UTC)", "model", "model ref", "dataset", "split", "n", "seed", "layer", "layers", "reference", "D_LR", "accuracy",
    "version", "id",
]
ALWAYS_SHOWN = ("when (UTC)", "model", "dataset", "n", "D_LR", "accuracy", "id")
"""Columns every row shows; the others only when they tell two rows apart (``distinguishing_columns``)."""
ID_LENGTH = 12
"""Characters of the key shown as a row's ``id`` (enough to tell a few thousand results apart)."""
REQUEST_FIELDS = ("model", "revision", "dataset", "dataset_config", "split", "num_samples", "seed", "layer", "reference")


def default_history_path() -> Path:
    """``$DLR_HF_HISTORY_DB``, else ``history.sqlite`` beside the demo cache."""
    explicit = os.environ.get(HISTORY_ENV)
    if explicit:
        return Path(explicit).expanduser()
    root = os.environ.get("DLR_HF_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "dlr-hf") / "history.sqlite"


# --- what identifies a model ---------------------------------------------------------------------
_hash_memo: dict[tuple[str, int, int], str] = {}
_hash_lock = threading.Lock()


def _file_digest(path: Path) -> str:
    """sha256 of one file, remembered by (path, size, mtime) so large weights are read once."""
    stat = path.stat()
    memo_key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    with _hash_lock:
        if memo_key in _hash_memo:
            return _hash_memo[memo_key]
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    value = digest.hexdigest()
    with _hash_lock:
        _hash_memo[memo_key] = value
    return value


def folder_hash(folder: str | Path) -> str:
    """A content hash of a checkpoint folder's model files (names and bytes), ``sha256:<hex>``."""
    root = Path(folder).expanduser()
    digest = hashlib.sha256()
    files = sorted(
        path for path in root.rglob("*")
        if path.is_file()
        and path.suffix in MODEL_FILE_SUFFIXES
        and path.name not in TRAINING_STATE_FILES
        and not path.name.startswith("rng_state")
        and not any(part.startswith(".") for part in path.relative_to(root).parts)
    )
    for path in files:
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + _file_digest(path).encode() + b"\n")
    return "sha256:" + digest.hexdigest()


def hub_commit(repo_id: str, revision: str | None) -> str | None:
    """The commit a Hub id (and revision) resolves to, or None when it cannot be resolved.

    Online this fetches the small ``config.json`` (the engine would fetch it anyway); offline it
    reads the local Hugging Face cache.
    """
    from huggingface_hub import hf_hub_download

    try:
        path = hf_hub_download(repo_id, "config.json", revision=revision)
    except Exception:  # unknown repo, no network, gated: the engine reports the real error
        return None
    return Path(path).parent.name


def model_reference(model: str, revision: str | None = None) -> str | None:
    """``sha256:<hex>`` for a local folder, ``<repo>@<commit>`` for a Hub id, None if unresolvable."""
    path = Path(model).expanduser()
    if path.is_dir():
        return folder_hash(path)
    commit = hub_commit(model, revision)
    return f"{model}@{commit}" if commit else None


# --- the key and the store ------------------------------------------------------------------------
@dataclass(frozen=True)
class RequestKey:
    """Everything a stored result depends on."""

    model_ref: str
    dataset_fingerprint: str
    split: str | None
    settings: tuple[tuple[str, Any], ...]  # MeasurementOptions.keyed()
    reference_ref: str | None
    version: str

    def setting(self, name: str) -> Any:
        return dict(self.settings).get(name)

    @property
    def digest(self) -> str:
        text = json.dumps(self.__dict__, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class StoredEvaluation:
    report: EvaluationReport
    created: str
    seconds: float | None


def _finite(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


class HistoryStore:
    """Evaluations in one SQLite file (created on first use)."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path).expanduser() if path else default_history_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with closing(self._connect()) as connection, connection:
            connection.execute(_SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        connection = sqlite3.connect(self.path, timeout=30)
        connection.execute("PRAGMA journal_mode=WAL")
        return connection

    def get(self, key: RequestKey) -> StoredEvaluation | None:
        with closing(self._connect()) as connection:
            row = connection.execute(
                "SELECT report, created, seconds FROM evaluations WHERE key = ?", (key.digest,)
            ).fetchone()
        if row is None:
            return None
        return StoredEvaluation(EvaluationReport.from_dict(json.loads(row[0])), row[1], row[2])

    def put(self, key: RequestKey, report: EvaluationReport, *, model: str, revision: str | None,
            dataset: str, dataset_config: str | None, reference: str | None) -> None:
        created = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        values = (
            key.digest, created, model, revision, key.model_ref, dataset, dataset_config, key.split,
            key.dataset_fingerprint, key.setting("num_samples"), key.setting("seed"), key.setting("layer"), reference,
            key.version,
            _finite(report.dlr), _finite(report.baselines.get("accuracy")), int(bool(report.degenerate)),
            _finite(report.timings.get("total")), report.to_json(indent=None),
        )
        with closing(self._connect()) as connection, connection:
            connection.execute(
                "INSERT OR REPLACE INTO evaluations VALUES (" + ", ".join("?" * len(values)) + ")", values
            )

    def rows(self, limit: int = 200) -> list[list[Any]]:
        """The latest evaluations, newest first, as rows under ``HISTORY_COLUMNS``."""
        with closing(self._connect()) as connection:
            rows = connection.execute(
                "SELECT created, model, model_ref, dataset, split, num_samples, seed, layer, "
                "json_extract(report, '$.settings.layers'), reference, dlr, accuracy, "
                "version, key FROM evaluations ORDER BY created DESC, rowid DESC LIMIT ?",
                (limit,),
            ).fetchall()
        out = []
        for created, model, ref, dataset, split, n, seed, layer, layers, reference, dlr, accuracy, version, key in rows:
            short_ref = ref[:17] if ref.startswith("sha256:") else ref.rsplit("@", 1)[-1][:10]
            out.append([
                created, model, short_ref, dataset, split or "", n, "" if seed is None else seed, layer or "", layers or "",
                reference or "",
                None if dlr is None else round(dlr, 4), None if accuracy is None else round(accuracy, 4), version,
                key[:ID_LENGTH],
            ])
        return out

    def find(self, row_id: str) -> tuple[dict[str, Any], StoredEvaluation] | None:
        """The request fields (``REQUEST_FIELDS``) and the result of the row whose ``id`` is ``row_id``."""
        with closing(self._connect()) as connection:
            row = connection.execute(
                f"SELECT {', '.join(REQUEST_FIELDS)}, report, created, seconds FROM evaluations WHERE substr(key, 1, ?) = ?",
                (ID_LENGTH, row_id),
            ).fetchone()
        if row is None:
            return None
        fields = dict(zip(REQUEST_FIELDS, row))
        report, created, seconds = row[len(REQUEST_FIELDS):]
        return fields, StoredEvaluation(EvaluationReport.from_dict(json.loads(report)), created, seconds)

    def delete(self, row_ids: list[str]) -> int:
        """Forget the rows with these ``id``s; how many were removed."""
        with closing(self._connect()) as connection, connection:
            return sum(
                connection.execute("DELETE FROM evaluations WHERE substr(key, 1, ?) = ?", (ID_LENGTH, row_id)).rowcount
                for row_id in row_ids
            )

    def documents(self) -> list[dict[str, Any]]:
        """Every stored evaluation, newest first: its ``id``, request fields, time and full report."""
        with closing(self._connect()) as connection:
            rows = connection.execute(
                f"SELECT key, created, {', '.join(REQUEST_FIELDS)}, report FROM evaluations ORDER BY created DESC, rowid DESC"
            ).fetchall()
        return [
            {"id": key[:ID_LENGTH], "created": created, **dict(zip(REQUEST_FIELDS, fields)), "report": json.loads(report)}
            for key, created, *fields, report in rows
        ]

    def __len__(self) -> int:
        with closing(self._connect()) as connection:
            return connection.execute("SELECT COUNT(*) FROM evaluations").fetchone()[0]


def distinguishing_columns(rows: list[list[Any]]) -> list[str]:
    """``ALWAYS_SHOWN`` and the other ``HISTORY_COLUMNS`` whose value differs between two of ``rows``, in table order:
    the columns that tell the rows apart, without a wall of identical versions and empty layers."""
    return [
        name for index, name in enumerate(HISTORY_COLUMNS)
        if name in ALWAYS_SHOWN or len({str(row[index]) for row in rows}) > 1
    ]
