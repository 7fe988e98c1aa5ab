"""An uncached Hub id with the Hub unreachable fails in seconds with the offline hint, not after retries.

Models and datasets alike: one TCP connect to the endpoint decides (``dlr_hf.engine.hub``); a cached
id only warns, a local path never probes, and offline mode fails at once without any connection.
"""

from __future__ import annotations

import socket
import time

import datasets
import engine_helpers as eh
import pytest
from huggingface_hub import constants as hub_constants

from dlr_hf.engine.data import load_data
from dlr_hf.engine.hub import require_hub_or_cache
from dlr_hf.engine.loading import load_model
from dlr_hf.errors import DatasetLoadError, ModelLoadError
from dlr_hf.surfaces.cli import main

UNCACHED_DATA = "nobody-here/not-cached-data"


@pytest.fixture
def unreachable_hub(monkeypatch, tmp_path):
    """Online mode, with the Hub endpoint a closed local port (connection refused at once), empty datasets cache."""
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub_constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)  # HF_DATASETS_OFFLINE=1 from conftest, read at import
    monkeypatch.setattr(datasets.config, "HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets-cache")
    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def no_connections(monkeypatch):
    """Any TCP connect fails the test: the code under test must not probe."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"unexpected connection to {args[0] if args else kwargs}")

    monkeypatch.setattr(socket, "create_connection", refuse)


def test_unreachable_hub_fails_fast_naming_offline_mode(unreachable_hub):
    started = time.perf_counter()
    with pytest.raises(ModelLoadError, match="unreachable") as caught:
        load_model("nobody-here/not-cached-model")
    assert time.perf_counter() - started < 5
    assert "HF_HUB_OFFLINE=1" in str(caught.value) and "local folder" in str(caught.value)


def test_cached_model_only_warns_when_the_hub_is_unreachable(unreachable_hub, hub, monkeypatch, caplog):
    """Already in the cache: the libraries can read it, so no error — a warning pointing at offline mode."""
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(hub.hub_cache))
    require_hub_or_cache(hub.model_id, None)
    assert "HF_HUB_OFFLINE=1" in caplog.text and hub.model_id in caplog.text
    with pytest.raises(ModelLoadError, match="not in the local cache"):
        require_hub_or_cache("nobody-here/not-cached-model", None)


def test_offline_mode_skips_the_probe(monkeypatch, no_connections):
    """HF_HUB_OFFLINE=1: no connection attempted (the libraries then fail at once, from the cache)."""
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub_constants, "ENDPOINT", "http://127.0.0.1:9")
    require_hub_or_cache("nobody-here/not-cached-model", None)
    require_hub_or_cache(UNCACHED_DATA, None, repo_type="dataset")


# --- datasets ------------------------------------------------------------------------------------------
def test_unreachable_hub_fails_fast_for_an_uncached_dataset(unreachable_hub):
    """Not ~30 s of datasets' retries: a DatasetLoadError within seconds, saying how to work offline."""
    started = time.perf_counter()
    with pytest.raises(DatasetLoadError, match="unreachable") as caught:
        load_data(UNCACHED_DATA)
    assert time.perf_counter() - started < 5
    message = str(caught.value)
    assert f"dataset {UNCACHED_DATA!r} is not in the local cache" in message
    for advice in ("HF_HUB_OFFLINE=1", "HF_DATASETS_OFFLINE=1", "save_to_disk", "data file", "HF_DATASETS_CACHE"):
        assert advice in message, advice


def test_cached_dataset_only_warns_when_the_hub_is_unreachable(unreachable_hub, hub, monkeypatch, caplog):
    """A prepared copy in HF_DATASETS_CACHE is what datasets reads without the Hub: a warning, no error."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", hub.datasets_cache)
    require_hub_or_cache(hub.dataset_id, None, repo_type="dataset")
    assert "HF_DATASETS_OFFLINE=1" in caplog.text and hub.dataset_id in caplog.text
    with pytest.raises(DatasetLoadError, match="not in the local cache"):
        require_hub_or_cache(UNCACHED_DATA, None, repo_type="dataset")


def test_local_datasets_never_probe(unreachable_hub, no_connections, tmp_path):
    """A save_to_disk folder and a data file load with the Hub unreachable, without a connection attempt."""
    rows = eh.text_dataset(6)
    rows.save_to_disk(str(tmp_path / "saved"))
    rows.to_csv(str(tmp_path / "rows.csv"))
    assert load_data(str(tmp_path / "saved")).source["num_rows"] == 6
    assert load_data(str(tmp_path / "rows.csv")).source["num_rows"] == 6


@pytest.mark.parametrize("switch", ["both", "HF_DATASETS_OFFLINE only"])
def test_offline_mode_fails_at_once_for_an_uncached_dataset(switch, monkeypatch, no_connections, tmp_path):
    """Offline mode: no probe, and datasets' own failure becomes one line naming offline mode and the cache."""
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", switch == "both")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets-cache")
    started = time.perf_counter()
    with pytest.raises(DatasetLoadError, match="offline mode is on") as caught:
        load_data(UNCACHED_DATA)
    assert time.perf_counter() - started < 5
    assert f"dataset {UNCACHED_DATA!r} is not in the local cache" in str(caught.value)
    assert "save_to_disk" in str(caught.value)


@pytest.fixture
def local_model(tmp_path, tokenizer):
    """A tiny BERT classifier saved as a local folder (loads with no network)."""
    folder = tmp_path / "model"
    eh.tiny_bert().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.mark.parametrize("model, fragment", [
    ("nobody-here/some-model", "'nobody-here/some-model' is not in the local cache"),  # the model fails first
    (None, f"dataset {UNCACHED_DATA!r} is not in the local cache"),  # a local model loads, then the dataset fails
], ids=["uncached model", "local model, uncached dataset"])
def test_cli_fails_fast_on_uncached_hub_ids(model, fragment, unreachable_hub, local_model, capsys):
    """``dlr-hf evaluate MODEL --dataset ORG/NAME`` with the Hub unreachable: one error line, exit 2, in seconds."""
    started = time.perf_counter()
    assert main(["evaluate", model or local_model, "--dataset", UNCACHED_DATA, "--quiet"]) == 2
    assert time.perf_counter() - started < 5
    err = capsys.readouterr().err
    lines = eh.error_lines(err)
    assert len(lines) == 1 and err.count("\n") == 1, err
    assert "unreachable" in lines[0] and fragment in lines[0]
