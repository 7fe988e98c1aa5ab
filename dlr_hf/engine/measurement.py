"""``Measurement``: one D_LR measurement of one model — taps, accumulators, S_init, reduction, results.

Every surface drives this object: ``evaluate()`` over a DataLoader, ``DLRCallback`` over its probe
during training, the app through ``evaluate()``. The life of a measurement:

    measurement = Measurement(model, accelerator, options, reference=initial_model)
    measurement.run(loader)            # or: with measurement.tapping(): measurement.feed(batch) ...
    measurement.reduce_dlr()           # collective: every process calls it
    measurement.reduce_s_init()        # collective, when S_init is measured
    result = measurement.result()      # DLRResult; measurement.s_init(), measurement.parameter_baselines()

``feed(batch)`` runs the forward itself; a caller that already ran it under ``tapping()`` (e.g. a
Trainer's own evaluation step) hands its output to ``collect(batch, output)`` instead. The head is
located from the first batch fed (``locate``). Each tapped site (the head, or the one layer of
``options.layer``; then every layer of the ``options.layers`` profile) has its own tap and
accumulator, all filled from the same forward; ``profile()`` reads the per-layer results.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
from accelerate import Accelerator
from torch import nn
from torch.utils.data import DataLoader
from transformers.pytorch_utils import Conv1D
from tqdm.auto import tqdm

from dlr_hf.engine.options import MeasurementOptions
from dlr_hf.engine.devices import input_device
from dlr_hf.errors import DLRError, HeadNotFoundError, OutputsTooWideError, ShapeMismatchError
from dlr_hf.metric import (
    DLRAccumulator,
    DLRResult,
    LinearCKAAccumulator,
    parameter_change,
    parameter_norm,
    parameter_snapshot,
)
from dlr_hf.models.adapters import adapted_parameter_baselines, disabled_adapters, head_without_adapters
from dlr_hf.models import (
    FeatureTap,
    HeadInfo,
    ProfileLayer,
    Samples,
    locate_head,
    model_inputs,
    profile_layers,
    profile_tap,
    read_head_weight,
    relocate,
)

Batch = Mapping[str, torch.Tensor]
PROBE_ROWS = 2
"""Rows of the first batch the head-locating forward runs on: every Linear's output is held during it."""
MAX_PROFILE_OUTPUTS = 4096
"""Widest outputs a profile accepts: each layer keeps a (p + C)² float64 scatter of features and logits."""


@dataclass(frozen=True)
class LayerReading:
    """One layer of a richness profile: D_LR of its features against the final logits, and S_init.

    With a reference model, ``s_init`` (linear CKA to the reference's same layer) and ``initial``: D_LR
    of the reference's same-layer features against the reference's logits, on the same batches — the
    layer's value at initialisation (None without a reference, or where it is undefined, e.g. an
    initial head that outputs constants).
    """

    name: str
    depth: int
    module_path: str
    result: DLRResult
    s_init: float | None
    initial: DLRResult | None = None

    @property
    def dlr_initial(self) -> float | None:
        return None if self.initial is None else self.initial.dlr

    def to_dict(self) -> dict[str, Any]:
        """The report's ``layers`` row (schema in ``dlr_hf.engine.report``)."""
        r = self.result
        row = {
            "name": self.name, "depth": self.depth, "module_path": self.module_path, "feature_dim": r.feature_dim,
            "dlr": r.dlr, "rank": r.rank, "feature_rank": r.feature_rank, "effective_rank": r.effective_rank,
            "degenerate": r.degenerate, "num_samples": r.num_samples,
        }
        if self.s_init is not None:
            row["s_init"] = self.s_init
        if self.initial is not None:
            row["dlr_initial"] = self.initial.dlr
            row["dlr_change"] = r.dlr - self.initial.dlr
        return row


@dataclass
class _Site:
    """One tapped place of the model: its tap, accumulator and S_init pairing."""

    name: str
    layer: str | None
    tap: FeatureTap
    accumulator: DLRAccumulator
    profiled: ProfileLayer | None = None
    reference_tap: FeatureTap | None = None
    cka: LinearCKAAccumulator | None = None
    initial_dlr: DLRAccumulator | None = None
    """D_LR at initialisation: the reference model's own features and outputs (with a reference model)."""
    reference_head: HeadInfo | None = None
    initial: list[torch.Tensor] | None = None
    recorded: list[torch.Tensor] | None = None
    s_init_problem: str | None = None
    batches: int = 0


