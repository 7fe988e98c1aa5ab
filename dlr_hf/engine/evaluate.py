"""``evaluate``: a model and a dataset in, an EvaluationReport out — the API every surface shares."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import datasets
import torch
from accelerate import Accelerator
from accelerate.data_loader import prepare_data_loader
from torch import nn
from torch.utils.data import DataLoader, Subset

from dlr_hf.engine.data import ColumnPlan, detect_columns, load_data, make_collate, subsample_indices
from dlr_hf.engine.loading import load_model
from dlr_hf.engine.report import EvaluationReport
from dlr_hf.engine.settings import validate_settings
from dlr_hf.engine.stream import input_device, make_accelerator, pool_across_processes, stream_statistics
from dlr_hf.errors import HeadNotFoundError, TooFewSamplesError
from dlr_hf.metric import DEFAULT_RTOL, LinearCKAAccumulator, parameter_change, parameter_norm, parameter_snapshot
from dlr_hf.models import (
    FeatureTap,
    HeadInfo,
    is_multiple_choice,
    locate_head,
    model_inputs,
    read_head_weight,
    relocate,
    require_head,
)


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


def find_head(model: nn.Module, loader: DataLoader, device: torch.device, layer: str | None = None) -> HeadInfo:
    """Locate the final Linear with a probe forward on the first two examples (none needed with ``layer``)."""
    first = next(iter(DataLoader(loader.dataset, batch_size=2, collate_fn=loader.collate_fn)))
    with torch.inference_mode():
        return locate_head(model, {key: value.to(device) for key, value in first.items()}, layer=layer)


class _InitialFeatures:
    """Streams linear CKA between the reference (initial) model's head input and the current one's."""

    def __init__(self, reference: nn.Module, head: HeadInfo, layer: str | None, names: tuple[str, str]) -> None:
        self.reference = reference
        self.head = locate_like(reference, head, names)
        self.layer = layer
        self.cka = LinearCKAAccumulator()

    def __call__(self, samples: Any, inputs: dict[str, torch.Tensor]) -> None:
        with FeatureTap(self.reference, self.head, layer=self.layer) as tap:
            reference = tap.collect(inputs, self.reference(**model_inputs(inputs)), labels=None)
        self.cka.update(reference.features, samples.features)


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
    num_samples: int | None = 1000,
    batch_size: int = 32,
    seed: int = 0,
    layer: str | None = None,
    precision: str = "fp32",
    device_map: str | dict | None = None,
    trust_remote_code: bool = False,
    safetensors_only: bool = False,
    reference_model: str | Path | nn.Module | None = None,
    rtol: float = DEFAULT_RTOL,
    max_length: int = 512,
    accelerator: Accelerator | None = None,
    progress: bool = True,
) -> EvaluationReport:
    """Measure D_LR of ``model`` on ``dataset`` in one pass, on whatever devices Accelerate sees.

    Args:
        model: Hub id (with ``revision``), local folder, or a loaded ``PreTrainedModel`` (pass
            its ``processor`` unless the model's ``name_or_path`` folder has one).
        dataset: Hub id (with ``dataset_config``, ``split``), local folder / file, or a
            ``datasets.Dataset`` / ``DatasetDict``.
        input_columns, label_column: override the detected columns.
        num_samples: examples to draw (deterministically, by ``seed``); ``None`` = all.
        layer: module path of any ``nn.Linear`` for layer-wise D_LR (features = its input,
            outputs = the model's final logits).
        precision: ``fp32``, ``bf16`` or ``fp16`` for the model; statistics are always float64.
        device_map: e.g. ``"auto"`` to spread a model larger than one device (single process).
        reference_model: the initial checkpoint, for S_init and the relative parameter change.

    Every process of an ``accelerate launch`` must call this (the reduction is collective);
    all of them return the same report.
    """
    validate_settings(
        num_samples=num_samples, batch_size=batch_size, seed=seed, max_length=max_length, precision=precision, rtol=rtol
    )
    started = time.perf_counter()
    timings: dict[str, float] = {}
    accelerator = accelerator or make_accelerator(precision)
    loaded = load_model(
        model,
        revision=revision,
        processor=processor,
        precision=precision,
        device_map=device_map,
        trust_remote_code=trust_remote_code,
        safetensors_only=safetensors_only,
    )
    net = loaded.model
    require_head(net)  # a bare base model (BertModel, CLIPModel) is refused before any data error
    if not getattr(net, "hf_device_map", None):
        net.to(accelerator.device)
    device = input_device(net, accelerator)
    timings["load_model"] = time.perf_counter() - started

    mark = time.perf_counter()
    data = load_data(dataset, config=dataset_config, split=split, revision=dataset_revision)
    label2id = getattr(getattr(net, "config", None), "label2id", None)
    plan = detect_columns(
        data.dataset, loaded.modality, input_columns, label_column,
        label2id=label2id, multiple_choice=is_multiple_choice(net),
    )
    loader = build_batches(
        data.dataset, plan, loaded.processor, loaded.modality, net,
        num_samples=num_samples, seed=seed, batch_size=batch_size, max_length=max_length,
    )
    num_examples = len(loader.dataset)
    if num_examples < 2:
        raise TooFewSamplesError(f"D_LR needs at least 2 examples; the dataset gives {num_examples}")
    head = find_head(net, loader, device, layer)
    # The module-level function, not accelerator.prepare_data_loader: that one keeps a reference to
    # every loader it prepares, so a reused Accelerator (CLI over several models, the app) would grow.
    shard = prepare_data_loader(
        loader,
        num_processes=accelerator.num_processes,
        process_index=accelerator.process_index,
        put_on_device=False,
        even_batches=False,
    )
    timings["load_data"] = time.perf_counter() - mark

    mark = time.perf_counter()
    reference = None
    consumers = ()
    if reference_model is not None:
        reference_loaded = load_model(
            reference_model, precision=precision, trust_remote_code=trust_remote_code, safetensors_only=safetensors_only
        )
        reference = reference_loaded.model
        reference.to(device)
        names = (str(loaded.source["id"]), str(reference_loaded.source["id"]))
        consumers = (_InitialFeatures(reference, head, layer, names),)
    accumulator = stream_statistics(
        net, shard, head, accelerator,
        layer=layer, num_classes=head.num_outputs, rtol=rtol, progress=progress,
        total=len(shard), consumers=consumers,
    )
    timings["forward"] = time.perf_counter() - mark

    mark = time.perf_counter()
    result = accumulator.compute(head_weight=None if layer else read_head_weight(head))
    baselines: dict[str, Any] = {
        "accuracy": result.accuracy,
        "nc1": result.nc1,
        "effective_rank": result.effective_rank,
        "param_norm": parameter_norm(net),
    }
    if reference is not None:
        cka = consumers[0].cka
        pool_across_processes(accelerator, cka)
        baselines["s_init"] = cka.compute()
        baselines["param_change"] = parameter_change(net, parameter_snapshot(reference))
    timings["compute"] = time.perf_counter() - mark
    timings["total"] = time.perf_counter() - started

    return EvaluationReport(
        result=result,
        model=loaded.source,
        dataset={
            **data.source,
            "input_columns": list(plan.inputs),
            "label_column": plan.labels,
            "num_examples": num_examples,
        },
        head={
            "module_path": head.module_path,
            "selection": head.selection,
            "between": head.between,
            "positions": head.positions,
            "layer": layer,
            "feature_dim": result.feature_dim,
            "num_outputs": result.num_outputs,
        },
        baselines=baselines,
        settings={
            "num_samples": num_samples,
            "seed": seed,
            "batch_size": batch_size,
            "precision": precision,
            "rtol": rtol,
            "num_processes": accelerator.num_processes,
            "device": str(device),
            "device_map": device_map if isinstance(device_map, (str, type(None))) else "custom",
        },
        timings=timings,
        warnings=loaded.warnings + list(plan.warnings) + list(head.notices) + result.warnings,
    )

