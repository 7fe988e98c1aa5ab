"""``DLRCallback``: D_LR during ``transformers.Trainer`` training, logged like any other metric.

    trainer = Trainer(..., callbacks=[DLRCallback()])

By default (``source="eval"``) the callback rides on the Trainer's own evaluation: while
``Trainer.evaluation_loop`` runs for ``evaluate()``, a forward hook on the model hands every
evaluation forward (its inputs and output) to the engine's taps and accumulators, so D_LR covers
every evaluation example, exactly once, at no extra forward pass. With several processes the
prepared evaluation loader pads the last batch with repeated examples; the callback leaves them
out exactly as ``accelerator.gather_for_metrics`` does (the first ``gradient_state.remainder``
examples of the gathered last batch are kept, the processes' batches gathered in rank order).
``source="probe"`` (implied by ``probe_dataset=``) instead runs a separate forward over a fixed
probe subset at every evaluation; ``every_n_steps`` measurements, between evaluations, always use
the probe. A ``probe_dataset`` is one probe whatever the eval sets: over a dict of eval sets it is
measured once per ``Trainer.evaluate()`` call (the model is the same for every set), not once per
set. Without one, the probe is a subsample of the eval set, or of each eval set of a dict (one probe
per set, named after it), else of the train set.

Token classification: ``dlr_hf.evaluate`` measures the first sub-token of each word (from the
tokenizer's word ids). The Trainer's batches carry no word ids, but with per-token labels the
standard preprocessing labels exactly those positions (−100 on the other sub-tokens, the special
tokens and the padding), so when a batch has labels the callback measures the labelled positions
(labels ≠ −100), and agrees with ``evaluate()`` on the same examples. Batches without labels fall
back to every non-padding position (special tokens included); labels on every sub-token
(``label_all_tokens``) mean every sub-token is measured.

The values are published as ``eval_dlr``, ``eval_dlr_rank``, ``eval_nc1``,
``eval_effective_rank``, ``eval_s_init``, ``eval_param_norm``, ``eval_param_change`` and
``eval_dlr_change`` (below) through
``trainer.log`` — the only way such keys reach ``log_history`` and every ``report_to``
integration (keys added to ``metrics`` inside ``on_evaluate`` are lost, since the Trainer has
logged them already). A dict of eval datasets gives ``eval_<name>_dlr`` … (with ``probe_dataset=``:
``eval_dlr`` …, its one probe); step-based measurements use the same names without the ``eval_``
prefix (``dlr`` …, or ``<name>_dlr`` for the default probe of each eval set of a dict). With
``layers=`` (a richness profile across depth, filled in the same forward) every layer adds
``eval_dlr/<layer>`` (e.g. ``eval_dlr/block_07``); a per-layer ``eval_s_init/<layer>`` only beside a
reference model (a PEFT model's base), since the step-0 features are recorded for the head alone.

S_init compares with the model at step 0 on the same examples: at train begin (step 0 of a fresh
run) the callback runs one forward pass of the initial model over each evaluation set in the
Trainer's own evaluation order (its prepared loader, ``prediction_step``, the same de-duplication)
and keeps those features; each evaluation pairs its batches with them one by one. Every rank
takes part in the forward passes and the reductions; only the main process writes files. The
history survives a resume (``ExportableState`` in ``trainer_state.json``), and the initial
features and parameters are kept in ``output_dir`` for S_init after a resume.

What tells rich from lazy is the change from initialisation (SPEC §5: lazy stays at its initial
value), so the same step-0 pass also gives D_LR at initialisation (the initial model's features and
outputs, its head at step 0; reduced over the processes like any measurement, no extra forward).
Every measurement then publishes ``eval_dlr_change`` (D_LR minus that value, on the same examples)
through ``trainer.log`` like the other values; the value at step 0 itself, a constant of the run, is
not logged: it is ``eval_dlr_initial`` in ``callback.history`` / ``dlr_history.*`` and
``callback.initial_dlr`` (``{"eval_dlr": 0.46}``, by the key it calibrates). It is kept in the
step-0 reference file too, so a resumed run still reports the change (a reference written before it
existed: the change is missing, with a warning). With ``layers=`` the same step-0 pass feeds the
profile too (one reduction with the head), so every layer also publishes ``eval_dlr_change/<layer>``
(its D_LR minus its own value at step 0; ``eval_dlr_initial/<layer>`` history only, and in
``callback.initial_dlr`` as ``"eval_dlr/<layer>"``), kept in the reference file beside the head's; a
layer's change is published only where the head's is (missing for the same reason, no warning of its
own; a reference without the per-layer values: one warning, the layers' changes left out). At train end ``callback.verdicts`` holds the
engine's calibrated verdict (``dlr_hf.engine.verdict``: change, tolerance ±0.05, S_init) on the last
measurement of each key, e.g. ``verdicts["eval_dlr"].label`` "rich" or "lazy"; the main process logs
each as one ``logging`` INFO line.

A measurement never stops training. When a value cannot be measured (non-finite features or
weights of a diverging run, a probe of fewer than 2 examples, a lost or corrupted initial
reference on resume, a D_LR at step 0 that could not be measured, …) the callback logs a warning
(``logging`` and ``callback.warnings``) and records the value as missing: **left out of**
``trainer.log`` (a gap in TensorBoard / W&B charts, no NaN in their summaries) and **NaN** in
``callback.history`` and ``dlr_history.*``, whose row then carries the reason under ``"warning"``.
The processes first agree (one all-reduce of failure flags) on whether every one of them
succeeded, so a local failure skips the measurement on all ranks instead of leaving the others
waiting in a collective. S_init, ``param_change`` and ``dlr_change`` compare with the model at
step 0 only: if its reference is lost, they stay missing for the rest of the run rather than being
re-based on a resumed checkpoint. Wrong settings are not measurement failures: they
raise ``InvalidArgumentError`` (constructor) or ``LayerNotFoundError`` (a bad ``layer=``, at train begin).
"""

from __future__ import annotations

import csv
import functools
import inspect
import json
import logging
import math
import numbers
import pickle
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, TypeVar

import torch
from accelerate import Accelerator
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from transformers import Trainer, TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_callback import ExportableState

from dlr_hf.engine import CALLBACK, DLRResult, HeadInfo, Measurement, MeasurementOptions, Verdict, parameter_snapshot, subsample_indices
from dlr_hf.engine import verdict as engine_verdict
from dlr_hf.engine import ADAPTER_BASE, LABELLED_TOKENS, find_linear_layer, is_adapter_model
from dlr_hf.errors import DLRError, InvalidArgumentError, LayerNotFoundError, TooFewSamplesError

log = logging.getLogger(__name__)

