"""``--quiet`` / ``progress=False``: no progress bar from any library, and their switches put back afterwards."""

from __future__ import annotations

import os
import re

import datasets
import engine_helpers as eh
import pytest
import transformers
from huggingface_hub import utils as hub_utils

from dlr_hf.engine.demo import DEMO_VERSION
from dlr_hf.engine.progress import library_bars

BAR_MARKS = ("it/s", "|█", "%|", "examples/s")
"""What a tqdm bar leaves on stderr."""


def _switches() -> tuple[bool, bool, bool]:
    """(transformers, datasets, huggingface_hub) bars enabled."""
    return (transformers.utils.logging.is_progress_bar_enabled(), datasets.is_progress_bar_enabled(),
            not hub_utils.are_progress_bars_disabled())


def _set(switches: tuple[bool, bool, bool]) -> None:
    transformers_on, datasets_on, hub_on = switches
    transformers.utils.logging.enable_progress_bar() if transformers_on else transformers.utils.logging.disable_progress_bar()
    datasets.enable_progress_bars() if datasets_on else datasets.disable_progress_bars()
    hub_utils.enable_progress_bars() if hub_on else hub_utils.disable_progress_bars()


@pytest.fixture
def restore_switches():
    """Whatever a test does to the libraries' switches is undone after it."""
    before = _switches()
    yield
    _set(before)


@pytest.mark.parametrize("before", [(True, True, True), (False, True, False), (True, False, False), (False, False, False)])
def test_library_bars_off_inside_and_put_back_after(before, restore_switches):
    _set(before)
    assert _switches() == before
    with library_bars(False):
        assert _switches() == (False, False, False)
    assert _switches() == before
    with pytest.raises(RuntimeError), library_bars(False):
        raise RuntimeError("a failed evaluation puts the switches back too")
    assert _switches() == before
    with library_bars(True):
        assert _switches() == before  # progress=True changes nothing


def test_quiet_cli_builds_the_demo_without_bars(tmp_path):
    """``dlr-hf evaluate --quiet`` on a fresh demo cache: the build (datasets' save_to_disk, transformers'
    save_pretrained) and the measurement print no bar; the build's log line and the report still show."""
    done = eh.run_cli(["evaluate", "--quiet", "--num-samples", "100"],
                      env={**os.environ, "DLR_HF_CACHE": str(tmp_path), "OMP_NUM_THREADS": "1"}, timeout=170)
    assert done.returncode == 0, done.stderr
    assert "building the built-in demo" in done.stderr  # wanted: says why the first run takes longer
    assert not [mark for mark in BAR_MARKS if mark in done.stderr], done.stderr
    assert len(re.findall(r"^D_LR\s+[0-9.]+", done.stdout, flags=re.MULTILINE)) == 2, done.stdout  # rich and lazy
    assert (tmp_path / f"demo-v{DEMO_VERSION}" / "rich" / "ready").exists()  # built there, not found elsewhere
