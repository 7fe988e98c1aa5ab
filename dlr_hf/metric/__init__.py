"""The D_LR measure itself: pure math over torch tensors (no Hugging Face imports).

``compute_dlr`` for arrays in memory; ``DLRAccumulator`` to stream, merge and all-reduce
sufficient statistics; ``LinearCKAAccumulator`` for similarity to initialisation; parameter-norm
baselines. Every streaming statistic derives from ``MergeableState`` (declared states, one merge /
all-reduce / state_dict protocol).
"""

from dlr_hf.metric.cka import LinearCKAAccumulator
from dlr_hf.metric.dlr import DEFAULT_RTOL, MIN_RTOL, DLRAccumulator, DLRResult, compute_dlr, validate_rtol
from dlr_hf.metric.labels import DROP_REASONS, LabelStatistics
from dlr_hf.metric.moments import ClassMoments, StreamingMoments
from dlr_hf.metric.parameters import parameter_change, parameter_norm, parameter_snapshot
from dlr_hf.metric.state import MergeableState, SumFn

__all__ = [
    "DEFAULT_RTOL",
    "DROP_REASONS",
    "MIN_RTOL",
    "ClassMoments",
    "DLRAccumulator",
    "DLRResult",
    "LabelStatistics",
    "LinearCKAAccumulator",
    "MergeableState",
    "StreamingMoments",
    "SumFn",
    "compute_dlr",
    "parameter_change",
    "parameter_norm",
    "parameter_snapshot",
    "validate_rtol",
]
