"""``MeasurementOptions``: every setting of a measurement, declared once.

Each field carries its help text, its validator and the surfaces it appears on (field metadata),
so the CLI flags (``dlr-hf evaluate``), the app's inputs and history key, and ``DLRCallback``'s
arguments are all derived from this one declaration: a new option is added here and nowhere else.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable

from torch import nn

from dlr_hf.engine.settings import (
    PRECISION_NAMES,
    validate_batch_size,
    validate_max_length,
    validate_num_samples,
    validate_precision,
    validate_seed,
)
from dlr_hf.errors import InvalidArgumentError
from dlr_hf.metric import DEFAULT_RTOL, validate_rtol

CLI, APP, CALLBACK = "cli", "app", "callback"
"""The surfaces an option can appear on (the Python API ``evaluate()`` takes every option)."""


def _count_or_all(text: str) -> int | None:
    """``--num-samples``: a number, or ``all``."""
    return None if text.strip().lower() == "all" else int(text)


def _optional_text(value: Any) -> str | None:
    """A module path or a name: None when empty."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidArgumentError(f"expected a text value, got {type(value).__name__}")
    return value.strip() or None


def _layer_patterns(value: Any) -> str | None:
    """``layers``: "blocks" or comma-separated module-path patterns, spaces around commas dropped."""
    text = _optional_text(value)
    if text is None:
        return None
    patterns = [pattern.strip() for pattern in text.split(",")]
    if not all(patterns):
        raise InvalidArgumentError(f"layers {text!r} has an empty pattern; separate module-path patterns with single commas")
    return ",".join(patterns)


def _reference(value: Any) -> str | Path | nn.Module | None:
    """The initial checkpoint: a Hub id, a folder or a loaded model."""
    if value is None or isinstance(value, (Path, nn.Module)):
        return value
    return _optional_text(value)


def _flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise InvalidArgumentError(f"expected True or False, got {value!r}")
    return value


def option(
    default: Any,
    label: str,
    help: str,
    validate: Callable[[Any], Any],
    *,
    surfaces: tuple[str, ...] = (CLI, APP, CALLBACK),
    parse: Callable[[str], Any] | None = None,
    choices: tuple[str, ...] | None = None,
    keyed: bool = True,
    callback_default: Any = MISSING,
) -> Any:
    """A dataclass field with what every surface needs to offer it.

    ``label``: a few words naming the option (the app's input, its messages); ``parse`` turns the CLI text into a value (None: the text itself); ``keyed``: whether the
    option changes the numbers (then it is part of the app's history key); ``callback_default``:
    the callback's own default when it differs (e.g. a smaller probe).
    """
    metadata = {
        "label": label, "help": help, "validate": validate, "surfaces": surfaces, "parse": parse, "choices": choices,
        "keyed": keyed, "callback_default": default if callback_default is MISSING else callback_default,
    }
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class MeasurementOptions:
    """Every setting of one D_LR measurement, checked on construction (``InvalidArgumentError``)."""

    num_samples: int | None = option(
        1000, "number of samples", "examples drawn from the split: a number ≥ 1 or 'all' (CLI) / None (API)", validate_num_samples,
        parse=_count_or_all, callback_default=512,
    )
    batch_size: int | None = option(
        32, "batch size", "examples per forward pass (the callback's default: the Trainer's eval batch size)",
        lambda value: value if value is None else validate_batch_size(value), parse=int, keyed=False,
        callback_default=None,
    )
    layer: str | None = option(
        None, "layer", "layer-wise D_LR: module path of any nn.Linear (its input are the features, the final logits the outputs)",
        _optional_text,
    )
    layers: str | None = option(
        None, "layers",
        "richness profile across depth, one forward pass: 'blocks' (the hidden state after every block, read where "
        "the head reads) or comma-separated module-path patterns of linear layers, '*' = one path part "
        "(e.g. 'bert.encoder.layer.*.output.dense')",
        _layer_patterns, surfaces=(CLI, CALLBACK),  # the app has its own Layers tab
    )
    seed: int = option(0, "seed", "seed of the example subsample (0 … 2**32-1)", validate_seed, parse=int)
    reference: str | Path | nn.Module | None = option(
        None, "initial checkpoint", "initial checkpoint (Hub id, folder or loaded model), for S_init and the parameter change",
        _reference, surfaces=(CLI, APP), keyed=False,  # the app keys it by the checkpoint's content
    )
    rtol: float = option(
        DEFAULT_RTOL, "rank tolerance", "relative singular-value tolerance of ranks, in [1e-8, 1)", validate_rtol,
        surfaces=(CLI, CALLBACK), parse=float,
    )
    precision: str = option(
        "fp32", "precision", "precision of the model's forward; statistics are always float64", validate_precision,
        surfaces=(CLI,), choices=PRECISION_NAMES,
    )
    max_length: int = option(512, "maximum length", "token cap of text inputs", validate_max_length, surfaces=(CLI,), parse=int)
    baselines: bool = option(
        True, "baselines", "the parameter-space baselines ‖θ‖² and ‖θ − θ0‖/‖θ0‖ (the callback: also S_init from its step-0 model)",
        _flag, surfaces=(CLI, CALLBACK), keyed=False,
    )

    def __post_init__(self) -> None:
        for spec in fields(self):
            object.__setattr__(self, spec.name, spec.metadata["validate"](getattr(self, spec.name)))

    @classmethod
    def on(cls, surface: str) -> list[str]:
        """Names of the options offered on ``surface`` (cli, app, callback), in declaration order."""
        return [spec.name for spec in fields(cls) if surface in spec.metadata["surfaces"]]

    @classmethod
    def spec(cls, name: str) -> dict[str, Any]:
        """The metadata of option ``name`` (label, help, validate, surfaces, parse, choices, keyed, callback_default)."""
        return dict(next(spec for spec in fields(cls) if spec.name == name).metadata)

    @classmethod
    def callback_defaults(cls) -> dict[str, Any]:
        """The callback's arguments and their defaults."""
        return {name: cls.spec(name)["callback_default"] for name in cls.on(CALLBACK)}

    @classmethod
    def from_mapping(cls, values: dict[str, Any]) -> MeasurementOptions:
        """The options named in ``values`` (other keys ignored), defaults for the rest."""
        names = {spec.name for spec in fields(cls)}
        return cls(**{name: value for name, value in values.items() if name in names})

    def with_changes(self, **changes: Any) -> MeasurementOptions:
        return replace(self, **changes)

    def keyed(self) -> tuple[tuple[str, Any], ...]:
        """(name, value) of every option that changes the numbers: the app's history key."""
        return tuple((spec.name, getattr(self, spec.name)) for spec in fields(self) if spec.metadata["keyed"])

    def as_dict(self, surface: str | None = None) -> dict[str, Any]:
        """The options (of one surface, or all) as a plain dict; a loaded reference model reads "in-memory"."""
        names = self.on(surface) if surface else [spec.name for spec in fields(self)]
        values = {name: getattr(self, name) for name in names}
        if isinstance(values.get("reference"), nn.Module):
            values["reference"] = "in-memory"
        elif isinstance(values.get("reference"), Path):
            values["reference"] = str(values["reference"])
        return values
