"""PEFT adapters (LoRA layers, ``modules_to_save`` copies) as D_LR sees them, never merged in place.

A LoRA layer computes with the effective weight ``W0 + (B @ A)·scaling``; a ``ModulesToSaveWrapper``
runs its trained copy, or its ``original_module`` when the adapters are disabled — which is how the
base model is measured for free beside the adapted one. peft is never imported here: no model can
be a peft model unless peft was imported already, so dlr_hf imports (and runs) without it.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from types import ModuleType
from typing import TYPE_CHECKING

import torch
from torch import nn

from dlr_hf.errors import WeightsUnavailableError

if TYPE_CHECKING:
    from dlr_hf.models.head import HeadInfo


def _peft() -> ModuleType | None:
    """The peft package if something imported it already (else no module can be one of its layers)."""
    if sys.modules.get("peft") is None:
        return None
    import peft.tuners.lora
    import peft.utils.other

    return sys.modules["peft"]


def is_adapter_model(model: nn.Module) -> bool:
    """A ``PeftModel``: adapters on a base model that ``disable_adapter()`` can switch off."""
    peft = _peft()
    return peft is not None and isinstance(model, peft.PeftModel)


def is_lora_layer(module: nn.Module) -> bool:
    """A LoRA layer (``lora.Linear`` and kin): a frozen ``base_layer`` plus ``lora_A``/``lora_B`` factors."""
    peft = _peft()
    return peft is not None and isinstance(module, peft.tuners.lora.LoraLayer)


def is_lora_linear(module: nn.Module) -> bool:
    """A LoRA layer around an ``nn.Linear``: a linear map itself, so it can be a model's head."""
    return is_lora_layer(module) and isinstance(module.get_base_layer(), nn.Linear)


def _is_modules_to_save(module: nn.Module) -> bool:
    peft = _peft()
    return peft is not None and isinstance(module, peft.utils.other.ModulesToSaveWrapper)


def lora_delta(module: nn.Module) -> torch.Tensor | None:
    """``Σ (B @ A)·scaling`` over the layer's active adapters (shaped like its base weight), None if none is active."""
    if module.disable_adapters:
        return None
    active = [name for name in module.active_adapters if name in module.lora_A]
    if any(module.use_dora.get(name) for name in active):
        raise WeightsUnavailableError(
            f"{type(module).__name__} uses DoRA, whose effective weight is not W0 + B·A·scaling; D_LR's weight "
            "path supports plain LoRA. Merge the adapter (merge_and_unload()) and measure the merged model."
        )
    deltas = [module.get_delta_weight(name).detach() for name in active]
    return sum(deltas[1:], deltas[0]) if deltas else None


def effective_weight(module: nn.Module) -> torch.Tensor:
    """The weight a LoRA layer computes with: W0 + (B @ A)·scaling (read without merging; merged already: W)."""
    weight = module.get_base_layer().weight.detach()
    delta = None if module.merged else lora_delta(module)
    return weight if delta is None else weight + delta.to(weight.dtype)


@contextmanager
def disabled_adapters(model: nn.Module) -> Iterator[nn.Module]:
    """``model.disable_adapter()`` — the base model runs — leaving every ``requires_grad`` flag as it was.

    peft's context re-enables adapters by marking them trainable, even in a model loaded for inference.
    """
    flags = [(parameter, parameter.requires_grad) for parameter in model.parameters()]
    try:
        with model.disable_adapter():
            yield model
    finally:
        for parameter, requires_grad in flags:
            parameter.requires_grad_(requires_grad)


def _base_path(path: str) -> str:
    """``…classifier.modules_to_save.<adapter>`` → ``…classifier.original_module`` (other paths unchanged)."""
    parts = path.split(".")
    if "modules_to_save" in parts:
        index = parts.index("modules_to_save")
        parts[index : index + 2] = ["original_module"]
    return ".".join(parts)


def head_without_adapters(head: HeadInfo, model: nn.Module) -> HeadInfo:
    """The head ``model`` runs with its adapters disabled: a trained copy's original module, a LoRA head itself."""
    if head.module_path is None:
        return head
    path = _base_path(head.module_path)
    return replace(
        head,
        module_path=path,
        module=model.get_submodule(path),
        averaged=tuple((_base_path(p), model.get_submodule(_base_path(p))) for p, _ in head.averaged),
    )


def adapted_parameter_baselines(model: nn.Module) -> dict[str, float]:
    """``param_norm`` ‖θ‖² and ``param_change`` ‖θ − θ0‖/‖θ0‖ of an adapted model against its base.

    θ0 is the base network's parameters, θ the network the adapted model computes: LoRA layers at
    W0 + (B @ A)·scaling, a ``modules_to_save`` copy in place of its original, everything else
    unchanged. So the change is the LoRA product (not the A/B factors) and, like full fine-tuning's,
    relative to the whole network; the factors and copies themselves are not counted twice.
    """
    pairs: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # id(base parameter) -> (θ0, θ)
    adapter_parameters: set[int] = set()
    for module in model.modules():
        if is_lora_layer(module):
            base = module.get_base_layer().weight
            adapter_parameters |= {id(p) for name, p in module.named_parameters() if not name.startswith("base_layer.")}
            delta = lora_delta(module)
            if delta is not None:
                weight = base.detach()
                pairs[id(base)] = (weight - delta, weight) if module.merged else (weight, weight + delta)
        elif _is_modules_to_save(module):
            adapter_parameters |= {id(p) for p in module.modules_to_save.parameters()}
            if module.disable_adapters or not module.active_adapters:
                continue
            copy = module.modules_to_save[module.active_adapters[0]]
            for name, original in module.original_module.named_parameters():
                pairs[id(original)] = (original.detach(), copy.get_parameter(name).detach())
    norm = change = reference = torch.zeros((), dtype=torch.float64)
    for parameter in model.parameters():
        if id(parameter) in adapter_parameters:
            continue
        initial, current = pairs.get(id(parameter), (parameter.detach(), parameter.detach()))
        norm = norm + torch.linalg.vector_norm(current, dtype=torch.float64).cpu() ** 2
        reference = reference + torch.linalg.vector_norm(initial, dtype=torch.float64).cpu() ** 2
        if current is not initial:
            change = change + torch.linalg.vector_norm(current.double() - initial.double()).cpu() ** 2
    return {
        "param_norm": float(norm),
        "param_change": float(change.sqrt() / reference.sqrt()) if reference > 0 else float("nan"),
    }
