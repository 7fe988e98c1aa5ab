"""The evaluation engine: load models and data, measure with Accelerate, report.

``Measurement`` owns one measurement (taps, accumulators, S_init, the cross-process reduction);
``MeasurementOptions`` declares every setting once; ``evaluate(model, dataset, ...)`` is the one
entry point the CLI and the Gradio app share, and ``DLRCallback`` drives ``Measurement`` directly.
This package is everything the surfaces (``dlr_hf.surfaces``) may import besides ``dlr_hf.errors``.
"""

from dlr_hf.engine.data import ColumnPlan, detect_columns, load_data, subsample_indices
from dlr_hf.engine.demo import demo, ensure_demo
from dlr_hf.engine.devices import make_accelerator
from dlr_hf.engine.evaluate import evaluate
from dlr_hf.engine.loading import load_model
from dlr_hf.engine.measurement import ADAPTER_BASE, LayerReading, Measurement
from dlr_hf.engine.options import APP, CALLBACK, CLI, MeasurementOptions
from dlr_hf.engine.report import MANY_SCHEMA, SCHEMA, EvaluationReport, Verdict, check_writable, reading, verdict, write_atomic
from dlr_hf.engine.settings import looks_like_path, require_existing
from dlr_hf.metric import DLRResult, parameter_snapshot
from dlr_hf.models import LABELLED_TOKENS, HeadInfo, find_linear_layer, is_linear_layer
from dlr_hf.models.adapters import is_adapter_model

__all__ = [
    "ADAPTER_BASE",
    "APP",
    "CALLBACK",
    "CLI",
    "MANY_SCHEMA",
    "SCHEMA",
    "ColumnPlan",
    "DLRResult",
    "EvaluationReport",
    "HeadInfo",
    "LABELLED_TOKENS",
    "LayerReading",
    "Measurement",
    "MeasurementOptions",
    "Verdict",
    "check_writable",
    "demo",
    "detect_columns",
    "ensure_demo",
    "evaluate",
    "find_linear_layer",
    "is_adapter_model",
    "is_linear_layer",
    "load_data",
    "load_model",
    "looks_like_path",
    "make_accelerator",
    "parameter_snapshot",
    "reading",
    "require_existing",
    "subsample_indices",
    "verdict",
    "write_atomic",
]
