"""Fixtures of the app tests: the offline demo (built once per session), apps, a served app.

The demo (a rich and a lazy tiny ViT on scikit-learn's digits) is the session fixture of
tests/conftest.py, built in a temporary folder so the tests never touch ~/.cache.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from app_helpers import free_port, make_app

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


@pytest.fixture(scope="session")
def demo_paths(demo) -> dict[str, Path]:
    """The session's demo (tests/conftest.py), under the name the app tests use."""
    return demo


@pytest.fixture
def app(demo_paths, tmp_path):
    """A fresh app with its own empty history."""
    return make_app(demo_paths, tmp_path / "history.sqlite", max_samples=400, max_batch=64)


@pytest.fixture(scope="session")
def served(demo_paths, tmp_path_factory):
    """The full Blocks app served on a loopback port: (app, demo, url)."""
    from dlr_hf.surfaces.app import build_demo, launch_options

    app = make_app(demo_paths, tmp_path_factory.mktemp("served") / "history.sqlite", max_samples=400, max_batch=64)
    demo = build_demo(app)
    port = free_port()
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True, **launch_options())
    try:
        yield app, demo, f"http://127.0.0.1:{port}/"
    finally:
        demo.close()


@pytest.fixture(scope="session")
def client(served):
    from gradio_client import Client

    return Client(served[2], verbose=False)
