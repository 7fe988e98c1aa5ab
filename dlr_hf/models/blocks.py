"""The layers of a richness profile across depth, and a tap on a block's output hidden state.

A profile measures layer-wise D_LR (SPEC §1: features = one layer's representation, outputs = the
model's final logits) at many depths in the same forward pass. ``layers`` says which:

* ``"blocks"`` — the hidden state after every block of the model's block stack (the last nn.ModuleList
  of same-class modules registered in the model and not nested in another such list: BERT's
  ``encoder.layer``, GPT-2's ``transformer.h``, ViT's ``layers``, ResNet / ConvNeXt ``encoder.stages``,
  the decoder of an encoder-decoder LM). It is the block's own output, before any final norm the model
  applies after the stack (GPT-2's ``ln_f``, Llama's ``norm``, ViT's ``layernorm``), read where the
  head reads: pooled heads — the first position (BERT's pooler, RoBERTa's head and ViT's CLS read
  token 0; DeiT's two averaged heads read tokens 0 and 1, side by side), except audio models, whose
  heads mean-pool over the frames of non-padding samples (Whisper's over every frame; the Audio
  Spectrogram Transformer's average its first two tokens), and
  encoder-decoder sequence classifiers (BART, T5), whose heads read the decoder's state at the last
  EOS token of ``input_ids``; convolutional stages (B, C, H, W) — the global average over H × W, as
  ResNet and ConvNeXt heads pool; GPT-style heads — the position the logits were taken from;
  per-position heads (token classification, LM) — every kept position; multiple choice — each
  (example, choice) row's first token.
* module-path patterns, comma-separated — the inputs of the linear layers (nn.Linear, GPT-2's Conv1D)
  they match, read as in layer-wise mode (``FeatureTap(layer=...)``); ``*`` stands for one part of a
  path: ``bert.encoder.layer.*.output.dense``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from dlr_hf.errors import LayerNotFoundError
from dlr_hf.models.head import HeadInfo
from dlr_hf.models.positions import averaged_first_tokens, eos_positions
from dlr_hf.models.tap import FeatureTap, _Capture, find_linear_layer, is_linear_layer

BLOCKS = "blocks"
"""``layers=`` value for the hidden state after every block."""

_AUDIO_INPUTS = ("input_values", "input_features")
"""Main inputs of audio models, whose pooled heads average over frames instead of reading a CLS token."""


@dataclass(frozen=True)
class ProfileLayer:
    """One layer of a profile: ``name`` (``block_07`` or the module path), ``depth`` (1 = shallowest)."""

    name: str
    depth: int
    module_path: str
    is_block: bool


def profile_layers(model: nn.Module, layers: str) -> list[ProfileLayer]:
    """The layers ``layers`` names in ``model``, shallow to deep (the order they are registered)."""
    if layers == BLOCKS:
        path, stack = find_blocks(model)
        return [ProfileLayer(f"block_{index:02d}", index + 1, f"{path}.{index}", True) for index in range(len(stack))]
    matched: set[str] = set()
    for pattern in layers.split(","):
        matched.update(_matching_linears(model, pattern.strip()))
    ordered = [path for path, _ in model.named_modules() if path in matched]
    return [ProfileLayer(path, depth, path, False) for depth, path in enumerate(ordered, start=1)]


def profile_tap(model: nn.Module, head: HeadInfo, layer: ProfileLayer) -> FeatureTap:
    """The tap of one profile layer: a block's output, or a linear layer's input."""
    return (BlockTap if layer.is_block else FeatureTap)(model, head, layer=layer.module_path)


def find_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """(path, ModuleList) of the model's block stack: the last registered list of same-class modules
    that no other such list contains (weight-norm parametrization lists are not blocks)."""
    stacks = {
        path: module for path, module in model.named_modules()
        if isinstance(module, nn.ModuleList) and len(module) and len({type(child) for child in module}) == 1
        and "parametrizations" not in path.split(".")
    }
    outermost = [path for path in stacks if not any(path.startswith(f"{other}.") for other in stacks)]
    if not outermost:
        raise LayerNotFoundError(
            f"{type(model).__name__} has no stack of repeated blocks (an nn.ModuleList of same-class layers), so "
            "layers='blocks' has nothing to read; pass module-path patterns of its linear layers instead, e.g. "
            "layers='body.*' for every Linear directly under `body`"
        )
    return outermost[-1], stacks[outermost[-1]]


def _matching_linears(model: nn.Module, pattern: str) -> list[str]:
    """Paths of the linear layers a pattern matches (``*`` = one path part); a plain path must name one."""
    if "*" not in pattern:
        find_linear_layer(model, pattern)  # raises LayerNotFoundError with close matches
        return [pattern]
    regex = re.compile("[^.]+".join(re.escape(part) for part in pattern.split("*")) + r"\Z")
    found = [
        path for path, module in model.named_modules()
        if regex.match(path) and is_linear_layer(module)
    ]
    if not found:
        linears = [path for path, module in model.named_modules() if is_linear_layer(module)]
        raise LayerNotFoundError(
            f"the pattern {pattern!r} matches no linear layer of {type(model).__name__} ('*' stands for one part of "
            f"a module path); its linear layers are e.g. {', '.join(repr(p) for p in linears[:3])}"
        )
    return found


class _BlockOutput(_Capture):
    """A copy of a block's output hidden state (the next block may update it in place)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__(module, keep_input=False, keep_output=True)

    def _hook(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
        hidden = output if isinstance(output, torch.Tensor) else output[0]  # (hidden state, attentions, …)
        self.output = hidden.detach().clone()


class BlockTap(FeatureTap):
    """Layer-wise samples whose features are a block's output hidden state, read where the head reads."""

    def _tapped_module(self, model: nn.Module, layer: str) -> nn.Module:
        return model.get_submodule(layer)

    def _capture_layer(self) -> _Capture:
        return _BlockOutput(self._layer_module)

    def _layer_features(self) -> torch.Tensor | None:
        return self._layer.output

    def _pool(self, features: torch.Tensor, mask: torch.Tensor | None, inputs: Mapping[str, Any]) -> torch.Tensor:
        if features.ndim == 4:  # a convolutional stage (B, C, H, W)
            return features.mean(dim=(2, 3))
        averaged = averaged_first_tokens(self.model)
        if averaged is not None:  # e.g. AST: the mean of its CLS and distillation tokens
            return features[:, :averaged].mean(dim=1)
        if getattr(self.model, "main_input_name", None) in _AUDIO_INPUTS:
            return super()._pool(features, mask, inputs)  # the frames of non-padding samples
        positions = eos_positions(self.model, inputs, features.shape[1])
        if positions is not None:  # an encoder-decoder classifier's decoder blocks: the last EOS token
            return features[torch.arange(features.shape[0], device=features.device), positions.to(features.device)]
        return features[:, : max(1, len(self.head.linears))].flatten(1)