ADAPTER_BASE = "the base (adapters disabled)"
"""``reference=ADAPTER_BASE``: S_init against a PEFT model's base — the same model, its adapters disabled."""


@dataclass
class _Reference:
    """The initial model of an S_init measurement (``names``: measured model, reference, for errors).

    ``adapter_base``: the reference is the measured PEFT model itself run with its adapters disabled;
    ``running`` is set during its forward, which hooks feeding ``collect`` from the model must skip.
    """

    model: nn.Module
    names: tuple[str, str]
    parameters: dict[str, torch.Tensor] | None = field(default=None, repr=False)
    adapter_base: bool = False
    running: bool = False


class Measurement:
    """One measurement of ``model`` with ``options``; S_init from a ``reference`` model or recorded features.

    Args:
        model: the model measured (put in eval mode by the caller).
        accelerator: its device, mixed precision and process group.
        options: the settings (``layer``, ``rtol``, ``baselines`` …).
        head: the head located earlier (e.g. by a previous measurement of the same model).
        reference: the initial model, run on every batch beside ``model`` for S_init; or
            ``ADAPTER_BASE`` for a PEFT model: a second forward of ``model`` with its adapters
            disabled (no second model), and ``param_change`` of the merged weights against the base.
        names: (model, reference) as the user named them, for a mismatch error.
        initial_features: the initial model's features of every batch, recorded earlier
            (``record_features=True``); a mismatch becomes ``s_init_problem``, never an error.
        record_features: keep every batch's features (CPU float32), to pair with later.
    """

    def __init__(
        self,
        model: nn.Module,
        accelerator: Accelerator,
        options: MeasurementOptions,
        *,
        head: HeadInfo | None = None,
        reference: nn.Module | str | None = None,
        names: tuple[str, str] = ("the model", "the reference"),
        initial_features: list[torch.Tensor] | None = None,
        record_features: bool = False,
    ) -> None:
        self.model = model
        self.accelerator = accelerator
        self.options = options
        self.device = input_device(model, accelerator)
        self.head = head
        self._reference = None if reference is None else (
            _Reference(model, names, adapter_base=True) if reference == ADAPTER_BASE else _Reference(reference, names)
        )
        self._initial_features = initial_features
        self._record = record_features
        self._sites: list[_Site] = []
        self._stack: ExitStack | None = None
        self._parameter_norm: float | None = None

    # -- feeding ---------------------------------------------------------------------------------
    def locate(self, batch: Batch, batches: Iterable[Batch] | None = None) -> HeadInfo:
        """Find the head from the first rows of a real batch (no-op once found) and set up the taps.

        Only when that batch has a single row and ``batches`` is a DataLoader are two examples
        collated afresh (two rows tell a logit offset from chance).
        """
        if self.head is None:
            probe = _first_rows(batch, PROBE_ROWS)
            if _rows(probe) < PROBE_ROWS and isinstance(batches, DataLoader):
                probe = next(iter(DataLoader(batches.dataset, batch_size=PROBE_ROWS, collate_fn=batches.collate_fn)))
            probe = {key: value.to(self.device) for key, value in probe.items()}
            # outside any autocast: the logits are compared with each Linear's output at the model's precision
            with torch.inference_mode(), torch.autocast(self.device.type, enabled=False):
                self.head = locate_head(self.model, probe, layer=self.options.layer)
        if not self._sites:
            self._build_sites()
        return self.head

    @contextmanager
    def tapping(self) -> Iterator[Measurement]:
        """Hooks on while inside: every forward of the model (and reference) is captured for ``collect``."""
        with ExitStack() as stack:
            self._stack = stack
            if self.head is not None and not self._sites:
                self._build_sites()  # entered as they are built
            else:
                for site in self._sites:
                    self._enter(site)
            try:
                yield self
            finally:
                self._stack = None

    def feed(self, batch: Batch, batches: Iterable[Batch] | None = None) -> None:
        """Forward one batch (inside ``tapping()``, under no-grad) and add its samples."""
        batch = {key: value.to(self.device) for key, value in batch.items()}
        self.locate(batch, batches)
        self.collect(batch, self.model(**model_inputs(batch)))

    def collect(self, batch: Batch, output: Any, examples: int | None = None) -> None:
        """Add the samples of the forward just run on ``batch`` (which returned ``output``), inside ``tapping()``.

        ``examples``: count only the first ``examples`` examples of the batch (the real ones of a last
        batch that accelerate padded with repeated examples to even out the processes).
        """
        if self._reference is not None and self._reference.running:
            return
        if self._stack is None or not self._sites:
            raise RuntimeError(
                "Measurement.collect needs the taps on: call it inside `with measurement.tapping():`, after "
                "locate(batch) (or with the head given)"
            )
        samples = [site.tap.collect(batch, output, labels=batch.get("labels"), examples=examples) for site in self._sites]
        for site, sample in zip(self._sites, samples):
            site.accumulator.update(sample.features, sample.outputs, sample.labels)
        self._pair_with_reference(batch, samples, examples)
        for site, sample in zip(self._sites, samples):
            self._pair_with_initial(site, sample)
            if site.recorded is not None:
                site.recorded.append(sample.features.detach().to("cpu", torch.float32))

    def run(self, batches: Iterable[Batch], *, progress: bool = False, total: int | None = None) -> None:
        """Stream every batch once (this process's share; nothing collective)."""
        autocast = self.accelerator.autocast() if self.accelerator.mixed_precision != "no" else nullcontext()
        bar = tqdm(batches, total=total, desc="forward", unit="batch",
                   disable=not (progress and self.accelerator.is_main_process))
        with self.tapping(), torch.inference_mode(), autocast:
            for batch in bar:
                self.feed(batch, batches)

    # -- across processes (collective: every rank calls these, in the same order) ---------------
    def agree(self, *succeeded: bool) -> list[bool]:
        """Whether each step succeeded on every process: one all-reduce, so all ranks decide alike.

        Call it before ``reduce_*`` whenever a step may fail on one rank alone: a rank that skips a
        collective would leave the others waiting.
        """
        if self.accelerator.num_processes == 1:
            return list(succeeded)
        failed = torch.tensor([0.0 if ok else 1.0 for ok in succeeded], device=self.accelerator.device)
        return [count == 0 for count in self.accelerator.reduce(failed, "sum").tolist()]

    def reduce_dlr(self) -> None:
        """Sum every site's D_LR statistics over the processes."""
        for site in self._sites:
            self._sum(site.accumulator)
            if site.initial_dlr is not None:
                self._sum(site.initial_dlr)

    def reduce_s_init(self) -> None:
        """Sum every site's S_init statistics over the processes."""
        for site in self._sites:
            if site.cka is not None:
                self._sum(site.cka)

    def _sum(self, statistic: DLRAccumulator | LinearCKAAccumulator) -> None:
        if self.accelerator.num_processes > 1:
            statistic.all_reduce(lambda tensor: self.accelerator.reduce(tensor, "sum"))

    # -- results -----------------------------------------------------------------------------------
    @property
    def measures_s_init(self) -> bool:
        return any(site.cka is not None for site in self._sites)

    @property
    def s_init_problem(self) -> str | None:
        """Why S_init cannot be computed from the batches fed (None: it can, or it is not measured)."""
        for site in self._sites:
            if site.initial is not None and site.s_init_problem is None and site.batches != len(site.initial):
                site.s_init_problem = "S_init: the probe has fewer batches than when the initial features were recorded"
        return next((site.s_init_problem for site in self._sites if site.s_init_problem), None)

    def result(self) -> DLRResult:
        """D_LR of the head (or of ``options.layer``), from the statistics fed (reduced, if several processes)."""
        site = self._primary()
        return site.accumulator.compute(head_weight=None if site.layer else read_head_weight(self.head))

    def initial_result(self) -> DLRResult | None:
        """D_LR of the reference model on the same batches — the value at initialisation (None without a reference)."""
        site = self._primary()
        if site.initial_dlr is None:
            return None
        return site.initial_dlr.compute(head_weight=None if site.layer else read_head_weight(site.reference_head))

    def profile(self) -> list[LayerReading]:
        """D_LR of every layer of ``options.layers``, shallow to deep ([] without ``layers``).

        Reads the statistics fed (after ``reduce_dlr()`` and, for S_init, ``reduce_s_init()`` when several
        processes). S_init and D_LR at initialisation (``initial``) are None unless a reference model
        runs beside this one; ``initial`` is also None where it is undefined (e.g. constant initial logits).
        """
        return [
            LayerReading(
                name=site.profiled.name,
                depth=site.profiled.depth,
                module_path=site.profiled.module_path,
                result=site.accumulator.compute(),
                s_init=None if site.reference_tap is None else site.cka.compute(),
                initial=_initial_or_none(site.initial_dlr),
            )
            for site in self._sites
            if site.profiled is not None
        ]

    def s_init(self) -> float:
        """Linear CKA between the initial and the current features (SPEC §4)."""
        problem = self.s_init_problem
        if problem is not None:
            raise ShapeMismatchError(problem)
        site = self._primary()
        if site.cka is None:
            raise DLRError("S_init needs a reference model or recorded initial features")
        return site.cka.compute()

    def recorded_features(self) -> list[torch.Tensor]:
        """Every batch's features (``record_features=True``), to pass as ``initial_features`` later."""
        return list(self._primary().recorded or [])

    def parameter_baselines(self, initial_parameters: dict[str, torch.Tensor] | None = None) -> dict[str, float]:
        """``param_norm`` (‖θ‖², computed once) and, given θ0 or a reference model, ``param_change``.

        Empty when ``options.baselines`` is off.
        """
        if not self.options.baselines:
            return {}
        if self._reference is not None and self._reference.adapter_base:
            return adapted_parameter_baselines(self.model)  # θ0: the base; θ: W0 + (B @ A)·scaling, trained copies
        if self._parameter_norm is None:
            self._parameter_norm = parameter_norm(self.model)
        values = {"param_norm": self._parameter_norm}
        if initial_parameters is None and self._reference is not None:
            if self._reference.parameters is None:
                self._reference.parameters = parameter_snapshot(self._reference.model)
            initial_parameters = self._reference.parameters
        if initial_parameters is not None:
            values["param_change"] = parameter_change(self.model, initial_parameters)
        return values

    # -- internals ---------------------------------------------------------------------------------
    def _primary(self) -> _Site:
        if not self._sites:
            raise DLRError("nothing was measured: feed at least one batch first")
        return self._sites[0]

    def _build_sites(self) -> None:
        layer = self.options.layer
        reference_head = None
        if self._reference is not None:
            reference_head = (
                head_without_adapters(self.head, self.model) if self._reference.adapter_base
                else locate_like(self._reference.model, self.head, self._reference.names)
            )
        primary = self._new_site(layer or "head", partial(FeatureTap, layer=layer), layer, reference_head)
        primary.recorded = [] if self._record else None
        if reference_head is not None:
            primary.initial_dlr = self._dlr_accumulator(layer, _tapped_dim(self.model, self.head, layer))
            primary.reference_head = reference_head
        if self._reference is None and self._initial_features is not None:
            primary.initial = self._initial_features
            primary.cka = LinearCKAAccumulator()
        self._sites = [primary, *self._profile_sites(reference_head)]
        if self._stack is not None:
            for site in self._sites:
                self._enter(site)

    def _profile_sites(self, reference_head: HeadInfo | None) -> list[_Site]:
        """One site per layer of ``options.layers`` (none without it); refused for very wide outputs."""
        if self.options.layers is None:
            return []
        if self.head.num_outputs > MAX_PROFILE_OUTPUTS:
            raise OutputsTooWideError(
                f"a per-layer profile needs outputs of moderate width: this model has C = {self.head.num_outputs} "
                f"outputs (at most {MAX_PROFILE_OUTPUTS}), and each layer would keep a (p + C)² float64 scatter of "
                "its features and the logits; measure the final head alone (no layers=), or a classification head"
            )
        sites = []
        for profiled in profile_layers(self.model, self.options.layers):
            make_tap = partial(profile_tap, layer=profiled)
            site = self._new_site(profiled.name, make_tap, profiled.module_path, reference_head, block=profiled.is_block)
            site.profiled = profiled
            if reference_head is not None:  # the layer at initialisation: the reference's features and logits
                site.initial_dlr = self._dlr_accumulator(site.layer, site.accumulator.feature_dim)
            sites.append(site)
        return sites

    def _new_site(
        self, name: str, make_tap: Callable[[nn.Module, HeadInfo], FeatureTap], layer: str | None,
        reference_head: HeadInfo | None, *, block: bool = False,
    ) -> _Site:
        """A site reading ``layer`` (None: the head; ``block``: a block's output), with its reference tap
        when a reference model runs."""
        tap = make_tap(self.model, self.head)  # first: it checks that `layer` names a linear layer
        # a block's width (hidden size, a stage's channels) is known from its first batch
        feature_dim = None if block else _tapped_dim(self.model, self.head, layer)
        site = _Site(
            name=name,
            layer=layer,
            tap=tap,
            accumulator=self._dlr_accumulator(layer, feature_dim),
        )
        if reference_head is not None:
            site.reference_tap = make_tap(self._reference.model, reference_head)
            site.cka = LinearCKAAccumulator()
        return site

    def _dlr_accumulator(self, layer: str | None, feature_dim: int | None) -> DLRAccumulator:
        """Statistics of one site: the head's input alone (its weight gives the outputs), or a layer's input and the logits."""
        return DLRAccumulator(
            track_outputs=layer is not None,
            num_classes=self.head.num_outputs,
            rtol=self.options.rtol,
            device=self.device,
            feature_dim=feature_dim,
            num_outputs=self.head.num_outputs,
        )

    def _enter(self, site: _Site) -> None:
        self._stack.enter_context(site.tap)
        if site.reference_tap is not None:
            self._stack.enter_context(site.reference_tap)

    def _pair_with_reference(self, batch: Batch, samples: list[Samples], examples: int | None) -> None:
        """Run the reference model on the same batch and stream CKA against each site's features."""
        if self._reference is None:
            return
        self._reference.running = True
        try:
            with disabled_adapters(self.model) if self._reference.adapter_base else nullcontext():
                output = self._reference.model(**model_inputs(batch))
        finally:
            self._reference.running = False
        for site, sample in zip(self._sites, samples):
            initial = site.reference_tap.collect(batch, output, labels=batch.get("labels"), examples=examples)
            site.cka.update(initial.features, sample.features)
            if site.initial_dlr is not None:
                site.initial_dlr.update(initial.features, initial.outputs, initial.labels)

    def _pair_with_initial(self, site: _Site, samples: Samples) -> None:
        """CKA of this batch against its recorded initial features; a mismatch is kept, not raised,
        so the D_LR pass it rides along with still completes."""
        if site.initial is None or site.s_init_problem is not None:
            return
        if site.batches == len(site.initial):
            site.s_init_problem = "S_init: the probe has more batches than when the initial features were recorded"
            return
        try:
            site.cka.update(site.initial[site.batches], samples.features)
        except (DLRError, RuntimeError) as error:
            site.s_init_problem = f"S_init: {type(error).__name__}: {error}"
        site.batches += 1