REFERENCE_FILE = "dlr_reference_rank{rank}.pt"
EVAL, PROBE = "eval", "probe"
"""Where evaluation-time measurements come from: the Trainer's own evaluation, or a separate probe pass."""
MISSING = float("nan")
"""How the history records a value that could not be measured (it is left out of ``trainer.log``)."""

CALIBRATION = ("dlr_initial", "dlr_change")
"""D_LR at step 0 of the same examples, and D_LR minus it (what tells rich from lazy, SPEC §5)."""
HISTORY_ONLY = ("dlr_initial",)
"""Kept in the history rows but not logged: a constant of the run (also ``callback.initial_dlr``)."""

MEASUREMENT_ERRORS = (DLRError, RuntimeError)
"""What a measurement may raise without stopping training: dlr-hf's own errors and torch's
runtime errors (shape problems, out of memory) from the probe pass."""

_T = TypeVar("_T")


@dataclass
class _Probe:
    """One fixed probe set: its batches (this rank's shard), the initial model's features and D_LR."""

    loader: DataLoader
    initial_features: list[torch.Tensor] | None = None
    initial_dlr: float | None = None
    """D_LR of the model at step 0 over this probe (None: unknown)."""
    initial_profile: dict[str, float] = field(default_factory=dict)
    """With ``layers=``: each layer's D_LR at step 0 over this probe (a layer left out: unknown)."""


