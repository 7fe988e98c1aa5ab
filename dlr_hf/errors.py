"""Every error dlr-hf raises on purpose, in one place.

Each message says what went wrong and what to do about it; surfaces (CLI, app) show the message
alone, without a traceback. Pure Python: every layer may import this module.
"""

from __future__ import annotations


class DLRError(Exception):
    """Base class of every error dlr-hf raises deliberately."""


# --- the measure itself (SPEC §2 edge cases) -------------------------------------------------
class TooFewSamplesError(DLRError):
    """D_LR needs at least two samples: centring one sample leaves nothing."""


class UndefinedDLRError(DLRError):
    """D_LR is undefined: constant outputs (rank 0) or constant features."""


class NonFiniteError(DLRError):
    """Features or outputs contain NaN or infinity."""


class ShapeMismatchError(DLRError):
    """Arrays passed together do not agree in shape."""


class MissingOutputsError(DLRError):
    """Neither outputs were streamed nor a head weight given, so the learned function is unknown."""


class InvalidArgumentError(DLRError, ValueError):
    """A setting is out of its valid range (rtol, sample counts, seeds, device strings, paths)."""


# --- models: finding and hooking the head ---------------------------------------------------------
class HeadNotFoundError(DLRError):
    """No nn.Linear in the model produces its logits."""


class WeightsUnavailableError(DLRError):
    """The head's weight cannot be read (left on the 'meta' device with nothing to load it)."""


class LayerNotFoundError(DLRError):
    """A layer path given for layer-wise D_LR does not name an nn.Linear of the model."""


# --- loading models and data ---------------------------------------------------------------------
class ModelLoadError(DLRError):
    """A model id, revision or path could not be loaded."""


class DatasetLoadError(DLRError):
    """A dataset id, config, split or path could not be loaded."""


class InputColumnError(DLRError):
    """No dataset column fits the model's input (or the named one does not exist)."""


class ModalityMismatchError(DLRError):
    """The dataset's modality does not fit the model (e.g. an image model given text)."""


class OutputsTooWideError(DLRError):
    """A per-layer profile was asked of a model whose outputs are too wide to keep a scatter per layer."""
