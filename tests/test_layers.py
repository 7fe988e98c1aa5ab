"""Dependencies point one way: metric → models → engine → surfaces (checked in fresh interpreters),
and the surfaces reach the layers below only through the engine."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import dlr_hf.surfaces

LAYERS = [
    ("dlr_hf.metric", ["transformers", "accelerate", "datasets", "gradio", "dlr_hf.models", "dlr_hf.engine", "dlr_hf.surfaces"]),
    ("dlr_hf.models", ["datasets", "gradio", "dlr_hf.engine", "dlr_hf.surfaces"]),
    ("dlr_hf.engine", ["gradio", "dlr_hf.surfaces"]),
]
SURFACES_MAY_IMPORT = ("dlr_hf.engine", "dlr_hf.errors", "dlr_hf.surfaces")
"""...and the package root itself, for ``dlr_hf.__version__``."""


@pytest.mark.parametrize("layer,forbidden", LAYERS)
def test_layer_does_not_import_the_layers_above(layer, forbidden):
    code = (
        f"import sys, {layer}; "
        f"bad = [m for m in {forbidden!r} if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def _imported_modules(source: Path) -> list[str]:
    """Every module an ``import`` or ``from … import`` statement of ``source`` names (anywhere in the file)."""
    names = []
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
    return names


@pytest.mark.parametrize("source", sorted(Path(dlr_hf.surfaces.__file__).parent.glob("*.py")), ids=lambda p: p.name)
def test_surfaces_import_only_the_engine_and_the_errors(source):
    ours = [name for name in _imported_modules(source) if name == "dlr_hf" or name.startswith("dlr_hf.")]
    bad = [
        name for name in ours
        if name != "dlr_hf" and not any(name == allowed or name.startswith(allowed + ".") for allowed in SURFACES_MAY_IMPORT)
    ]
    assert not bad, f"{source.name} imports {bad}; surfaces go through dlr_hf.engine (and dlr_hf.errors) only"


def test_the_import_check_sees_a_forbidden_import(tmp_path):
    source = tmp_path / "surface.py"
    source.write_text("def f():\n    from dlr_hf.metric import parameter_norm\n    import dlr_hf.models.tap\n")
    assert _imported_modules(source) == ["dlr_hf.metric", "dlr_hf.models.tap"]
