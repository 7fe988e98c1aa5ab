"""Parameter-space baselines (SPEC §4): ‖θ‖² and the relative change ‖θ − θ0‖/‖θ0‖."""

from __future__ import annotations

import torch
from torch import nn


def parameter_snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """A detached float32 CPU copy of all parameters (θ0), to compare against later.

    Frozen parameters count too: ‖θ − θ0‖/‖θ0‖ is over the whole network, so last-layer-only
    training reads as the small change it is.
    """
    return {name: param.detach().to("cpu", torch.float32).clone() for name, param in model.named_parameters()}


def parameter_norm(model: nn.Module) -> float:
    """``‖θ‖²`` over all parameters, accumulated in float64 without a float64 copy of any parameter."""
    total = torch.zeros((), dtype=torch.float64)
    for param in model.parameters():
        total += torch.linalg.vector_norm(param.detach(), dtype=torch.float64).cpu() ** 2
    return float(total)


def parameter_change(model: nn.Module, initial: dict[str, torch.Tensor]) -> float:
    """``‖θ − θ0‖ / ‖θ0‖`` over the parameters present in the snapshot."""
    change = torch.zeros((), dtype=torch.float64)
    reference = torch.zeros((), dtype=torch.float64)
    for name, param in model.named_parameters():
        if name in initial:
            start = initial[name].double()
            change += (param.detach().to("cpu", torch.float64) - start).pow(2).sum()
            reference += start.pow(2).sum()
    return float(change.sqrt() / reference.sqrt()) if reference > 0 else float("nan")
