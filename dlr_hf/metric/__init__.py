"""The D_LR measure itself: pure math over torch tensors (no Hugging Face imports).

``compute_dlr`` for arrays in memory; ``DLRAccumulator`` to stream, merge and all-reduce
sufficient statistics; ``LinearCKAAccumulator`` for similarity to initialisation; parameter-norm
baselines.
"""

from dlr_hf.metric.cka import LinearCKAAccumulator
from dlr_hf.metric.dlr import DEFAULT_RTOL, MIN_RTOL, DLRAccumulator, DLRResult, compute_dlr, validate_rtol
from dlr_hf.metric.moments import ClassMoments, StreamingMoments
from dlr_hf.metric.parameters import parameter_change, parameter_norm, parameter_snapshot

__all__ = [
    "DEFAULT_RTOL",
    "MIN_RTOL",
    "ClassMoments",
    "DLRAccumulator",
    "DLRResult",
    "LinearCKAAccumulator",
    "StreamingMoments",
    "compute_dlr",
    "parameter_change",
    "parameter_norm",
    "parameter_snapshot",
    "validate_rtol",
]
