"""One protocol for every mergeable statistic: declared states, merged, reduced and saved one way.

In the spirit of torchmetrics' ``add_state``: a statistic declares its tensors (``add_state``) and
its sub-statistics (``add_child``), and inherits ``merge``, ``all_reduce``, ``state_dict``,
``load_state_dict`` and ``reset``. States are summed across parts unless a class pools them
another way (``_pool``, e.g. Chan's update for centred scatters).

Collectives never hang on a shape mismatch: before any data tensor is reduced, every process
reduces a fixed-length shape signature and checks that it is the same everywhere, so a mismatch
raises the same ``ShapeMismatchError`` on every process instead of deadlocking in a collective
whose tensors differ in size.
"""

from __future__ import annotations

from typing import Any, Callable, TypeVar

import torch

from dlr_hf.errors import InvalidArgumentError, ShapeMismatchError

SumFn = Callable[[torch.Tensor], torch.Tensor]
"""Sums a tensor across processes and returns the total on every process (e.g. an all-reduce)."""

Total = Callable[[Callable[[Any], torch.Tensor]], torch.Tensor]
"""Sums a per-part quantity over all parts being pooled (two for a merge, all processes for a reduce)."""

DTYPE = torch.float64

Self = TypeVar("Self", bound="MergeableState")


def as_device(device: torch.device | str | None) -> torch.device | None:
    """A torch.device, or InvalidArgumentError naming the bad string."""
    if device is None or isinstance(device, torch.device):
        return device
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise InvalidArgumentError(
            f"unknown device {device!r}: use a torch device string such as 'cpu', 'cuda', 'cuda:1' or 'mps'"
        ) from error


def agree_on_shapes(signature: dict[str, int], sum_fn: SumFn, what: str, device: torch.device) -> None:
    """Collective check that every process holds the same shape ``signature``; raises on all of them.

    Only sums are needed: with ``m1 = mean(d)`` and ``m2 = mean(d²)`` over processes, the values agree
    iff ``m2 − m1² = 0``, and every process computes the same reduced numbers, hence the same verdict.
    Integers below 2²⁶ are exact in float64, so the test is exact.
    """
    values = torch.tensor([float(v) for v in signature.values()], dtype=DTYPE, device=device)
    reduced = sum_fn(torch.cat([torch.ones(1, dtype=DTYPE, device=device), values, values**2]))
    reduced = reduced.to("cpu", DTYPE)
    processes = float(reduced[0])
    k = len(signature)
    mean, mean_square = reduced[1 : 1 + k] / processes, reduced[1 + k :] / processes
    differ = [name for name, m1, m2 in zip(signature, mean.tolist(), mean_square.tolist()) if m2 - m1 * m1 > 1e-9]
    if differ:
        here = ", ".join(f"{name}={signature[name]}" for name in differ)
        raise ShapeMismatchError(
            f"the {int(processes)} processes hold {what} of different shapes ({', '.join(differ)} differ; "
            f"this process: {here}), so they cannot be combined. Give every process the same model and "
            "settings (num_classes=, feature_dim=, num_outputs=) and at least one batch."
        )


