"""``evaluate``: a model and a dataset in, an EvaluationReport out — the API every surface shares."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
from accelerate import Accelerator
from accelerate.data_loader import prepare_data_loader
from torch import nn
from torch.utils.data import DataLoader, Subset

from dlr_hf.engine.data import (
    ColumnPlan,
    LoadedData,
    detect_columns,
    load_data,
    make_collate,
    subsample_indices,
)
from dlr_hf.engine.devices import input_device, make_accelerator
from dlr_hf.engine.loading import LoadedModel, load_model
from dlr_hf.engine.measurement import ADAPTER_BASE, Measurement
from dlr_hf.engine.options import MeasurementOptions
from dlr_hf.engine.progress import library_bars
from dlr_hf.engine.report import EvaluationReport
from dlr_hf.errors import DLRError, TooFewSamplesError
from dlr_hf.metric import DLRResult
from dlr_hf.models import is_multiple_choice, require_head
from dlr_hf.models.adapters import is_adapter_model


def _pad_token_id(model: nn.Module, processor: Any) -> int:
    """Make batches with padding possible for tokenizers without a pad token (GPT-2, Llama)."""
    tokenizer = getattr(processor, "tokenizer", processor)
    if tokenizer is not None and getattr(tokenizer, "pad_token", "x") is None and getattr(tokenizer, "eos_token", None):
        tokenizer.pad_token = tokenizer.eos_token
    pad = getattr(tokenizer, "pad_token_id", None)
    if pad is None:
        pad = getattr(model.config, "pad_token_id", None) or 0
    if getattr(model, "config", None) is not None and getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = pad
    return pad


def build_batches(
    dataset: datasets.Dataset,
    plan: ColumnPlan,
    processor: Any,
    modality: str,
    model: nn.Module,
    *,
    num_samples: int | None,
    seed: int,
    batch_size: int,
    max_length: int = 512,
) -> DataLoader:
    """A DataLoader over a deterministic subsample, preprocessing in the collate function."""
    indices = subsample_indices(len(dataset), num_samples, seed)
    collate = make_collate(plan, processor, modality, max_length=max_length, pad_token_id=_pad_token_id(model, processor))
    return DataLoader(Subset(dataset, indices), batch_size=batch_size, shuffle=False, collate_fn=collate)


@dataclass
class _Inputs:
    """The data side of an evaluation: where it came from, its columns and its batches."""

    data: LoadedData
    plan: ColumnPlan
    loader: DataLoader


def evaluate(
    model: str | Path | nn.Module,
    dataset: str | Path | datasets.Dataset | datasets.DatasetDict,
    *,
    revision: str | None = None,
    processor: Any = None,
    dataset_config: str | None = None,
    split: str | None = None,
    dataset_revision: str | None = None,
    input_columns: list[str] | tuple[str, ...] | None = None,
    label_column: str | None = None,
    device_map: str | dict | None = None,
    trust_remote_code: bool = False,
    safetensors_only: bool = False,
    reference_model: str | Path | nn.Module | None = None,
    options: MeasurementOptions | None = None,
    accelerator: Accelerator | None = None,
    progress: bool = True,
    **settings: Any,
) -> EvaluationReport:
    """Measure D_LR of ``model`` on ``dataset`` in one pass, on whatever devices Accelerate sees.

    Args:
        model: Hub id (with ``revision``), local folder, or a loaded ``PreTrainedModel`` (pass
            its ``processor`` unless the model's ``name_or_path`` folder has one).
        dataset: Hub id (with ``dataset_config``, ``split``), local folder / file, or a
            ``datasets.Dataset`` / ``DatasetDict``.
        input_columns, label_column: override the detected columns.
        device_map: e.g. ``"auto"`` to spread a model larger than one device (single process).
        reference_model: the initial checkpoint, for S_init and the relative parameter change
            (the same as the ``reference`` option).
        options, **settings: the measurement settings, a ``MeasurementOptions`` or its fields as
            keywords: ``num_samples`` (examples drawn by ``seed``; None = all), ``batch_size``,
            ``seed``, ``layer`` (module path of any ``nn.Linear`` for layer-wise D_LR: features =
            its input, outputs = the model's final logits), ``layers`` (a richness profile in the
            same forward: ``"blocks"`` or module-path patterns, see ``dlr_hf.models.blocks``; the
            report's ``layers``), ``precision`` (fp32, bf16, fp16 for the
            model; statistics are always float64), ``rtol``, ``max_length``, ``baselines``.

    Every process of an ``accelerate launch`` must call this (the reduction is collective);
    all of them return the same report.
    """
    options = _options(options, settings, reference_model)
    with library_bars(progress):  # --quiet: the libraries' bars too (weight loading, data); restored after
        return _evaluate(model, dataset, revision, processor, dataset_config, split, dataset_revision, input_columns,
                         label_column, device_map, trust_remote_code, safetensors_only, options, accelerator, progress)


def _evaluate(
    model: str | Path | nn.Module, dataset: Any, revision: str | None, processor: Any, dataset_config: str | None,
    split: str | None, dataset_revision: str | None, input_columns: Any, label_column: str | None,
    device_map: str | dict | None, trust_remote_code: bool, safetensors_only: bool, options: MeasurementOptions,
    accelerator: Accelerator | None, progress: bool,
) -> EvaluationReport:
    started = time.perf_counter()
    timings: dict[str, float] = {}
    accelerator = accelerator or make_accelerator(options.precision)
    loading = {"precision": options.precision, "trust_remote_code": trust_remote_code, "safetensors_only": safetensors_only}
    loaded = _load_measured_model(model, revision, processor, device_map, loading, accelerator)
    timings["load_model"] = time.perf_counter() - started

    mark = time.perf_counter()
    inputs = _load_inputs(dataset, dataset_config, split, dataset_revision, input_columns, label_column, loaded, options)
    shard = _this_process_share(inputs.loader, accelerator)
    timings["load_data"] = time.perf_counter() - mark

    mark = time.perf_counter()
    reference, names = _load_reference(options.reference, loaded, loading, input_device(loaded.model, accelerator))
    measurement = Measurement(loaded.model, accelerator, options, reference=reference, names=names)
    measurement.run(shard, progress=progress, total=len(shard))
    timings["forward"] = time.perf_counter() - mark

    mark = time.perf_counter()
    measurement.reduce_dlr()
    result = measurement.result()
    initial, initial_problems = _initial(measurement)
    baselines = _baselines(result, measurement)
    layers = [reading.to_dict() for reading in measurement.profile()]
    timings["compute"] = time.perf_counter() - mark
    timings["total"] = time.perf_counter() - started
    report = _report(result, baselines, layers, measurement, loaded, inputs, device_map, timings)
    report.initial = initial
    report.warnings += initial_problems
    return report


def _initial(measurement: Measurement) -> tuple[dict[str, Any] | None, list[str]]:
    """D_LR at initialisation (the reference's own head input and outputs), and why it is missing if it is.

    An initial head that outputs constants (zero-initialised) leaves it undefined: the verdict then
    falls back to the absolute scale, with a warning, instead of failing the whole evaluation.
    """
    try:
        initial = measurement.initial_result()
    except DLRError as error:
        return None, [f"D_LR at initialisation is undefined ({error}); the verdict is on the absolute scale"]
    if initial is None:
        return None, []
    return {
        "dlr": initial.dlr, "accuracy": initial.accuracy, "rank": initial.rank, "feature_rank": initial.feature_rank,
        "effective_rank": initial.effective_rank, "degenerate": initial.degenerate,
    }, []


def _options(options: MeasurementOptions | None, settings: dict[str, Any], reference: Any) -> MeasurementOptions:
    """One ``MeasurementOptions`` from an options object and/or keywords, checked before anything loads."""
    if reference is not None:
        settings = {**settings, "reference": reference}
    options = (options or MeasurementOptions()).with_changes(**settings)
    if options.batch_size is None:  # "the caller's batch size": a dataset has none, so the default
        options = options.with_changes(batch_size=MeasurementOptions().batch_size)
    return options


def _load_measured_model(
    model: str | Path | nn.Module, revision: str | None, processor: Any, device_map: str | dict | None,
    loading: dict[str, Any], accelerator: Accelerator,
) -> LoadedModel:
    """The model, on the accelerator's device (unless dispatched by a device map), refused early if it has no head."""
    loaded = load_model(model, revision=revision, processor=processor, device_map=device_map, **loading)
    require_head(loaded.model)  # a bare base model (BertModel, CLIPModel) is refused before any data error
    if not getattr(loaded.model, "hf_device_map", None):
        loaded.model.to(accelerator.device)
    return loaded


def _load_inputs(
    dataset: Any, dataset_config: str | None, split: str | None, dataset_revision: str | None,
    input_columns: Any, label_column: str | None, loaded: LoadedModel, options: MeasurementOptions,
) -> _Inputs:
    """The split, its columns (checked against the model), and batches of the deterministic subsample."""
    net = loaded.model
    data = load_data(dataset, config=dataset_config, split=split, revision=dataset_revision)
    label2id = getattr(getattr(net, "config", None), "label2id", None)
    plan = detect_columns(
        data.dataset, loaded.modality, input_columns, label_column,
        label2id=label2id, multiple_choice=is_multiple_choice(net),
    )
    loader = build_batches(
        data.dataset, plan, loaded.processor, loaded.modality, net,
        num_samples=options.num_samples, seed=options.seed, batch_size=options.batch_size, max_length=options.max_length,
    )
    if len(loader.dataset) < 2:
        raise TooFewSamplesError(f"D_LR needs at least 2 examples; the dataset gives {len(loader.dataset)}")
    return _Inputs(data, plan, loader)


def _this_process_share(loader: DataLoader, accelerator: Accelerator) -> DataLoader:
    """This process's batches; the last batch is never padded with repeated examples."""
    # The module-level function, not accelerator.prepare_data_loader: that one keeps a reference to
    # every loader it prepares, so a reused Accelerator (CLI over several models, the app) would grow.
    return prepare_data_loader(
        loader,
        num_processes=accelerator.num_processes,
        process_index=accelerator.process_index,
        put_on_device=False,
        even_batches=False,
    )


def _load_reference(
    reference: str | Path | nn.Module | None, loaded: LoadedModel, loading: dict[str, Any], device: Any,
) -> tuple[nn.Module | str | None, tuple[str, str]]:
    """The initial checkpoint on the inputs' device, and the two names its head-mismatch error uses.

    A PEFT model needs none: its base is the model itself with its adapters disabled (``ADAPTER_BASE``).
    """
    if reference is None and is_adapter_model(loaded.model):
        base = loaded.source.get("base", {}).get("id") or "its base"
        return ADAPTER_BASE, (str(loaded.source["id"]), f"{base} (adapters disabled)")
    if reference is None:
        return None, ("the model", "the reference")
    reference_loaded = load_model(reference, **loading)
    reference_loaded.model.to(device)
    return reference_loaded.model, (str(loaded.source["id"]), str(reference_loaded.source["id"]))


def _baselines(result: DLRResult, measurement: Measurement) -> dict[str, Any]:
    """SPEC §4 beside D_LR: accuracy, NC1, effective rank, ‖θ‖² and (with a reference) S_init."""
    baselines: dict[str, Any] = {
        "accuracy": result.accuracy,
        "nc1": result.nc1,
        "effective_rank": result.effective_rank,
    }
    parameters = measurement.parameter_baselines()
    if "param_norm" in parameters:
        baselines["param_norm_squared"] = parameters["param_norm"]
    if measurement.measures_s_init:
        measurement.reduce_s_init()
        baselines["s_init"] = measurement.s_init()
    if "param_change" in parameters:
        baselines["param_change"] = parameters["param_change"]
    return baselines


def _report(
    result: DLRResult, baselines: dict[str, Any], layers: list[dict[str, Any]], measurement: Measurement,
    loaded: LoadedModel, inputs: _Inputs,
    device_map: str | dict | None, timings: dict[str, float],
) -> EvaluationReport:
    head, options = measurement.head, measurement.options
    settings = {key: value for key, value in options.as_dict().items() if not (key == "reference" and value is None)}
    return EvaluationReport(
        result=result,
        model=loaded.source,
        dataset={
            **inputs.data.source,
            "input_columns": list(inputs.plan.inputs),
            "label_column": inputs.plan.labels,
            "num_examples": len(inputs.loader.dataset),
        },
        head={
            "module_path": head.module_path,
            "selection": head.selection,
            "between": head.between,
            "positions": head.positions,
            "layer": options.layer,
            "feature_dim": result.feature_dim,
            "num_outputs": result.num_outputs,
        },
        baselines=baselines,
        settings={
            **settings,
            "num_processes": measurement.accelerator.num_processes,
            "device": str(measurement.device),
            "device_map": device_map if isinstance(device_map, (str, type(None))) else "custom",
        },
        timings=timings,
        layers=layers,
        warnings=loaded.warnings + list(inputs.plan.warnings) + list(head.notices) + result.warnings,
    )
