"""Test-wide settings (offline hub, no analytics) and the built-in demo, built once per session.

HF_HUB_OFFLINE and HF_DATASETS_OFFLINE are read at import time by huggingface_hub/datasets, so
they are set here, before any test module imports them.
"""

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def demo_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ``DLR_HF_CACHE`` folder holding the built demo (two tiny ViTs on digits, the slowest fixture).

    Set DLR_HF_TEST_DEMO_ROOT to a folder to reuse one demo across test runs.
    """
    import torch

    from dlr_hf.engine.demo import DEMO_VERSION, ensure_demo

    reuse = os.environ.get("DLR_HF_TEST_DEMO_ROOT")
    base = Path(reuse) if reuse else tmp_path_factory.mktemp("dlr-hf-cache")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ensure_demo(base / f"demo-v{DEMO_VERSION}")
    finally:
        torch.set_num_threads(threads)
    return base


@pytest.fixture(scope="session")
def demo(demo_cache: Path) -> dict[str, Path]:
    """The demo's paths: ``data``, ``initial``, ``rich``, ``lazy`` (already built, so instant)."""
    from dlr_hf.engine.demo import DEMO_VERSION, ensure_demo

    return ensure_demo(demo_cache / f"demo-v{DEMO_VERSION}")
