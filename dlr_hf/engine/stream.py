"""The one pass: forward every batch once, tap the head, stream sufficient statistics.

Data parallel with Accelerate: each process reads its own shard of a prepared DataLoader with
``even_batches=False``, so no sample is duplicated to fill the last batch, and the statistics
themselves are summed across processes afterwards (collective: every rank takes part).
"""

from __future__ import annotations

import os
from contextlib import nullcontext
from typing import Callable, Iterable

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration
from torch import nn
from tqdm.auto import tqdm

from dlr_hf.metric import DLRAccumulator, LinearCKAAccumulator
from dlr_hf.models import FeatureTap, HeadInfo, Samples, model_inputs  # model_inputs: labels and position masks stay out

SampleConsumer = Callable[[Samples, dict[str, torch.Tensor]], None]
"""Also sees every batch's samples and the batch (e.g. to stream CKA against the initial model);
``model_inputs(batch)`` are its forward arguments."""


def launched_on_cpu_only() -> bool:
    """Several processes were launched (``accelerate launch --multi_gpu``, torchrun) on a machine with no accelerator.

    Accelerate forms a CPU process group (gloo) only when told to use the CPU; otherwise every
    process would believe it is alone and measure the whole dataset. (``accelerate launch --cpu``
    starts a single process unless given an MPI hostfile.)
    """
    if int(os.environ.get("WORLD_SIZE", "1") or 1) <= 1:
        return False
    if hasattr(torch, "accelerator"):
        return not torch.accelerator.is_available()
    return not torch.cuda.is_available()


def make_accelerator(precision: str = "fp32", cpu: bool = False) -> Accelerator:
    """An Accelerator that never pads the last batch with duplicated samples."""
    mixed = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[precision]
    return Accelerator(
        mixed_precision=mixed,
        cpu=cpu or launched_on_cpu_only(),
        dataloader_config=DataLoaderConfiguration(even_batches=False),
    )


def input_device(model: nn.Module, accelerator: Accelerator) -> torch.device:
    """Where inputs go: the accelerator's device, or where a dispatched model (device_map) starts."""
    if getattr(model, "hf_device_map", None):
        device = model.device
        return torch.device("cpu") if device.type == "meta" else device
    return accelerator.device


def stream_statistics(
    model: nn.Module,
    batches: Iterable[dict[str, torch.Tensor]],
    head: HeadInfo,
    accelerator: Accelerator,
    *,
    layer: str | None = None,
    num_classes: int | None = None,
    rtol: float = 1e-6,
    progress: bool = True,
    total: int | None = None,
    consumers: tuple[SampleConsumer, ...] = (),
    pool: bool = True,
) -> DLRAccumulator:
    """Stream D_LR's statistics over ``batches`` and all-reduce them across processes.

    ``pool=False`` stops after this process's own pass (nothing collective), so a caller can first
    agree with the other processes that every one of them succeeded (the Trainer callback does).

    In head mode only the feature scatter is kept (outputs are ``ΦWᵀ + b`` exactly, so
    ``compute(head_weight=W)`` recovers them: memory O(p²) even for a vocabulary-sized head);
    in layer-wise mode the joint moments of features and final logits are streamed.
    """
    device = input_device(model, accelerator)
    tap = FeatureTap(model, head, layer=layer)  # first: it checks that `layer` names a linear layer
    accumulator = DLRAccumulator(
        track_outputs=layer is not None,
        num_classes=num_classes,
        rtol=rtol,
        device=device,
        feature_dim=_tapped_dim(model, head, layer),
        num_outputs=head.num_outputs,
    )
    autocast = accelerator.autocast() if accelerator.mixed_precision != "no" else nullcontext()
    bar = tqdm(batches, total=total, desc="forward", unit="batch", disable=not (progress and accelerator.is_main_process))
    with tap, torch.inference_mode(), autocast:
        for batch in bar:
            batch = {key: value.to(device) for key, value in batch.items()}
            # The tap and the consumers see the whole batch: its position masks pick token samples.
            samples = tap.collect(batch, model(**model_inputs(batch)), labels=batch.get("labels"))
            accumulator.update(samples.features, samples.outputs, samples.labels)
            for consume in consumers:
                consume(samples, batch)
    if pool:
        pool_across_processes(accelerator, accumulator)
    return accumulator


def pool_across_processes(accelerator: Accelerator, statistic: DLRAccumulator | LinearCKAAccumulator) -> None:
    """Sum-reduce a streamed statistic over all processes (collective: every rank calls it)."""
    if accelerator.num_processes > 1:
        statistic.all_reduce(lambda tensor: accelerator.reduce(tensor, "sum"))


def _tapped_dim(model: nn.Module, head: HeadInfo, layer: str | None) -> int:
    """p: the head's input width, or the tapped layer's (an nn.Linear, or GPT-2's Conv1D with ``nx``)."""
    if layer is None:
        return head.feature_dim
    module = model.get_submodule(layer)
    return module.in_features if isinstance(module, nn.Linear) else module.nx

