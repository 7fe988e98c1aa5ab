"""``DLRCallback``: D_LR during ``transformers.Trainer`` training, logged like any other metric.

    trainer = Trainer(..., callbacks=[DLRCallback()])

At every evaluation (and every ``every_n_steps`` steps, if set) the callback runs the model over a
fixed probe subset with the engine's own tap and accumulator, and publishes ``eval_dlr``,
``eval_dlr_rank``, ``eval_nc1``, ``eval_effective_rank``, ``eval_s_init``, ``eval_param_norm`` and
``eval_param_change`` through ``trainer.log`` — the only way such keys reach ``log_history`` and
every ``report_to`` integration (keys added to ``metrics`` inside ``on_evaluate`` are lost, since
the Trainer has logged them already). Step-based measurements use the same names without prefix.

Every rank takes part in the forward passes and the reductions; only the main process writes
files. The history survives a resume (``ExportableState`` in ``trainer_state.json``), and the
initial model's probe features and parameters are kept in ``output_dir`` for S_init.
"""

from __future__ import annotations

import csv
import inspect
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Subset
from transformers import Trainer, TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_callback import ExportableState

from dlr_hf.engine.data import subsample_indices
from dlr_hf.engine.evaluate import find_head
from dlr_hf.engine.stream import input_device, pool_across_processes, stream_statistics
from dlr_hf.metric import (
    DEFAULT_RTOL,
    LinearCKAAccumulator,
    parameter_change,
    parameter_norm,
    parameter_snapshot,
)
from dlr_hf.models import HeadInfo, Samples, read_head_weight

log = logging.getLogger(__name__)

REFERENCE_FILE = "dlr_reference_rank{rank}.pt"


@dataclass
class _Probe:
    """One fixed probe set: its batches (this rank's shard) and the initial model's features."""

    loader: DataLoader
    initial_features: list[torch.Tensor] | None = None


class _PairWithInitial:
    """Streams linear CKA between the stored initial features and the current ones, batch by batch."""

    def __init__(self, initial: list[torch.Tensor]) -> None:
        self.initial = iter(initial)
        self.cka = LinearCKAAccumulator()

    def __call__(self, samples: Samples, inputs: dict[str, torch.Tensor]) -> None:
        self.cka.update(next(self.initial), samples.features)


class _Recorder:
    """Keeps each batch's features (CPU float32) — the initial model's, for S_init later."""

    def __init__(self) -> None:
        self.features: list[torch.Tensor] = []

    def __call__(self, samples: Samples, inputs: dict[str, torch.Tensor]) -> None:
        self.features.append(samples.features.detach().to("cpu", torch.float32))


