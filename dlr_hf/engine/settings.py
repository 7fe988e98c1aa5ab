"""Checks of the evaluation settings and of path-like names, shared by the API, the CLI and the app.

Every surface validates through these functions before anything is loaded, so a bad value gets
the same ``InvalidArgumentError`` message everywhere, never a traceback minutes into a run.
"""

from __future__ import annotations

import numbers
import os
from pathlib import Path
from typing import Any

from dlr_hf.errors import DLRError, InvalidArgumentError

MAX_SEED = 2**32 - 1  # numpy's and the history store's range of seeds
PRECISION_NAMES = ("fp32", "bf16", "fp16")
DATA_FILE_SUFFIXES = (".csv", ".tsv", ".json", ".jsonl", ".parquet", ".txt", ".arrow")
PATH_PREFIXES = ("/", "./", "../", "~", ".\\", "..\\")


def _shown(value: Any, limit: int = 40) -> str:
    """``repr(value)``, shortened: a 100k-character value must not come back in the message."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _whole_number(value: Any, name: str) -> int:
    """An integer (Python or numpy); booleans, floats and strings are refused."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InvalidArgumentError(f"{name} must be a whole number, got {_shown(value)}")
    return int(value)


def validate_num_samples(value: Any) -> int | None:
    """``None`` (all examples) or a whole number ≥ 1: how many examples to draw."""
    if value is None:
        return None
    number = _whole_number(value, "num_samples")
    if number < 1:
        raise InvalidArgumentError(
            f"num_samples must be at least 1, got {number}; to use every example pass None (CLI: --num-samples all)"
        )
    return number


def validate_batch_size(value: Any) -> int:
    """A whole number ≥ 1."""
    number = _whole_number(value, "batch_size")
    if number < 1:
        raise InvalidArgumentError(f"batch_size must be at least 1, got {number}")
    return number


def validate_seed(value: Any) -> int:
    """A whole number in 0 … 2**32 − 1 (numpy's seed range; larger seeds cannot be stored or reproduced)."""
    number = _whole_number(value, "seed")
    if not 0 <= number <= MAX_SEED:
        raise InvalidArgumentError(f"seed must be a whole number from 0 to {MAX_SEED} (2**32 - 1), got {_shown(number)}")
    return number


def validate_max_length(value: Any) -> int:
    """The token cap of text inputs: a whole number ≥ 1."""
    number = _whole_number(value, "max_length")
    if number < 1:
        raise InvalidArgumentError(f"max_length must be at least 1 token, got {number}")
    return number


def validate_precision(value: Any) -> str:
    """One of fp32, bf16, fp16."""
    if value not in PRECISION_NAMES:
        raise InvalidArgumentError(f"precision must be one of {', '.join(PRECISION_NAMES)}, got {_shown(value)}")
    return value


def looks_like_path(name: str) -> bool:
    """Whether ``name`` can only be a local path, never a Hub id (``ORG/NAME``, ``NAME``).

    True for names starting with ``/ ./ ../ ~``, with more than one ``/`` (Hub ids have at most
    one), with a Windows separator, or ending in a data file suffix (``.csv``, ``.parquet``, …).
    """
    return (
        name.startswith(PATH_PREFIXES)
        or name.count("/") > 1
        or (os.sep != "/" and os.sep in name)
        or Path(name).suffix.lower() in DATA_FILE_SUFFIXES
    )


def missing_path(name: str) -> bool:
    """A path-like name (see ``looks_like_path``) with nothing at that path."""
    return looks_like_path(name) and not Path(name).expanduser().exists()


def require_existing(name: str, what: str, error: type[DLRError] = InvalidArgumentError) -> None:
    """Say "does not exist" for a missing path-like name, instead of looking it up on the Hub."""
    if missing_path(name):
        raise error(f"{what} {name} does not exist; check the path (a Hub id has the form ORG/NAME)")
