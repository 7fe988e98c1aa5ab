"""Capturing (features, outputs) samples from a normal forward, one row per prediction (SPEC §1).

Forward hooks (not pre-hooks) are used so the capture also works when accelerate offloads the head:
accelerate wraps `module.forward`, and only after it returns are input and output final.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from dlr_hf.errors import HeadNotFoundError, LayerNotFoundError, ShapeMismatchError
from dlr_hf.models.adapters import is_lora_linear
from dlr_hf.models.head import HeadInfo, model_logits, select_positions
from dlr_hf.models.positions import frame_mask, kept_positions


@dataclass(frozen=True)
class Samples:
    """One row per prediction: features Φ (n, p), outputs Ŷ (n, C), class labels (n,) or None."""

    features: torch.Tensor
    outputs: torch.Tensor
    labels: torch.Tensor | None


class _Capture:
    """Forward hook that keeps the last call's input (copied) and/or output of one module."""

    def __init__(self, module: nn.Module, keep_input: bool, keep_output: bool) -> None:
        self.input: torch.Tensor | None = None
        self.output: torch.Tensor | None = None
        self._keep_input, self._keep_output = keep_input, keep_output
        self.handle = module.register_forward_hook(self._hook, with_kwargs=True)

    def _hook(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
        if self._keep_input:
            x = args[0] if args else next(iter(kwargs.values()))
            # Copied: a later in-place op (e.g. a residual `+=`) must not alter captured features.
            self.input = x.detach().clone()
        if self._keep_output:
            self.output = output.detach()

    def release(self) -> None:
        self.input = self.output = None


def is_linear_layer(module: nn.Module | None) -> bool:
    """A layer whose input layer-wise D_LR can read: nn.Linear, transformers' Conv1D (GPT-2), or a PEFT LoRA
    layer around an nn.Linear (its input is its base layer's input)."""
    return isinstance(module, (nn.Linear, Conv1D)) or (module is not None and is_lora_linear(module))


def find_linear_layer(model: nn.Module, layer: str) -> nn.Module:
    """The linear layer (``is_linear_layer``) at a module path; LayerNotFoundError with close matches otherwise."""
    modules = dict(model.named_modules())
    module = modules.get(layer)
    if is_linear_layer(module):
        return module
    valid = [p for p, m in modules.items() if is_linear_layer(m)]
    close = difflib.get_close_matches(layer, valid, n=3)
    what = "does not exist" if module is None else f"is a {type(module).__name__}, not a linear layer"
    examples = close or valid[:3] + valid[-3:]
    raise LayerNotFoundError(
        f"Layer {layer!r} {what} in {type(model).__name__}. Pass the module path of an nn.Linear "
        f"({len(valid)} in this model), e.g. {', '.join(repr(p) for p in examples)}."
    )


class FeatureTap:
    """Hooks a model so that each forward yields D_LR samples via `collect`.

    Head mode (`layer=None`): features = the head's input, outputs = the head's own output (before
    any soft-capping of the logits); for averaged heads (DeiT) the inputs side by side and the
    mean output. Layer-wise mode: features = the input of `layer` (any linear layer), outputs = the
    model's logits, selected like the head's predictions. When that layer sees (B, T, d) while
    predictions are one per example, the features are taken at the selected position for
    "selected_position" heads and are otherwise the mean over non-padding positions (for speech
    models, the frames made from non-padding samples; all positions, and any spatial dims, when no
    attention_mask says which). If the layer runs several times per forward (shared weights), its
    last call is used.

    Samples: one per example for pooled heads, one per (example, choice) for multiple choice, and
    for per-position heads the positions of `kept_positions` (never chosen by the labels).
    Labels: pooled and selected-position heads return integer labels of shape (B,) and None for
    other labels (regression, multi-label); token classification returns the labels at the kept
    positions (-100 there means unlabelled); language-model heads and multiple choice return None,
    as next tokens and correct-choice indices are not classes of the outputs.
    """

    def __init__(self, model: nn.Module, head: HeadInfo, layer: str | None = None) -> None:
        self.model, self.head, self.layer = model, head, layer
        self._layer_module = None if layer is None else self._tapped_module(model, layer)
        if layer is None and not head.linears:
            raise HeadNotFoundError(
                f"No linear head makes the logits of {type(model).__name__}, so head-mode D_LR has no "
                "features; pass layer=<path of an nn.Linear> for layer-wise D_LR."
            )
        get_output_embeddings = getattr(model, "get_output_embeddings", None)
        self._is_lm_head = (
            head.module is not None and callable(get_output_embeddings) and get_output_embeddings() is head.module
        )
        self._heads: list[_Capture] = []
        self._layer: _Capture | None = None

    def __enter__(self) -> FeatureTap:
        if self._layer_module is None:
            self._heads = [_Capture(module, keep_input=True, keep_output=True) for _, module in self.head.linears]
        else:
            self._layer = self._capture_layer()
            if self.head.selection == "selected_position":
                self._heads = [_Capture(self.head.module, keep_input=False, keep_output=True)]
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for capture in self._captures():
            capture.handle.remove()
            capture.release()
        self._heads, self._layer = [], None

    # Layer-wise mode reads a linear layer's input; a subclass (``dlr_hf.models.blocks.BlockTap``)
    # reads a block's output instead by overriding these four.
    def _tapped_module(self, model: nn.Module, layer: str) -> nn.Module:
        return find_linear_layer(model, layer)

    def _capture_layer(self) -> _Capture:
        return _Capture(self._layer_module, keep_input=True, keep_output=False)

    def _layer_features(self) -> torch.Tensor | None:
        return self._layer.input

    def _pool(self, features: torch.Tensor, mask: torch.Tensor | None, inputs: Mapping[str, Any]) -> torch.Tensor:
        """One row per example from a layer that sees every position (pooled and per-choice heads).

        A speech model's ``attention_mask`` covers input samples: the frames of non-padding samples
        are averaged, as its head averages them (``positions.frame_mask``).
        """
        if mask is not None and features.ndim == 3 and mask.shape != features.shape[:2]:
            mask = frame_mask(self.model, mask, features.shape[1])
        return _mean_over_positions(features, mask)

    def _captures(self) -> list[_Capture]:
        return self._heads + ([] if self._layer is None else [self._layer])

    def collect(
        self, inputs: Mapping[str, Any], out: Any, labels: torch.Tensor | None = None, examples: int | None = None
    ) -> Samples:
        """The samples of the forward just run on `inputs` (which returned `out`); frees the captures.

        `inputs` may be the whole batch: position masks in it (see ``dlr_hf.models.positions``) pick
        the positions of token classification. `examples`: keep only the first `examples` examples
        of the batch (the real ones of a last batch that a data loader padded with repeats).
        """
        if not self._captures():
            raise RuntimeError("FeatureTap.collect must be called inside `with FeatureTap(...)`.")
        try:
            if examples is not None:
                inputs, out, labels = self._first_examples(inputs, out, labels, examples)
            return self._collect(inputs, out, labels)
        finally:
            for capture in self._captures():
                capture.release()

    def _first_examples(
        self, inputs: Mapping[str, Any], out: Any, labels: torch.Tensor | None, examples: int
    ) -> tuple[dict[str, Any], dict[str, torch.Tensor], torch.Tensor | None]:
        """Inputs, logits, labels and captures cut to the first `examples` examples of the batch.

        A capture has one row per example, or per (example, choice) for multiple choice: it keeps
        the same share of its rows.
        """
        logits = model_logits(out, self.head.logits_key)
        rows = logits.shape[0]

        def first(value: Any) -> Any:
            if isinstance(value, torch.Tensor) and value.ndim > 0 and value.shape[0] == rows:
                return value[:examples]
            return value

        for capture in self._captures():
            for name in ("input", "output"):
                captured = getattr(capture, name)
                if captured is not None:
                    setattr(capture, name, captured[: examples * (captured.shape[0] // rows)])
        cut = {key: first(value) for key, value in inputs.items()}
        return cut, {self.head.logits_key: logits[:examples]}, first(labels)

    def _collect(self, inputs: Mapping[str, Any], out: Any, labels: torch.Tensor | None) -> Samples:
        if any(capture.output is None for capture in self._heads):
            raise HeadNotFoundError(
                f"The head {self.head.module_path!r} did not run in the last forward; call collect "
                "once after each model(**inputs), on the model the head was located in."
            )
        if self._layer is not None and self._layer_features() is None:
            raise LayerNotFoundError(
                f"Layer {self.layer!r} did not run in the last forward; pick a layer on the path "
                "from the inputs to the logits."
            )
        logits = model_logits(out, self.head.logits_key)
        device = logits.device
        head_out = None
        if self._heads:
            head_out = sum(capture.output.to(device) for capture in self._heads) / len(self._heads)
        mask = inputs.get("attention_mask")
        mask = None if mask is None else mask.to(device).bool()
        if labels is not None:
            labels = labels.to(device)

        selection = self.head.selection
        if self._layer is None:
            features = torch.cat([capture.input.to(device) for capture in self._heads], dim=-1)
            outputs = head_out
        else:
            features, outputs = self._layer_features().to(device), logits

        if selection == "per_position":
            return self._per_position(features, outputs, inputs, labels)
        if selection == "per_choice":
            if self._layer is not None:
                outputs = logits.reshape(-1, 1)
            if mask is not None and mask.ndim == 3:
                mask = mask.reshape(-1, mask.shape[-1])
            labels = None
        if selection == "selected_position":
            positions = select_positions(head_out, logits, mask)
            if positions is None:
                raise HeadNotFoundError(
                    f"The logits no longer match the output of head {self.head.module_path!r} at any "
                    "position; locate the head again for this model."
                )
            rows = torch.arange(logits.shape[0], device=device)
            if self._layer is None:
                features, outputs = features[rows, positions], outputs[rows, positions]
            elif features.ndim == 3 and features.shape[1] == head_out.shape[1]:
                features = features[rows, positions]
        if features.ndim > 2:
            features = self._pool(features, mask, inputs)
        if features.shape[0] != outputs.shape[0]:
            raise ShapeMismatchError(
                f"Layer {self.layer!r} sees {features.shape[0]} rows for {outputs.shape[0]} predictions "
                "(it does not run batch-first on every example, e.g. a mixture-of-experts expert); "
                "pick another layer."
            )
        return Samples(features=features, outputs=outputs, labels=_class_labels(labels, outputs.shape[0]))

    def _per_position(
        self,
        features: torch.Tensor,
        outputs: torch.Tensor,
        inputs: Mapping[str, Any],
        labels: torch.Tensor | None,
    ) -> Samples:
        """Rows of (B, T, ·) tensors at the kept positions; labels never decide which positions."""
        grid = outputs.shape[:2]
        if features.shape[:2] != grid:
            raise ShapeMismatchError(
                f"Layer {self.layer!r} sees inputs of shape {tuple(features.shape)}, which do not line up "
                f"with the per-position logits {tuple(outputs.shape)}; pick a layer that runs on every token."
            )
        name, mask, _ = kept_positions(self.model, self._is_lm_head, inputs)
        keep = torch.ones(grid, dtype=torch.bool, device=outputs.device)
        if mask is not None:
            if mask.shape != grid:
                raise ShapeMismatchError(
                    f"{name} has shape {tuple(mask.shape)} but the head predicts on a {tuple(grid)} grid; "
                    "pass inputs whose mask matches the predicted positions, or none to use every position."
                )
            keep &= mask.to(outputs.device).bool()
        if self._is_lm_head:
            labels = None
        elif labels is not None:
            if labels.shape != grid:
                raise ShapeMismatchError(
                    f"Token labels have shape {tuple(labels.shape)}, expected {tuple(grid)} "
                    "(one per position)."
                )
            labels = labels[keep].long()
        return Samples(features=features[keep], outputs=outputs[keep], labels=labels)


def _mean_over_positions(features: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of (B, ..., d) features over the middle dims; over non-padding positions when masked."""
    if mask is not None and features.ndim == 3 and mask.shape == features.shape[:2]:
        weights = mask.to(features.dtype).unsqueeze(-1)
        return (features * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1)
    return features.flatten(1, -2).mean(dim=1)


def _class_labels(labels: torch.Tensor | None, n: int) -> torch.Tensor | None:
    """One integer class label per example, or None when the labels are not class indices."""
    if labels is None or labels.is_floating_point() or labels.shape != (n,):
        return None
    return labels.long()