class DLRCallback(TrainerCallback, ExportableState):
    """Measure D_LR on a fixed probe set during training.

    Args:
        probe_dataset: examples in the Trainer's format (what its data collator takes); default:
            the eval dataset (each one, for a dict of eval datasets), else the train dataset.
        num_samples: probe size, drawn deterministically with ``seed`` (the same subsample
            ``dlr_hf.evaluate`` draws, so the two agree).
        every_n_steps: also measure every N optimiser steps (logged without prefix).
        layer: layer-wise D_LR (module path of any ``nn.Linear``).
        baselines: also S_init, ‖θ‖² and ‖θ − θ0‖/‖θ0‖ (keeps a CPU copy of the initial parameters).
        batch_size: probe batch size (default: the eval batch size).
        write_files: at train end write ``dlr_history.json``, ``dlr_history.csv`` and
            ``dlr_trajectory.png`` into ``output_dir``.
    """

    def __init__(
        self,
        probe_dataset: Dataset | None = None,
        num_samples: int = 512,
        every_n_steps: int | None = None,
        seed: int = 0,
        layer: str | None = None,
        baselines: bool = True,
        batch_size: int | None = None,
        rtol: float = DEFAULT_RTOL,
        write_files: bool = True,
    ) -> None:
        self.probe_dataset = probe_dataset
        self.num_samples = num_samples
        self.every_n_steps = every_n_steps
        self.seed = seed
        self.layer = layer
        self.baselines = baselines
        self.batch_size = batch_size
        self.rtol = rtol
        self.write_files = write_files
        self.history: list[dict[str, Any]] = []
        self.trainer: Trainer | None = None
        self._probes: dict[str, _Probe] = {}
        self._head: HeadInfo | None = None
        self._initial_parameters: dict[str, torch.Tensor] | None = None

    # -- wiring --------------------------------------------------------------------------------
    def set_trainer(self, trainer: Trainer) -> None:
        """Attach the Trainer explicitly (done automatically when passed in ``callbacks=``)."""
        self.trainer = trainer

    def on_init_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        if self.trainer is None:
            self.trainer = _calling_trainer()

    def state(self) -> dict[str, Any]:
        return {
            "args": {
                "num_samples": self.num_samples,
                "every_n_steps": self.every_n_steps,
                "seed": self.seed,
                "layer": self.layer,
                "baselines": self.baselines,
                "batch_size": self.batch_size,
                "rtol": self.rtol,
                "write_files": self.write_files,
            },
            "attributes": {"history": self.history},
        }

    # -- events --------------------------------------------------------------------------------
    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        trainer = self._require_trainer()
        self._restore_history(state)
        reference = Path(args.output_dir) / REFERENCE_FILE.format(rank=args.process_index)
        if self.baselines and reference.exists() and state.global_step > 0:
            saved = torch.load(reference, weights_only=True)
            self._initial_parameters = saved["parameters"]
            for name, features in saved["features"].items():
                self._probe(name).initial_features = features
            return
        if not self.baselines:
            return
        self._initial_parameters = parameter_snapshot(trainer.model)
        for name in self._probe_names(trainer):
            recorder = _Recorder()
            self._stream(name, consumers=(recorder,))
            self._probe(name).initial_features = recorder.features
        Path(args.output_dir).mkdir(parents=True, exist_ok=True)
        torch.save(
            {"parameters": self._initial_parameters, "features": {n: p.initial_features for n, p in self._probes.items()}},
            reference,
        )

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
        self._require_trainer()
        self._measure_and_log(name, f"{prefix}_")

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        if self.write_files and state.is_world_process_zero and self.history:
            write_history(self.history, Path(args.output_dir), state.log_history)

    # -- measuring -----------------------------------------------------------------------------
    def _measure_and_log(self, name: str, prefix: str) -> None:
        trainer = self.trainer
        initial = self._probe(name).initial_features if self.baselines else None
        pairing = (_PairWithInitial(initial),) if initial is not None else ()
        result = self._stream(name, consumers=pairing)
        logs: dict[str, float] = {
            f"{prefix}dlr": result.dlr,
            f"{prefix}dlr_rank": float(result.rank),
            f"{prefix}effective_rank": result.effective_rank,
        }
        if result.nc1 is not None:
            logs[f"{prefix}nc1"] = result.nc1
        if result.accuracy is not None:
            logs[f"{prefix}probe_accuracy"] = result.accuracy
        if self.baselines:
            logs[f"{prefix}param_norm"] = parameter_norm(trainer.model)
            if self._initial_parameters is not None:
                logs[f"{prefix}param_change"] = parameter_change(trainer.model, self._initial_parameters)
            if pairing:
                cka = pairing[0].cka
                pool_across_processes(trainer.accelerator, cka)
                logs[f"{prefix}s_init"] = cka.compute()
        if result.degenerate:
            logs[f"{prefix}dlr_degenerate"] = 1.0
        self.history.append({"step": trainer.state.global_step, "epoch": trainer.state.epoch, "probe": name, **logs})
        trainer.log(dict(logs))

    def _stream(self, name: str, consumers: tuple = ()):
        """One pass of the current model over probe ``name``; returns its DLRResult."""
        trainer = self.trainer
        model = trainer.model
        probe = self._probe(name)
        device = input_device(model, trainer.accelerator)
        was_training = model.training
        model.eval()
        try:
            if self._head is None:
                self._head = find_head(model, probe.loader, device)
            accumulator = stream_statistics(
                model, probe.loader, self._head, trainer.accelerator,
                layer=self.layer, num_classes=self._head.num_outputs, rtol=self.rtol, progress=False,
                consumers=consumers,
            )
            return accumulator.compute(head_weight=None if self.layer else read_head_weight(self._head))
        finally:
            model.train(was_training)

    # -- probes --------------------------------------------------------------------------------
    def _probe_names(self, trainer: Trainer) -> list[str]:
        if self.probe_dataset is None and isinstance(trainer.eval_dataset, dict):
            return list(trainer.eval_dataset)
        return ["eval"]

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
            dataset = evals[name] if isinstance(evals, dict) else evals
        if dataset is None:
            dataset = trainer.train_dataset
        if dataset is None:
            raise ValueError("DLRCallback needs a probe: pass probe_dataset= or give the Trainer an eval or train dataset")
        indices = subsample_indices(len(dataset), self.num_samples, self.seed)
        if hasattr(dataset, "select"):  # a datasets.Dataset: drop the columns the model does not take
            probe = trainer._remove_unused_columns(dataset.select(indices), description="D_LR probe")
        else:
            probe = Subset(dataset, indices)
        accelerator = trainer.accelerator
        shard = Subset(probe, list(range(accelerator.process_index, len(probe), accelerator.num_processes)))
        batch_size = self.batch_size or trainer.args.per_device_eval_batch_size
        return DataLoader(shard, batch_size=batch_size, shuffle=False, collate_fn=trainer.data_collator)

    def _restore_history(self, state: TrainerState) -> None:
        if self.history:
            return
        saved = (state.stateful_callbacks or {}).get(type(self).__name__)
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


def _calling_trainer() -> Trainer | None:
    """The Trainer whose __init__ is running (it fires on_init_end), found on the call stack."""
    frame = inspect.currentframe()
    while frame is not None:
        candidate = frame.f_locals.get("self")
        if isinstance(candidate, Trainer):
            return candidate
        frame = frame.f_back
    return None


def write_history(history: list[dict[str, Any]], output_dir: Path, log_history: list[dict[str, Any]]) -> None:
    """``dlr_history.json``, ``dlr_history.csv`` and ``dlr_trajectory.png`` (D_LR beside accuracy)."""
    from dlr_hf.surfaces.plots import trajectory_figure

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
    figure = trajectory_figure(steps, series)
    figure.savefig(output_dir / "dlr_trajectory.png", dpi=110)
