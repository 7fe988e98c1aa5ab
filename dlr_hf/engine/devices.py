"""Where a measurement runs: the Accelerator (processes, mixed precision) and the inputs' device.

Data parallel with Accelerate: each process reads its own shard of a prepared DataLoader with
``even_batches=False``, so no sample is duplicated to fill the last batch, and the statistics
themselves are summed across processes afterwards (``Measurement.reduce_dlr``).
"""

from __future__ import annotations

import os

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration
from torch import nn


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
