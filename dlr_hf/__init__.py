"""dlr-hf: D_LR, the low-rank dynamical-richness measure, for Hugging Face models.

Heavy layers (transformers, accelerate, gradio) load lazily, so ``import dlr_hf.metric`` stays
torch-only.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "compute_dlr": "dlr_hf.metric",
    "DLRAccumulator": "dlr_hf.metric",
    "DLRResult": "dlr_hf.metric",
    "LinearCKAAccumulator": "dlr_hf.metric",
    "DLRError": "dlr_hf.errors",
    "evaluate": "dlr_hf.engine",
    "EvaluationReport": "dlr_hf.engine",
    "DLRCallback": "dlr_hf.surfaces.callback",
    "demo": "dlr_hf.engine",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'dlr_hf' has no attribute {name!r}")
