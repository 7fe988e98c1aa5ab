"""An uncached Hub id with the Hub unreachable fails in seconds with the offline hint, not after retries."""

from __future__ import annotations

import time

import pytest
from huggingface_hub import constants as hub_constants

from dlr_hf.engine.loading import load_model, require_hub_or_cache
from dlr_hf.errors import ModelLoadError


@pytest.fixture
def unreachable_hub(monkeypatch):
    """Online mode, with the Hub endpoint a closed local port (connection refused at once)."""
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub_constants, "ENDPOINT", "http://127.0.0.1:9")
    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)


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


def test_offline_mode_skips_the_probe(monkeypatch):
    """HF_HUB_OFFLINE=1: no connection attempted (the libraries then fail at once, from the cache)."""
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub_constants, "ENDPOINT", "http://127.0.0.1:9")
    require_hub_or_cache("nobody-here/not-cached-model", None)
