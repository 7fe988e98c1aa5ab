"""Dependencies point one way: metric → models → engine → surfaces (checked in fresh interpreters)."""

from __future__ import annotations

import subprocess
import sys

import pytest

LAYERS = [
    ("dlr_hf.metric", ["transformers", "accelerate", "datasets", "gradio", "dlr_hf.models", "dlr_hf.engine", "dlr_hf.surfaces"]),
    ("dlr_hf.models", ["datasets", "gradio", "dlr_hf.engine", "dlr_hf.surfaces"]),
    ("dlr_hf.engine", ["gradio", "dlr_hf.surfaces"]),
]


@pytest.mark.parametrize("layer,forbidden", LAYERS)
def test_layer_does_not_import_the_layers_above(layer, forbidden):
    code = (
        f"import sys, {layer}; "
        f"bad = [m for m in {forbidden!r} if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