@dataclass
class _Ride:
    """One measurement riding on the forwards of one pass over a prepared evaluation loader.

    Forward hooks on the model feed it: the pre-hook locates the head on the first batch (once
    per run), the hook collects each forward's real examples. The first failure is kept as
    ``problem`` and stops the collecting; the pass itself (the Trainer's) always goes on.
    """

    measurement: Measurement
    loader: DataLoader
    accelerator: Accelerator
    problem: str | None = None
    checksums: list[torch.Tensor] = field(default_factory=list)
    """One float64 sum of every input tensor per batch: tells S_init whether the examples are those of step 0."""
    _busy: bool = field(default=False, repr=False)  # inside a forward of our own (locating, a reference model)

    def before_forward(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if self.measurement.head is not None or self._busy or self.problem is not None:
            return
        self._busy = True  # locating runs its own two-row forward of the model
        try:
            self.measurement.locate(labelled_positions(_tensors(kwargs)), self.loader)
        except MEASUREMENT_ERRORS as error:
            self.fail(error)
        finally:
            self._busy = False

    def after_forward(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
        if self._busy or self.problem is not None:
            return
        batch = _tensors(kwargs)
        self._busy = True  # a reference model (a PEFT model's base: this model, adapters off) runs inside collect
        try:
            if args:
                raise DLRError("the model was called with positional inputs; the callback reads keyword inputs")
            examples = real_examples(self.accelerator, self.loader, _rows(batch))
            self.measurement.collect(labelled_positions(batch), output, examples=examples)
            self.checksums.append(_checksum(batch))
        except MEASUREMENT_ERRORS as error:
            self.fail(error)
        finally:
            self._busy = False

    def same_examples(self, recorded: list[float] | None) -> bool:
        """Whether this pass read the same inputs, batch by batch, as the step-0 pass that gave ``recorded``."""
        if recorded is None or len(recorded) != len(self.checksums):
            return False
        sums = torch.stack(self.checksums).tolist() if self.checksums else []
        return all(math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9) for a, b in zip(sums, recorded))

    def fail(self, error: Exception) -> None:
        log.debug("DLRCallback: collecting an evaluation forward failed", exc_info=True)
        self.problem = f"D_LR: {type(error).__name__}: {error}"

    @property
    def failure(self) -> str | None:
        """Why this process has no D_LR statistics of the pass (None: it has them)."""
        if self.problem is None and not self.checksums:
            return "D_LR: this process ran no evaluation batch"
        return self.problem


def real_examples(accelerator: Accelerator, loader: DataLoader, rows: int) -> int | None:
    """How many leading examples of the current batch of ``loader`` are real (None: all of them).

    Mirrors ``Accelerator.gather_for_metrics``: in the last batch of a prepared loader, the
    processes' batches gathered in rank order keep their first ``gradient_state.remainder`` rows;
    the rest repeat examples from the start of the dataset to even out the processes.
    """
    state = accelerator.gradient_state
    if state.active_dataloader is not loader or not state.end_of_dataloader or state.remainder <= 0:
        return None
    kept = min(max(state.remainder - accelerator.process_index * rows, 0), rows)
    return None if kept == rows else kept


def labelled_positions(batch: Mapping[str, Any]) -> Mapping[str, Any]:
    """``batch`` with the token positions its labels mark (labels ≠ −100, padding excluded) as the positions
    a token-classification head is measured on; unchanged without per-token labels.

    The Trainer's batches carry no word ids, but the standard Hugging Face token-classification
    preprocessing labels exactly the first sub-token of each word and gives −100 to the other
    sub-tokens, the special tokens and the padding: the rule ``dlr_hf.evaluate`` applies from word ids.
    The mask travels under ``LABELLED_TOKENS`` (read for per-position heads only, never a model
    input; the head's position rule says so); per-token labels are integer labels of the token grid's shape (that of
    ``input_ids`` or ``attention_mask``).
    """
    labels = batch.get("labels")
    grid = batch.get("input_ids", batch.get("attention_mask"))
    if (
        not isinstance(labels, torch.Tensor) or not isinstance(grid, torch.Tensor) or LABELLED_TOKENS in batch
        or labels.ndim != 2 or labels.shape != grid.shape
        or labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool
    ):
        return batch
    kept = labels != -100
    mask = batch.get("attention_mask")
    if isinstance(mask, torch.Tensor) and mask.shape == kept.shape:
        kept &= mask.to(kept.device).bool()
    return {**batch, LABELLED_TOKENS: kept}


@dataclass
class _Round:
    """One ``Trainer.evaluate()`` call from outside (over several eval sets, one call per set inside it)."""

    prefix: str
    """Its ``metric_key_prefix`` (``"eval"`` for the Trainer's own evaluations)."""
    several: bool
    """Whether it evaluates a dict of eval sets."""
    measured: bool = False
    """Whether the shared probe was measured in it already."""


class DLRCallback(TrainerCallback, ExportableState):
    """Measure D_LR at every evaluation during training; a failed measurement never stops training.

    Args:
        probe_dataset: examples in the Trainer's format (what its data collator takes) for the
            probe passes; default: the eval dataset (each one, for a dict of eval datasets), else
            the train dataset. Giving one implies ``source="probe"``. It is one probe whatever the
            eval sets: measured once per ``Trainer.evaluate()`` call, also over a dict of eval sets,
            and logged ``eval_dlr`` … (``dlr`` … by ``every_n_steps``).
        source: what evaluation-time measurements read. ``"eval"`` (the default without
            ``probe_dataset``): the Trainer's own evaluation forwards over its whole eval set(s),
            no extra forward pass; ``num_samples`` and ``batch_size`` do not apply to it.
            ``"probe"``: a separate forward over the probe at every evaluation.
        every_n_steps: also measure every N ≥ 1 optimiser steps, over the probe (logged without prefix).
        write_files: at train end write ``dlr_history.json``, ``dlr_history.csv`` and
            ``dlr_trajectory.png`` into ``output_dir``.
        **settings: the ``MeasurementOptions`` offered to the callback, as keywords:
            ``num_samples`` (probe size, at least 2; None: the whole set; default 512), drawn
            deterministically with ``seed`` (the same subsample ``dlr_hf.evaluate`` draws, so the
            two agree); ``layer`` (layer-wise D_LR); ``baselines`` (also S_init, ‖θ‖² and
            ‖θ − θ0‖/‖θ0‖, keeping a CPU copy of the initial parameters and one forward pass
            of the initial model over the measured examples at train begin); ``batch_size``
            (probe passes; default: the eval batch size); ``rtol``.

    Attributes:
        options: the measurement settings in force.
        history: one row per measurement (step, epoch, probe, values; NaN where a value is missing,
            with the reason under ``"warning"``); with baselines, also ``dlr_initial`` (not logged)
            and ``dlr_change`` under each prefix (with ``layers=``, ``dlr_initial/<layer>`` and
            ``dlr_change/<layer>`` too).
        initial_dlr: D_LR of the model at step 0, by the key of the D_LR it calibrates
            (``{"eval_dlr": 0.46}``; with ``layers=`` also ``"eval_dlr/<layer>"``); empty without
            baselines or before training.
        verdicts: at train end, the engine's ``Verdict`` on the last measurement of each D_LR key
            whose change is known (``{"eval_dlr": Verdict(label="rich", ...)}``).
        warnings: every warning this process's callback logged, in order.

    Raises:
        InvalidArgumentError: a setting out of range, here rather than mid-run.
    """

    def __init__(
        self,
        probe_dataset: Dataset | None = None,
        *,
        source: str | None = None,
        every_n_steps: int | None = None,
        write_files: bool = True,
        **settings: Any,
    ) -> None:
        self.probe_dataset = probe_dataset
        self.source = _source(source, probe_dataset)
        self.options = _callback_options(settings)
        self.every_n_steps = None if every_n_steps is None else _every_n_steps(every_n_steps)
        self.write_files = write_files
        self.history: list[dict[str, Any]] = []
        self.warnings: list[str] = []
        self.trainer: Trainer | None = None
        self._probes: dict[str, _Probe] = {}
        self._evaluation_features: dict[str, list[torch.Tensor]] = {}  # by metric prefix: step-0 features
        self._evaluation_checksums: dict[str, list[float]] = {}  # by metric prefix: the step-0 pass's input sums
        self._evaluation_dlr: dict[str, float] = {}  # by metric prefix: D_LR of the step-0 pass
        self._evaluation_profile: dict[str, dict[str, float]] = {}  # by metric prefix: {layer: D_LR at step 0}
        self._last: dict[str, tuple[int, DLRResult, float, float | None]] = {}  # by key prefix: the last calibrated reading
        self.verdicts: dict[str, Verdict] = {}
        self._rides: dict[str, _Ride] = {}  # by metric prefix: the evaluation pass just tapped
        self._round: _Round | None = None  # the Trainer.evaluate() call in progress (source="probe")
        self._head: HeadInfo | None = None
        self._initial_parameters: dict[str, torch.Tensor] | None = None
        self._has_reference = False  # training began with baselines: θ0 was taken or is known to be lost
        self._keys: dict[str, list[str]] = {}

    # -- wiring --------------------------------------------------------------------------------
    def set_trainer(self, trainer: Trainer) -> None:
        """Attach the Trainer explicitly (done automatically when passed in ``callbacks=``)."""
        self.trainer = trainer
        self._ride_on_evaluations(trainer)
        if self.source == PROBE:
            self._watch_evaluation_rounds(trainer)

    def on_init_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        if self.trainer is None:
            trainer = _calling_trainer()
            if trainer is not None:
                self.set_trainer(trainer)

    def state(self) -> dict[str, Any]:
        return {
            "args": {
                **self.options.as_dict(CALLBACK),
                "source": self.source,
                "every_n_steps": self.every_n_steps,
                "write_files": self.write_files,
            },
            "attributes": {"history": self.history},
        }

    # -- events --------------------------------------------------------------------------------
    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        if self.trainer is None:  # a copy the Trainer made from a checkpoint (restore_callback_states_from_checkpoint)
            trainer = _calling_trainer()
            if trainer is not None:
                self.set_trainer(trainer)
        trainer = self._require_trainer()
        # Settings errors surface here, before the first step, not as a failed measurement mid-run.
        if self.options.layer is not None:
            _check_layer(trainer.model, self.options.layer)
        if self._uses_probes:
            for name in self._probe_names(trainer):
                self._probe(name)
        self._restore_history(state)
        if not self.options.baselines:
            return
        self._has_reference = True
        reference = Path(args.output_dir) / REFERENCE_FILE.format(rank=args.process_index)
        if state.global_step == 0:
            self._record_reference(reference)
        else:  # θ0 is the model at step 0: a resumed checkpoint must never become the reference
            self._load_reference(reference)

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        if self.every_n_steps and state.global_step % self.every_n_steps == 0:
            trainer = self._require_trainer()
            for name in self._probe_names(trainer):
                prefix = "" if name == "eval" else f"{name}_"
                self._measure_and_log(name, prefix)

    def on_evaluate(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, metrics: dict[str, float] | None = None, **kwargs: Any
    ) -> None:
        metrics = metrics or {}
        prefix = next((key[: -len("_runtime")] for key in metrics if key.endswith("_runtime")), "eval")
        name = prefix[len("eval_"):] if prefix.startswith("eval_") else "eval"
        trainer = self._require_trainer()
        if self.source == PROBE:
            if self._shared_probe(trainer):
                self._measure_shared_probe(prefix)
            else:
                self._measure_and_log(name, f"{prefix}_")
            return
        ride = self._rides.pop(prefix, None)
        if ride is None:  # e.g. an evaluate() overridden so that it no longer runs evaluation_loop
            measurement, failure = self._measurement(), (
                "D_LR: this evaluation did not run Trainer.evaluation_loop, which the callback rides on; "
                "use DLRCallback(source='probe')"
            )
        else:
            measurement, failure = ride.measurement, ride.failure
            self._head = measurement.head or self._head
        initial = self._evaluation_features.get(prefix) if self.options.baselines else None
        dlr_initial = self._evaluation_dlr.get(prefix) if self.options.baselines else None
        profile_initial = self._evaluation_profile.get(prefix, {})
        other_examples = change_problem = None
        if ride is not None and not ride.same_examples(self._evaluation_checksums.get(prefix)):
            unlike = f"this evaluation's examples are not those {prefix!r} had at step 0"
            if initial is not None:
                other_examples = f"S_init: {unlike}"
            if dlr_initial is not None:
                dlr_initial, change_problem = None, f"dlr_change: {unlike}"
        self._reduce_and_publish(
            name, f"{prefix}_", measurement, failure is None, initial, [failure] if failure else [], other_examples,
            dlr_initial=dlr_initial, change_problem=change_problem, profile_initial=profile_initial,
        )

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        self._state_verdicts(state)
        if self.write_files and state.is_world_process_zero and self.history:
            try:
                write_history(self.history, Path(args.output_dir), state.log_history)
            except OSError as error:
                self._warn(f"DLRCallback could not write its history files into {args.output_dir}: {error}")

    # -- measuring -----------------------------------------------------------------------------
    def _measure_shared_probe(self, prefix: str) -> None:
        """The one probe ("eval"), once per ``Trainer.evaluate()`` call: under that call's prefix when it
        covers several eval sets (``eval_dlr``, not ``eval_<name>_dlr``), else under the evaluation's own."""
        evaluation = self._round
        if evaluation is not None and evaluation.several:
            if evaluation.measured:
                return  # the same probe, the same model: measured for the first eval set of this call already
            evaluation.measured = True
            prefix = evaluation.prefix
        self._measure_and_log("eval", f"{prefix}_")

    def _measure_and_log(self, name: str, prefix: str) -> None:
        """Measure probe ``name`` in a pass of its own; publish what could be measured, the rest as missing."""
        problems: list[str] = []
        probe = self._attempt(problems, "D_LR", lambda: self._probe(name))  # e.g. an eval set the Trainer does not hold
        initial = probe.initial_features if probe is not None and self.options.baselines else None
        measurement = self._measurement(initial_features=initial)
        ran = probe is not None and self._attempt(problems, "D_LR", lambda: self._run(measurement, name)) is not None
        self._reduce_and_publish(
            name, prefix, measurement, ran, initial, problems,
            dlr_initial=probe.initial_dlr if probe is not None and self.options.baselines else None,
            profile_initial=probe.initial_profile if probe is not None else {},
        )

    def _reduce_and_publish(
        self, name: str, prefix: str, measurement: Measurement, ran: bool, initial: list[torch.Tensor] | None,
        problems: list[str], s_init_problem: str | None = None, *, dlr_initial: float | None = None,
        change_problem: str | None = None, profile_initial: Mapping[str, float] | None = None,
    ) -> None:
        """Reduce this process's statistics of ``measurement`` with the others' and publish (collective).

        ``dlr_initial``: D_LR at step 0 of the same examples, for ``dlr_change`` (None: unknown, for
        ``change_problem`` or, by default, because it was never measured or is lost).
        ``profile_initial``: with ``layers=``, each layer's D_LR at step 0 of the same examples, for
        ``dlr_change/<layer>`` (used only where the head's change is known: no warnings of its own).
        """
        values: dict[str, float] = {}
        s_init_problem = s_init_problem or measurement.s_init_problem
        paired = ran and initial is not None and s_init_problem is None
        # Decide together before any data collective: a rank that failed alone would leave the others waiting.
        # (``dlr_initial`` too: each rank reads its own reference file, so one may have lost it alone.)
        dlr_everywhere, paired_everywhere, calibrated_everywhere = measurement.agree(ran, paired, dlr_initial is not None)
        result: DLRResult | None = None
        if dlr_everywhere:
            result = self._attempt(problems, "D_LR", lambda: self._reduce_and_compute(measurement))
        elif ran:
            problems.append("D_LR: another process could not measure it (see that process's log)")
        if result is not None:
            values.update(dlr=result.dlr, dlr_rank=float(result.rank))
            optional = {"effective_rank": result.effective_rank, "nc1": result.nc1, "probe_accuracy": result.accuracy}
            values.update({key: value for key, value in optional.items() if value is not None})
        if self.options.baselines:
            values.update(self._parameter_baselines(measurement, problems))
        if self.options.baselines and self._has_reference:  # (not in an evaluate() before any training)
            if paired_everywhere:
                s_init = self._attempt(problems, "S_init", lambda: self._reduce_and_compare(measurement))
                if s_init is not None:
                    values["s_init"] = s_init
            elif initial is None:
                problems.append(f"S_init: no initial features of {name!r}")
            elif ran:
                problems.append(s_init_problem or "S_init: another process could not measure it (see that process's log)")
            if calibrated_everywhere:
                values["dlr_initial"] = dlr_initial
                if result is not None and math.isfinite(result.dlr):
                    values["dlr_change"] = result.dlr - dlr_initial
            elif result is not None:  # (no D_LR: its own problem says why, and so why no change)
                problems.append(
                    change_problem or (f"dlr_change: no D_LR at step 0 of {name!r}" if dlr_initial is None
                                       else "dlr_change: another process has no D_LR at step 0 (see that process's log)")
                )
            self._remember(prefix, result if "dlr_change" in values else None, dlr_initial, values.get("s_init"))
        if result is not None and self.options.layers is not None:
            calibrated = "dlr_change" in values  # (else the head's change says why the layers' are missing too)
            values.update(self._profile(
                measurement, problems, with_s_init="s_init" in values,
                initial=(profile_initial or {}) if calibrated else {},
            ))
        problems += [f"{key} is not finite ({value})" for key, value in values.items() if not math.isfinite(value)]
        self._publish(name, prefix, values, problems, degenerate=result is not None and result.degenerate)

    def _profile(
        self, measurement: Measurement, problems: list[str], with_s_init: bool, initial: Mapping[str, float],
    ) -> dict[str, float]:
        """``dlr/<layer>`` for every layer of the ``layers`` profile, ``s_init/<layer>`` when the
        S_init statistics were reduced and a reference model ran beside (PEFT: the base), and
        ``dlr_change/<layer>`` (with ``dlr_initial/<layer>``, history only) where ``initial`` (the
        layer's D_LR at step 0) is known and the layer's D_LR is finite."""
        readings = self._attempt(problems, "profile", measurement.profile) or []
        values = {f"dlr/{reading.name}": reading.result.dlr for reading in readings}
        if with_s_init:
            values.update({f"s_init/{reading.name}": reading.s_init for reading in readings if reading.s_init is not None})
        for reading in readings:
            start = initial.get(reading.name)
            if start is not None and math.isfinite(reading.result.dlr):
                values[f"dlr_initial/{reading.name}"] = start
                values[f"dlr_change/{reading.name}"] = reading.result.dlr - start
        return values

    def _parameter_baselines(self, measurement: Measurement, problems: list[str]) -> dict[str, float]:
        """‖θ‖² and, once training began with a reference, ‖θ − θ0‖/‖θ0‖ (missing when θ0 is lost)."""
        if not self._has_reference:
            return measurement.parameter_baselines()
        if self._initial_parameters is None:
            problems.append("param_change: the initial parameters are lost")
            return measurement.parameter_baselines()
        initial = self._initial_parameters
        return self._attempt(problems, "param_change", lambda: measurement.parameter_baselines(initial)) or {}

    def _publish(self, name: str, prefix: str, values: dict[str, float], problems: list[str], degenerate: bool) -> None:
        """Finite values go to ``trainer.log``; the history row has every expected key, NaN if missing."""
        trainer = self.trainer
        expected = ["dlr", "dlr_rank", "effective_rank"]
        if self.options.baselines:
            expected += ["param_norm", "param_change", "s_init", *CALIBRATION] if self._has_reference else ["param_norm"]
        keys = list(dict.fromkeys(expected + self._keys.get(name, []) + list(values)))
        if not problems:
            self._keys[name] = list(values)
        row = {f"{prefix}{key}": _finite_or_missing(values.get(key, MISSING)) for key in keys}
        history_only = {f"{prefix}{key}" for key in keys if key.split("/", 1)[0] in HISTORY_ONLY}  # (per layer too)
        logs = {key: value for key, value in row.items() if not math.isnan(value) and key not in history_only}
        if degenerate:
            row[f"{prefix}dlr_degenerate"] = logs[f"{prefix}dlr_degenerate"] = 1.0
        step = trainer.state.global_step
        if problems:
            row["warning"] = "; ".join(problems)
            self._warn(
                f"DLRCallback, step {step}, probe {name!r}: {row['warning']}. Recorded as missing "
                "(NaN in the history, left out of trainer.log); training continues."
            )
        self.history.append({"step": step, "epoch": trainer.state.epoch, "probe": name, **row})
        if logs:
            trainer.log(dict(logs))

    def _remember(self, prefix: str, result: DLRResult | None, dlr_initial: float | None, s_init: float | None) -> None:
        """The latest reading under ``prefix`` for the verdict at train end (``result`` None: its change is missing)."""
        if result is None:
            self._last.pop(prefix, None)  # no verdict on an earlier reading than the last
        else:
            self._last[prefix] = (self.trainer.state.global_step, result, dlr_initial, s_init)

    def _state_verdicts(self, state: TrainerState) -> None:
        """The engine's verdict on the last measurement of each D_LR key whose change is known (``verdicts``);
        the main process logs each in one line."""
        self.verdicts = {}
        for prefix, (step, result, dlr_initial, s_init) in self._last.items():
            key = f"{prefix}dlr"
            self.verdicts[key] = engine_verdict(result, dlr_initial, s_init)
            if state.is_world_process_zero:
                log.info("DLRCallback, %s at step %d: %s", key, step, self.verdicts[key].text)

    @property
    def initial_dlr(self) -> dict[str, float]:
        """D_LR of the model at step 0 by the key of the D_LR it calibrates (``{"eval_dlr": 0.46}``), as
        recorded at train begin or read back from the step-0 reference on resume; unknown ones left out."""
        values = {f"{prefix}_dlr": value for prefix, value in self._evaluation_dlr.items()}
        for prefix, layers in self._evaluation_profile.items():
            values.update({f"{prefix}_dlr/{layer}": value for layer, value in layers.items()})
        for name, probe in self._probes.items():
            if probe.initial_dlr is None:
                continue
            keys = []
            if self.source == PROBE:
                keys.append("eval_dlr" if name == "eval" else f"eval_{name}_dlr")
            if self.every_n_steps is not None:
                keys.append("dlr" if name == "eval" else f"{name}_dlr")
            for key in keys:
                values[key] = probe.initial_dlr
                values.update({f"{key}/{layer}": value for layer, value in probe.initial_profile.items()})
        return values

    def _measurement(self, **kwargs: Any) -> Measurement:
        trainer = self.trainer
        if self.options.baselines and not kwargs.get("record_features") and is_adapter_model(trainer.model):
            kwargs["reference"] = ADAPTER_BASE  # a PEFT model's S_init and param_change: against its base, adapters off
        return Measurement(trainer.model, trainer.accelerator, self.options, head=self._head, **kwargs)

    def _run(self, measurement: Measurement, name: str) -> Measurement:
        """This process's pass of the current model over probe ``name``, not yet reduced (no collective)."""
        model = self.trainer.model
        probe = self._probe(name)
        if len(probe.loader.dataset) == 0:
            raise TooFewSamplesError(
                f"this process has no example of probe {name!r} (a probe needs at least 2 examples and "
                "at least one per process)"
            )
        was_training = model.training
        model.eval()
        try:
            measurement.run(probe.loader)
        finally:
            model.train(was_training)
        self._head = measurement.head
        return measurement

    def _reduce_and_compute(self, measurement: Measurement) -> DLRResult:
        measurement.reduce_dlr()
        return measurement.result()

    def _reduce_and_compare(self, measurement: Measurement) -> float:
        measurement.reduce_s_init()
        return measurement.s_init()

    def _attempt(self, problems: list[str], what: str, action: Callable[[], _T]) -> _T | None:
        """``action()``, or None with the reason appended to ``problems`` if the measurement failed."""
        try:
            return action()
        except MEASUREMENT_ERRORS as error:
            log.debug("DLRCallback: %s failed", what, exc_info=True)
            problems.append(f"{what}: {type(error).__name__}: {error}")
            return None

    def _warn(self, message: str) -> None:
        log.warning(message)
        self.warnings.append(message)

    # -- riding on the Trainer's evaluation ------------------------------------------------------
    def _ride_on_evaluations(self, trainer: Trainer) -> None:
        """Wrap ``trainer.evaluation_loop`` (once per callback) so that ``evaluate()``'s passes are tapped.

        The wrapper stays inert for a callback the Trainer no longer holds (e.g. replaced by a
        restored copy on resume), for ``source="probe"`` and for ``predict()``.
        """
        loop = trainer.evaluation_loop
        if getattr(loop, "dlr_callback", None) is self:
            return
        signature = inspect.signature(loop)  # the Trainer's own, through any earlier wrapper's __wrapped__

        @functools.wraps(loop)
        def evaluation_loop(*args: Any, **kwargs: Any) -> Any:
            call = signature.bind(*args, **kwargs)
            call.apply_defaults()
            arguments = call.arguments
            if (
                self.source != EVAL
                or self not in trainer.callback_handler.callbacks
                or arguments.get("description") == "Prediction"
            ):
                return loop(*args, **kwargs)
            prefix = arguments["metric_key_prefix"]
            initial = self._evaluation_features.get(prefix) if self.options.baselines else None
            ride = self._ride(arguments["dataloader"], initial=initial)
            with self._riding(ride):
                output = loop(*args, **kwargs)
            self._rides[prefix] = ride
            return output

        evaluation_loop.dlr_callback = self
        trainer.evaluation_loop = evaluation_loop

    def _watch_evaluation_rounds(self, trainer: Trainer) -> None:
        """Wrap ``trainer.evaluate`` (once per callback) so that ``on_evaluate`` knows which outside call
        it belongs to: over a dict of eval sets, one call runs ``evaluate`` (and ``on_evaluate``) per set,
        and the one probe is measured once per call, under that call's prefix. Inert for a callback
        the Trainer no longer holds; any call it cannot read is passed on untouched."""
        evaluate = trainer.evaluate
        if getattr(evaluate, "dlr_callback", None) is self:
            return
        signature = inspect.signature(evaluate)

        @functools.wraps(evaluate)
        def watched(*args: Any, **kwargs: Any) -> Any:
            if self._round is not None or self not in trainer.callback_handler.callbacks:
                return evaluate(*args, **kwargs)  # (inside a call already: one set of a dict)
            try:
                call = signature.bind(*args, **kwargs)
            except TypeError:
                return evaluate(*args, **kwargs)  # let the Trainer say what is wrong with the call
            call.apply_defaults()
            datasets = call.arguments.get("eval_dataset")
            prefix = call.arguments.get("metric_key_prefix", "eval")
            several = isinstance(trainer.eval_dataset if datasets is None else datasets, dict)
            self._round = _Round(prefix if isinstance(prefix, str) else "eval", several)
            try:
                return evaluate(*args, **kwargs)
            finally:
                self._round = None

        watched.dlr_callback = self
        trainer.evaluate = watched

    def _ride(self, loader: DataLoader, *, initial: list[torch.Tensor] | None = None) -> _Ride:
        measurement = self._measurement(initial_features=initial)
        return _Ride(measurement, loader, self.trainer.accelerator)

    @contextmanager
    def _riding(self, ride: _Ride) -> Iterator[_Ride]:
        """The model's forwards feed ``ride`` while inside (hooks removed on the way out, whatever happens)."""
        model = self.trainer.model
        with ExitStack() as stack:
            try:
                stack.enter_context(ride.measurement.tapping())
                stack.callback(model.register_forward_pre_hook(ride.before_forward, with_kwargs=True).remove)
                stack.callback(model.register_forward_hook(ride.after_forward, with_kwargs=True).remove)
            except MEASUREMENT_ERRORS as error:
                ride.fail(error)
            yield ride

    def _record_evaluation(self, name: str, measurement: Measurement) -> list[torch.Tensor]:
        """The initial model's features over eval set ``name``: one pass in the Trainer's evaluation order,
        feeding ``measurement`` (not reduced: no collective)."""
        trainer = self.trainer
        loader = trainer.get_eval_dataloader(name if isinstance(trainer.eval_dataset, dict) else None)
        ride = _Ride(measurement, loader, trainer.accelerator)
        model = trainer.model
        accelerator = trainer.accelerator
        autocast = accelerator.autocast() if accelerator.mixed_precision != "no" else nullcontext()
        was_training = model.training
        model.eval()
        try:
            with self._riding(ride), autocast:
                for batch in loader:
                    trainer.prediction_step(model, batch, prediction_loss_only=True)
        finally:
            model.train(was_training)
        if ride.failure is not None:
            raise DLRError(ride.failure)
        self._head = ride.measurement.head
        self._evaluation_checksums[self._evaluation_prefix(name)] = torch.stack(ride.checksums).tolist()
        return ride.measurement.recorded_features()

    # -- the initial reference (θ0, its features and D_LR, for S_init, param_change and dlr_change) --
    def _record_reference(self, reference: Path) -> None:
        """Snapshot the model at step 0, its features and D_LR on the measured examples; keep them in ``output_dir``.

        Collective: every rank records, then all compute D_LR at step 0 together (or all skip it).
        """
        trainer = self.trainer
        self._initial_parameters = parameter_snapshot(trainer.model)
        if self.source == EVAL and trainer.eval_dataset is not None:
            evaluations = trainer.eval_dataset
            for name in list(evaluations) if isinstance(evaluations, dict) else ["eval"]:
                what, prefix = f"evaluation set {name!r}", self._evaluation_prefix(name)
                recorder = self._measurement(record_features=True)
                features = self._record(what, lambda: self._record_evaluation(name, recorder))
                if features is not None:
                    self._evaluation_features[prefix] = features
                dlr, profile = self._initial_dlr(what, recorder, features is not None)
                if dlr is not None:
                    self._evaluation_dlr[prefix] = dlr
                if profile:
                    self._evaluation_profile[prefix] = profile
        if self._uses_probes:
            for name in self._probe_names(trainer):
                what = f"probe {name!r}"
                recorder = self._measurement(record_features=True)
                recorded = self._record(what, lambda: self._run(recorder, name)) is not None
                if recorded:
                    self._probe(name).initial_features = recorder.recorded_features()
                self._probe(name).initial_dlr, self._probe(name).initial_profile = self._initial_dlr(what, recorder, recorded)
        features = {name: probe.initial_features for name, probe in self._probes.items() if probe.initial_features}
        probe_dlr = {name: probe.initial_dlr for name, probe in self._probes.items() if probe.initial_dlr is not None}
        probe_profile = {name: probe.initial_profile for name, probe in self._probes.items() if probe.initial_profile}
        saved = {
            "parameters": self._initial_parameters, "features": features,
            "evaluation_features": self._evaluation_features, "evaluation_checksums": self._evaluation_checksums,
            "evaluation_dlr": self._evaluation_dlr, "probe_dlr": probe_dlr,
            "evaluation_profile_dlr": self._evaluation_profile, "probe_profile_dlr": probe_profile,
        }
        try:
            reference.parent.mkdir(parents=True, exist_ok=True)
            torch.save(saved, reference)
        except OSError as error:
            self._warn(
                f"DLRCallback could not write {reference} ({error}); S_init and param_change will be missing "
                "if this run is resumed"
            )

    def _load_reference(self, reference: Path) -> None:
        """The step-0 reference of a resumed run, or a warning that S_init and param_change stay missing."""
        try:
            saved = torch.load(reference, weights_only=True)
            problem = None if _is_reference(saved) else "does not hold a DLRCallback reference"
        except FileNotFoundError:
            problem = "does not exist"
        except (OSError, EOFError, RuntimeError, pickle.UnpicklingError) as error:
            problem = f"cannot be read ({type(error).__name__}: {(str(error).splitlines() or ['empty or truncated'])[0]})"
        if problem is not None:
            self._warn(
                f"DLRCallback: the initial reference {reference} {problem}. S_init and param_change are "
                "reported missing for the rest of this run (a resumed checkpoint is not the initial model, "
                "so no new reference is taken)."
            )
            return
        self._initial_parameters = saved["parameters"]
        for name, features in saved["features"].items():
            if name in self._probes:
                self._probes[name].initial_features = features
        self._evaluation_features = dict(saved.get("evaluation_features", {}))
        self._evaluation_checksums = dict(saved.get("evaluation_checksums", {}))
        if "evaluation_dlr" not in saved:
            self._warn(
                f"DLRCallback: the initial reference {reference} holds no D_LR at step 0 (written by an older "
                "dlr-hf); dlr_change is reported missing for the rest of this run"
            )
        elif self.options.layers is not None and "evaluation_profile_dlr" not in saved:
            self._warn(
                f"DLRCallback: the initial reference {reference} holds no per-layer D_LR at step 0 (written by an "
                "older dlr-hf); dlr_change/<layer> is reported missing for the rest of this run"
            )
        self._evaluation_dlr = _floats(saved.get("evaluation_dlr"))
        self._evaluation_profile = _profiles(saved.get("evaluation_profile_dlr"))
        for name, value in _floats(saved.get("probe_dlr")).items():
            if name in self._probes:
                self._probes[name].initial_dlr = value
        for name, layers in _profiles(saved.get("probe_profile_dlr")).items():
            if name in self._probes:
                self._probes[name].initial_profile = layers

    def _record(self, what: str, action: Callable[[], _T]) -> _T | None:
        """``action()`` recording initial features, or None with a warning that S_init will be missing."""
        problems: list[str] = []
        recorded = self._attempt(problems, "initial features", action)
        if recorded is None:
            self._warn(
                f"DLRCallback could not record {what} at step 0 ({'; '.join(problems)}); S_init and dlr_change "
                "will be missing for this run"
            )
        return recorded

    def _initial_dlr(self, what: str, recorder: Measurement, recorded: bool) -> tuple[float | None, dict[str, float]]:
        """D_LR of the model at step 0 from the pass that recorded its features (collective: every rank
        calls it, in the same order), or None with a warning that dlr_change will be missing; and with
        ``layers=``, each layer's D_LR at step 0 from the same pass and reduction (``{layer: D_LR}``,
        empty when the head's is unknown; a layer that could not be measured is left out, with one warning)."""
        problems: list[str] = []
        (everywhere,) = recorder.agree(recorded)  # before the reduction: a rank that failed alone would hang it
        if not everywhere:
            if recorded:  # (a rank that failed has warned already)
                self._warn(
                    f"DLRCallback: another process could not record {what} at step 0 (see that process's log); "
                    "dlr_change will be missing for this run"
                )
            return None, {}
        result = self._attempt(problems, "D_LR at step 0", lambda: self._reduce_and_compute(recorder))
        if result is not None and not math.isfinite(result.dlr):
            problems.append(f"D_LR at step 0 is not finite ({result.dlr})")
        if problems:
            self._warn(
                f"DLRCallback could not measure D_LR of {what} at step 0 ({'; '.join(problems)}); dlr_change "
                "will be missing for this run"
            )
            return None, {}
        if self.options.layers is None:
            return result.dlr, {}
        readings = self._attempt(problems, "profile at step 0", recorder.profile) or []  # (reduced with the head)
        profile = {reading.name: reading.result.dlr for reading in readings if math.isfinite(reading.result.dlr)}
        problems += [f"{reading.name}: not finite ({reading.result.dlr})" for reading in readings if reading.name not in profile]
        if problems:
            self._warn(
                f"DLRCallback could not measure the per-layer D_LR of {what} at step 0 ({'; '.join(problems)}); "
                "dlr_change/<layer> will be missing for those layers for this run"
            )
        return result.dlr, profile

    # -- probes --------------------------------------------------------------------------------
    @property
    def _uses_probes(self) -> bool:
        return self.source == PROBE or self.every_n_steps is not None

    def _evaluation_prefix(self, name: str) -> str:
        """The metric prefix ``Trainer.evaluate`` gives eval set ``name``."""
        return f"eval_{name}" if isinstance(self.trainer.eval_dataset, dict) else "eval"

    def _shared_probe(self, trainer: Trainer) -> bool:
        """Whether there is one probe ("eval") whatever the eval sets: always but for the default probes
        over a dict of eval sets (one per set, named after it)."""
        return self.probe_dataset is not None or not isinstance(trainer.eval_dataset, dict)

    def _probe_names(self, trainer: Trainer) -> list[str]:
        return ["eval"] if self._shared_probe(trainer) else list(trainer.eval_dataset)

    def _probe(self, name: str) -> _Probe:
        if name not in self._probes:
            self._probes[name] = _Probe(self._probe_loader(name))
        return self._probes[name]

    def _probe_loader(self, name: str) -> DataLoader:
        """This rank's shard of the fixed probe subset, batched by the Trainer's own collator."""
        trainer = self.trainer
        dataset = self.probe_dataset
        if dataset is None:
            evals = trainer.eval_dataset
            if isinstance(evals, dict) and name not in evals:
                raise InvalidArgumentError(
                    f"no probe for {name!r}: it is not one of the Trainer's eval datasets ({', '.join(map(repr, evals))}), "
                    "e.g. an evaluate(eval_dataset={...}) with new names; pass probe_dataset= to measure one fixed probe"
                )
            dataset = evals[name] if isinstance(evals, dict) else evals
        if dataset is None:
            dataset = trainer.train_dataset
        if dataset is None:
            raise InvalidArgumentError(
                "DLRCallback needs a probe: pass probe_dataset= or give the Trainer an eval or train dataset"
            )
        indices = subsample_indices(len(dataset), self.options.num_samples, self.options.seed)
        if hasattr(dataset, "select"):  # a datasets.Dataset: drop the columns the model does not take
            probe = trainer._remove_unused_columns(dataset.select(indices), description="D_LR probe")
        else:
            probe = Subset(dataset, indices)
        accelerator = trainer.accelerator
        shard = Subset(probe, list(range(accelerator.process_index, len(probe), accelerator.num_processes)))
        batch_size = self.options.batch_size or trainer.args.per_device_eval_batch_size
        collate = functools.partial(_collate_then, trainer.data_collator, labelled_positions)
        return DataLoader(shard, batch_size=batch_size, shuffle=False, collate_fn=collate)

    def _restore_history(self, state: TrainerState) -> None:
        """Take the history back from a resumed checkpoint, and make sure the next one can save it."""
        name = type(self).__name__
        if state.stateful_callbacks is None:
            state.stateful_callbacks = {}
        saved = state.stateful_callbacks.get(name)
        if saved is None:
            # Trainer._save_checkpoint updates this entry in place: a checkpoint saved without the
            # callback has none, and the next save would raise KeyError.
            state.stateful_callbacks[name] = self.state()
            if state.global_step > 0:
                self._warn(
                    "DLRCallback: the resumed checkpoint has no DLRCallback state; its history starts at "
                    f"step {state.global_step}"
                )
            return
        if self.history:
            return
        if isinstance(saved, list):
            saved = saved[0] if saved else None
        if saved:
            self.history = list(saved.get("attributes", {}).get("history", []))

    def _require_trainer(self) -> Trainer:
        if self.trainer is None:
            raise RuntimeError(
                "DLRCallback has no Trainer: pass it in Trainer(callbacks=[...]) or call set_trainer(trainer)"
            )
        return self.trainer


def _callback_options(settings: dict[str, Any]) -> MeasurementOptions:
    """The measurement options from the callback's keyword arguments (its own defaults for the rest)."""
    allowed = MeasurementOptions.callback_defaults()
    unknown = sorted(set(settings) - set(allowed))
    if unknown:
        raise InvalidArgumentError(
            f"DLRCallback got unknown setting(s) {', '.join(unknown)}; it takes probe_dataset, source, "
            f"every_n_steps, write_files and {', '.join(allowed)}"
        )
    options = MeasurementOptions(**{**allowed, **settings})
    if options.num_samples is not None and options.num_samples < 2:
        raise InvalidArgumentError(f"DLRCallback(num_samples={options.num_samples}): D_LR needs at least 2 samples")
    return options


def _source(source: Any, probe_dataset: Dataset | None) -> str:
    """``source``: "eval" or "probe"; by default "probe" when a probe dataset is given, else "eval"."""
    if source is None:
        return EVAL if probe_dataset is None else PROBE
    if source not in (EVAL, PROBE):
        raise InvalidArgumentError(f"DLRCallback(source={source!r}): must be {EVAL!r} (the Trainer's evaluation) or {PROBE!r}")
    return source


def _collate_then(collate: Callable[[Any], Any], after: Callable[[Any], Any], rows: Any) -> Any:
    """``collate(rows)`` followed by ``after`` (a probe's batches with their label positions)."""
    batch = collate(rows)
    return after(batch) if isinstance(batch, Mapping) else batch


def _tensors(batch: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The tensors of a forward's keyword inputs (flags and counts such as ``return_dict`` left out)."""
    return {key: value for key, value in batch.items() if isinstance(value, torch.Tensor)}


def _checksum(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """A float64 sum of a batch's batch-first tensors, left on their device (no synchronisation)."""
    return torch.stack([value.detach().double().sum() for value in batch.values() if value.ndim > 0]).sum()


def _rows(batch: dict[str, torch.Tensor]) -> int:
    """Examples in a batch: the leading size of its first batch-first tensor."""
    return next((value.shape[0] for value in batch.values() if value.ndim > 0), 0)


def _every_n_steps(value: Any) -> int:
    """``every_n_steps``: a whole number ≥ 1 (None, the default, measures at evaluations only)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise InvalidArgumentError(f"DLRCallback(every_n_steps={value!r}): must be a whole number ≥ 1, or None")
    return int(value)


def _check_layer(model: nn.Module, layer: str) -> None:
    """``layer=`` must name a linear layer of the model being trained (LayerNotFoundError with close matches)."""
    try:
        find_linear_layer(model, layer)
    except LayerNotFoundError as error:
        raise LayerNotFoundError(f"DLRCallback(layer={layer!r}): {error}") from None


def _is_reference(saved: Any) -> bool:
    return isinstance(saved, dict) and isinstance(saved.get("parameters"), dict) and isinstance(saved.get("features"), dict)


def _floats(saved: Any) -> dict[str, float]:
    """The finite numbers of a saved ``{name: D_LR}`` (anything else left out: unknown)."""
    if not isinstance(saved, dict):
        return {}
    return {
        name: float(value) for name, value in saved.items()
        if isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    }


def _profiles(saved: Any) -> dict[str, dict[str, float]]:
    """The finite numbers of a saved ``{name: {layer: D_LR}}`` (anything else left out: unknown)."""
    if not isinstance(saved, dict):
        return {}
    return {name: _floats(layers) for name, layers in saved.items() if isinstance(layers, dict)}


def _finite_or_missing(value: float) -> float:
    return value if math.isfinite(value) else MISSING


def _calling_trainer() -> Trainer | None:
    """The Trainer whose ``__init__`` (on_init_end) or ``train`` (on_train_begin) is running, from the call stack."""
    frame = inspect.currentframe()
    while frame is not None:
        candidate = frame.f_locals.get("self")
        if isinstance(candidate, Trainer):
            return candidate
        frame = frame.f_back
    return None


def write_history(history: list[dict[str, Any]], output_dir: Path, log_history: list[dict[str, Any]]) -> None:
    """``dlr_history.json``, ``dlr_history.csv`` and ``dlr_trajectory.png`` (D_LR beside accuracy)."""
    from dlr_hf.surfaces.plots import save_figure, trajectory_figure

    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "dlr_history.json").write_text(json.dumps(history, indent=2) + "\n")
    leading = ["step", "epoch", "probe"]
    columns = leading + sorted({key for row in history for key in row} - set(leading))
    with open(output_dir / "dlr_history.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(history)
    steps = [row["step"] for row in history]
    keys = sorted({key for row in history for key in row if key.endswith(("dlr", "probe_accuracy"))})
    series = {key: [row.get(key) for row in history] for key in keys}
    eval_accuracy = {row["step"]: row["eval_accuracy"] for row in log_history if "eval_accuracy" in row}
    if eval_accuracy:
        series["eval_accuracy"] = [eval_accuracy.get(step) for step in steps]
    save_figure(trajectory_figure(steps, series), output_dir / "dlr_trajectory.png")