def locate_like(model: nn.Module, head: HeadInfo, names: tuple[str, str] = ("the model", "the reference")) -> HeadInfo:
    """The same head (same module path, same weight shape) in another copy of the architecture.

    ``names`` (measured model, reference) go into the HeadNotFoundError when the reference differs.
    """
    if head.module_path is None:  # layer-wise only: no head to find in the reference
        return head
    try:
        module = model.get_submodule(head.module_path)
    except AttributeError:
        module = None
    shape = tuple(getattr(head.module, "weight", torch.empty(0)).shape)
    found = tuple(getattr(module, "weight", torch.empty(0)).shape) if module is not None else None
    if found != shape:
        what = "no such module" if module is None else f"a {type(module).__name__} with weight shape {found}"
        raise HeadNotFoundError(
            f"the reference {names[1]} has no head matching {names[0]}'s: {names[0]} reads its logits from "
            f"{head.module_path!r} (weight shape {shape}), the reference has {what} there; pass the initial "
            "checkpoint of the same architecture and number of classes"
        )
    return relocate(head, model)


def _initial_or_none(accumulator: DLRAccumulator | None) -> DLRResult | None:
    """A profiled layer's D_LR at initialisation; None without a reference, or where it is undefined."""
    if accumulator is None:
        return None
    try:
        return accumulator.compute()
    except DLRError:
        return None


def _rows(batch: Batch) -> int:
    return next((value.shape[0] for value in batch.values() if value.ndim > 0), 0)


def _first_rows(batch: Batch, count: int) -> dict[str, torch.Tensor]:
    """The first ``count`` examples of a collated batch (every batch-first tensor sliced)."""
    rows = _rows(batch)
    return {key: value[:count] if value.ndim > 0 and value.shape[0] == rows else value for key, value in batch.items()}


def _tapped_dim(model: nn.Module, head: HeadInfo, layer: str | None) -> int:
    """p: the head's input width, or the tapped layer's (an nn.Linear or a LoRA layer around one, with
    ``in_features``; GPT-2's Conv1D with ``nx``)."""
    if layer is None:
        return head.feature_dim
    module = model.get_submodule(layer)
    return module.nx if isinstance(module, Conv1D) else module.in_features
