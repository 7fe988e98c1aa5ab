"""The evaluation engine: load models and data, stream statistics with Accelerate, report.

``evaluate(model, dataset, ...)`` is the one entry point the CLI, the Trainer callback and the
Gradio app share.
"""

from dlr_hf.engine.data import ColumnPlan, detect_columns, load_data
from dlr_hf.engine.demo import ensure_demo
from dlr_hf.engine.evaluate import evaluate
from dlr_hf.engine.loading import load_model
from dlr_hf.engine.report import SCHEMA, EvaluationReport, reading

__all__ = [
    "SCHEMA",
    "ColumnPlan",
    "EvaluationReport",
    "detect_columns",
    "ensure_demo",
    "evaluate",
    "load_data",
    "load_model",
    "reading",
]
