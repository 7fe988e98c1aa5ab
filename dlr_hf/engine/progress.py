"""``progress=False`` (``--quiet``): no progress bar from transformers, datasets or huggingface_hub.

The libraries keep their bar switches in global state, so the switch is flipped for the duration
of a ``with`` block only and put back as it was: an app or a training callback that measures
quietly does not silence the libraries for the rest of the process.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import datasets
import transformers
from huggingface_hub import utils as hub_utils


@contextmanager
def library_bars(enabled: bool) -> Iterator[None]:
    """Inside the block, the libraries' bars (weight loading and saving, downloads, datasets' map / save) are off
    unless ``enabled``; afterwards each library's switch is as it was before."""
    if enabled:
        yield
        return
    transformers_on = transformers.utils.logging.is_progress_bar_enabled()
    datasets_on = datasets.is_progress_bar_enabled()
    hub_on = not hub_utils.are_progress_bars_disabled()
    with warnings.catch_warnings():  # an HF_*_DISABLE_PROGRESS_BARS variable has priority: the libraries warn
        warnings.simplefilter("ignore")
        transformers.utils.logging.disable_progress_bar()  # also huggingface_hub's
        datasets.disable_progress_bars()
    try:
        yield
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if transformers_on:
                transformers.utils.logging.enable_progress_bar()  # also turns huggingface_hub's back on
            if datasets_on:
                datasets.enable_progress_bars()
            if hub_on:
                hub_utils.enable_progress_bars()
            else:
                hub_utils.disable_progress_bars()
