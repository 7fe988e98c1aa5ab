"""Fail in seconds, naming offline mode, when the Hugging Face Hub is unreachable and a Hub id is not cached.

Without this check an uncached model or dataset id spends ~30 s in the libraries' retries before
failing. One TCP connect to the endpoint decides; a cached id then only gets a warning (the
libraries can read it, after their own retries), an uncached one a typed error saying how to work
offline. Local paths never come here.
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

import datasets
from datasets.naming import camelcase_to_snakecase
from huggingface_hub import constants as hub_constants
from huggingface_hub import try_to_load_from_cache

from dlr_hf.errors import DatasetLoadError, ModelLoadError

log = logging.getLogger(__name__)

HUB_PROBE_SECONDS = 3.0
"""How long the reachability probe waits for the Hub: without it an uncached id spends ~30 s in retries."""
PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")
OFFLINE_SWITCHES = {"model": "HF_HUB_OFFLINE=1", "dataset": "HF_HUB_OFFLINE=1 or HF_DATASETS_OFFLINE=1"}
"""The environment that makes each library read its cache without touching the network."""


def offline_mode(repo_type: str = "model") -> bool:
    """Whether the libraries stay off the network: HF_HUB_OFFLINE=1; for datasets also HF_DATASETS_OFFLINE=1."""
    if hub_constants.HF_HUB_OFFLINE:
        return True
    return repo_type == "dataset" and bool(datasets.config.HF_HUB_OFFLINE)


def hub_unreachable() -> str | None:
    """Why the Hub endpoint takes no TCP connection (one connect, at most HUB_PROBE_SECONDS); None when it does."""
    scheme, _, rest = hub_constants.ENDPOINT.partition("://")
    host, _, port = rest.split("/")[0].partition(":")
    try:
        socket.create_connection((host, int(port or (443 if scheme == "https" else 80))), timeout=HUB_PROBE_SECONDS).close()
    except OSError as error:
        return error.strerror or type(error).__name__
    return None


def model_is_cached(repo_id: str, revision: str | None) -> bool:
    """Whether the Hub cache holds a snapshot of the model (or adapter) at ``revision``."""
    return any(isinstance(try_to_load_from_cache(repo_id, filename, revision=revision), str)
               for filename in ("config.json", "adapter_config.json"))


def dataset_cache_folder(repo_id: str) -> Path:
    """Where datasets keeps the prepared (Arrow) copies of a Hub dataset: ``HF_DATASETS_CACHE/<org>___<name>``."""
    *namespace, name = repo_id.split("/")
    return Path(datasets.config.HF_DATASETS_CACHE).expanduser() / "___".join([*namespace, camelcase_to_snakecase(name)])


def dataset_is_cached(repo_id: str) -> bool:
    """Whether ``load_dataset(repo_id)`` can read a prepared copy without the Hub.

    Without the Hub (offline mode or no connection) datasets 4.x/5.x reads only the prepared copy
    ``HF_DATASETS_CACHE/<org>___<name>/<config>/<version>/<hash>/`` (``CachedDatasetModuleFactory``);
    raw files in the Hub cache (``HF_HUB_CACHE/datasets--ORG--NAME``) are not enough.
    """
    return any(path.is_dir() for path in dataset_cache_folder(repo_id).glob("*/*/*"))


def not_cached_error(repo_id: str, repo_type: str, situation: str) -> ModelLoadError | DatasetLoadError:
    """The error for a Hub id that is not in the local cache when the Hub cannot be used (``situation`` says why)."""
    if repo_type == "dataset":
        return DatasetLoadError(
            f"could not load dataset {repo_id!r}: {situation} and the dataset {repo_id!r} is not in the local cache "
            f"({dataset_cache_folder(repo_id)}); "
            "load it once where the Hub is reachable (offline mode off), pass a local folder saved with save_to_disk "
            "or a data file (.csv, .json, .parquet, …), or, if it is cached elsewhere, point HF_DATASETS_CACHE there "
            "and set "
            f"{OFFLINE_SWITCHES['dataset']} (offline mode: no network waits)"
        )
    return ModelLoadError(
        f"{situation} and {repo_id!r} is not in the local cache; download it where there is network, pass a local "
        f"folder, or, if it is cached elsewhere, point HF_HUB_CACHE there and set {OFFLINE_SWITCHES['model']} "
        "(offline mode: no network waits)"
    )


def require_hub_or_cache(repo_id: str, revision: str | None, repo_type: str = "model") -> None:
    """Fail in seconds, naming offline mode, when the Hub is unreachable and ``repo_id`` is not cached.

    ``repo_type`` is ``"model"`` (raises ModelLoadError) or ``"dataset"`` (DatasetLoadError). One
    TCP connect to the endpoint; skipped in offline mode (the libraries then fail at once) and
    behind a proxy (a direct connect says nothing about the proxy's reach).
    """
    if offline_mode(repo_type) or any(os.environ.get(name) for name in PROXY_VARIABLES):
        return
    unreachable = hub_unreachable()
    if unreachable is None:
        return
    endpoint = hub_constants.ENDPOINT
    cached = dataset_is_cached(repo_id) if repo_type == "dataset" else model_is_cached(repo_id, revision)
    if cached:
        log.warning("the Hugging Face Hub (%s) is unreachable: set %s to read %s from the cache without waiting "
                    "for the network", endpoint, OFFLINE_SWITCHES[repo_type], repo_id)
        return
    raise not_cached_error(repo_id, repo_type, f"the Hugging Face Hub ({endpoint}) is unreachable ({unreachable})")