class MergeableState:
    """Base of every streaming statistic: declared tensor states and optional child statistics."""

    def __init__(self, device: torch.device | str | None = None) -> None:
        self._device = as_device(device)
        self._state_defaults: dict[str, torch.Tensor] = {}
        self._child_factories: dict[str, Callable[[], MergeableState]] = {}

    # -- declaring -----------------------------------------------------------------------------
    def add_state(self, name: str, default: torch.Tensor) -> None:
        """Declare a tensor state, summed across parts unless ``_pool`` says otherwise."""
        default = default.to(self.device, DTYPE)
        self._state_defaults[name] = default
        setattr(self, name, default.clone())

    def add_child(self, name: str, factory: Callable[[], MergeableState]) -> None:
        """Declare a sub-statistic, created empty by ``factory`` the first time it is needed."""
        self._child_factories[name] = factory
        setattr(self, name, None)

    def child(self, name: str) -> Any:
        """The sub-statistic ``name``, created empty if absent."""
        if getattr(self, name) is None:
            setattr(self, name, self._child_factories[name]())
        return getattr(self, name)

    @property
    def device(self) -> torch.device:
        return self._device if self._device is not None else torch.device("cpu")

    def signature(self) -> dict[str, int]:
        """Shape facts that must agree before parts combine; fixed keys for a given class."""
        return {f"{name}[{i}]": int(size) for name in self._state_defaults for i, size in enumerate(getattr(self, name).shape)}

    def config(self) -> dict[str, Any]:
        """Plain settings needed to rebuild an empty statistic of the same shape (saved with the state)."""
        return {}

    def _apply_config(self, config: dict[str, Any]) -> None:
        """Rebuild from ``config()``'s output (subclasses with a lazily known shape override this)."""

    # -- combining -----------------------------------------------------------------------------
    def _pool(self, total: Total) -> None:
        """Replace every state by its total over the parts (sums by default)."""
        for name in self._state_defaults:
            setattr(self, name, total(lambda part, name=name: getattr(part, name)))

    def merge(self: Self, other: Self) -> None:
        """Pool another part into this one. Never aliases ``other``: later updates leave it intact."""
        if type(other) is not type(self):
            raise ShapeMismatchError(f"cannot merge a {type(other).__name__} into a {type(self).__name__}")
        self._adopt_shape(other)
        if self.signature() != other.signature():
            raise ShapeMismatchError(
                f"cannot merge {type(other).__name__} of shape {other.signature()} into one of shape {self.signature()}"
            )
        device = self.device
        self._pool(lambda field: field(self) + field(other).to(device))
        for name in self._child_factories:
            theirs = getattr(other, name)
            if theirs is not None:
                self.child(name).merge(theirs)

    def _prepare_reduce(self, sum_fn: SumFn) -> None:
        """Hook between the shape agreement and the data collectives of ``all_reduce`` (collective too:
        every process runs the same collectives here)."""

    def _adopt_shape(self, other: "MergeableState") -> None:
        """Hook for statistics whose shape is set by their first batch: take ``other``'s if unset."""

    def all_reduce(self, sum_fn: SumFn) -> None:
        """Pool the parts of all processes; collective: every process calls it, all end up equal.

        Shapes are agreed first (one small collective), so a mismatch raises on every process.
        """
        agree_on_shapes(self.signature(), sum_fn, f"{type(self).__name__} statistics", self.device)
        self._prepare_reduce(sum_fn)
        # A copy goes in: an in-place all-reduce must not change a state another field still reads.
        self._pool(lambda field: sum_fn(field(self).clone()))
        for name in self._child_factories:
            present = sum_fn(torch.tensor([float(getattr(self, name) is not None)], dtype=DTYPE, device=self.device))
            if float(present.sum()) > 0:
                self.child(name).all_reduce(sum_fn)

    # -- saving --------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Copies of every state (never views of the live tensors), children and shape settings."""
        return {
            "config": self.config(),
            "states": {name: getattr(self, name).detach().clone() for name in self._state_defaults},
            "children": {
                name: None if getattr(self, name) is None else getattr(self, name).state_dict()
                for name in self._child_factories
            },
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from ``state_dict()`` (copied in, on this statistic's device)."""
        self._apply_config(state.get("config", {}))
        for name, default in self._state_defaults.items():
            value = state["states"][name]
            if tuple(value.shape) != tuple(getattr(self, name).shape):
                raise ShapeMismatchError(
                    f"saved state {name!r} has shape {tuple(value.shape)}, expected {tuple(getattr(self, name).shape)}"
                )
            setattr(self, name, value.detach().to(self.device, DTYPE).clone())
        for name in self._child_factories:
            saved = state["children"].get(name)
            setattr(self, name, None)
            if saved is not None:
                self.child(name).load_state_dict(saved)

    def reset(self) -> None:
        """Back to the empty statistic (shape settings kept)."""
        for name, default in self._state_defaults.items():
            setattr(self, name, default.clone())
        for name in self._child_factories:
            setattr(self, name, None)
