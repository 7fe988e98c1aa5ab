"""Helpers shared by the app tests (imported as ``app_helpers``)."""

from __future__ import annotations

import socket
from pathlib import Path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def make_app(demo_paths, history_db: Path, **settings):
    from dlr_hf.surfaces.app import AppConfig, DLRApp
    from dlr_hf.surfaces.history import HistoryStore

    config = AppConfig(history_db=history_db, **settings)
    return DLRApp(config=config, history=HistoryStore(history_db), demo_paths=demo_paths)


def example_args(demo_paths, model: str = "rich", n: int = 32, seed: int = 0, **overrides):
    """Positional arguments of the Evaluate tab (and of the /evaluate API endpoint).

    ``model`` is a demo checkpoint name (rich, lazy, initial) or any model id / path."""
    args = {
        "model": str(demo_paths[model]) if model in demo_paths else model, "revision": "", "dataset": str(demo_paths["data"]), "dataset_config": "",
        "split": "test", "num_samples": n, "batch_size": 32, "layer": "", "seed": seed, "reference": "",
    }
    args.update(overrides)
    return list(args.values())
