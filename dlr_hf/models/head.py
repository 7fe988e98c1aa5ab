"""Finding the final nn.Linear that produces a model's logits, and reading its weight.

D_LR needs Φ(x), the input of the linear layer that computes the logits (SPEC §1). Heads differ per
family (BERT pooler, RoBERTa dense+tanh head, ResNet `Sequential(Flatten, Linear)`, GPT-2 `score` run
on every position) and transformers has no uniform API for them, so the head is identified by
behaviour: one probe forward with every nn.Linear hooked, then the Linear whose output *is* the
returned logits wins. Known head names are only a fallback, for logits transformed after the head
(e.g. Gemma's soft-capping).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
from accelerate.utils import align_module_device
from torch import nn

from dlr_hf.errors import HeadNotFoundError, WeightsUnavailableError

logger = logging.getLogger(__name__)

Selection = Literal["pooled", "per_position", "selected_position"]

# Tried, in order, only when no Linear's output equals the logits (e.g. soft-capping after lm_head).
FALLBACK_HEAD_NAMES = ("lm_head", "score", "classifier", "classifier.out_proj", "classifier.1")

# What sits between the last hidden state and the head, for heads whose functional ops (slicing,
# activations, pooling) are invisible to module hooks. Keyed by model class; others are derived.
_KNOWN_BETWEEN: dict[str, Callable[[Any], str]] = {
    "BertForSequenceClassification": lambda c: "pooler: [CLS] -> bert.pooler.dense -> tanh -> dropout",
    "RobertaForSequenceClassification": lambda c: (
        "classification head: <s> (CLS) -> dropout -> classifier.dense -> tanh -> dropout"
    ),
    "XLMRobertaForSequenceClassification": lambda c: (
        "classification head: <s> (CLS) -> dropout -> classifier.dense -> tanh -> dropout"
    ),
    "ElectraForSequenceClassification": lambda c: (
        "classification head: [CLS] -> dropout -> classifier.dense -> gelu -> dropout"
    ),
    "DistilBertForSequenceClassification": lambda c: "[CLS] -> pre_classifier -> ReLU -> dropout",
    "DebertaV2ForSequenceClassification": lambda c: (
        f"ContextPooler: [CLS] -> dropout -> pooler.dense -> {c.pooler_hidden_act} -> dropout"
    ),
    "ViTForImageClassification": lambda c: "final layernorm (vit.layernorm), then [CLS] token",
    "ResNetForImageClassification": lambda c: (
        "pooler: adaptive average pool (resnet.pooler) -> flatten (classifier.0)"
    ),
    "ConvNextForImageClassification": lambda c: (
        "global average pool over H x W -> final layernorm (convnext.layernorm)"
    ),
    "Wav2Vec2ForSequenceClassification": lambda c: (
        ("weighted sum of all hidden states -> " if c.use_weighted_layer_sum else "")
        + "projector (Linear) -> mean over non-padding frames"
    ),
}


@dataclass(frozen=True, eq=False)
class HeadInfo:
    """The final linear layer of a model and how its outputs map to samples (SPEC §1)."""

    module_path: str
    module: nn.Linear
    selection: Selection
    feature_dim: int
    num_outputs: int
    between: str
    logits_key: str


def model_logits(output: Any, logits_key: str = "logits") -> torch.Tensor:
    """The logits tensor of a model's forward output (a ModelOutput, a dict or an object)."""
    if isinstance(output, Mapping):
        logits = output.get(logits_key)
    else:
        logits = getattr(output, logits_key, None)
    if not isinstance(logits, torch.Tensor):
        raise HeadNotFoundError(
            f"The model's output ({type(output).__name__}) has no tensor {logits_key!r}; D_LR needs the "
            "logits of a classification or language-model head. Load the model with a head "
            "(e.g. AutoModelForSequenceClassification instead of AutoModel), or name the output "
            "key that holds the logits."
        )
    return logits


def outputs_match(head_out: torch.Tensor, logits: torch.Tensor) -> bool:
    """Whether a head output is the logits (same shape, equal up to float round-off)."""
    if head_out.shape != logits.shape:
        return False
    a, b = head_out.to(logits.device, torch.float32), logits.to(torch.float32)
    return torch.allclose(a, b, equal_nan=True)


def select_positions(
    head_out: torch.Tensor, logits: torch.Tensor, mask: torch.Tensor | None
) -> torch.Tensor | None:
    """Per row, the position of a (B, T, C) head output that the (B, C) logits were taken from.

    Matching by value handles left and right padding and any rule a model uses. Ties (only possible
    when the head maps distinct features to equal outputs) go to the last non-padding position,
    which is transformers' own rule. Returns None when some row matches no position.
    """
    a = head_out.to(logits.device, torch.float32)
    close = torch.isclose(a, logits.to(torch.float32)[:, None, :], equal_nan=True).all(dim=-1)
    if not bool(close.any(dim=1).all()):
        return None
    weight = close.long()
    if mask is not None and mask.shape == close.shape:
        weight = weight * (1 + mask.to(close.device).bool().long())
    positions = torch.arange(close.shape[1], device=close.device)
    return (weight * close.shape[1] + positions).argmax(dim=1)


def _selection_of(head_out: torch.Tensor, logits: torch.Tensor) -> Selection | None:
    """How a Linear's output relates to the logits, or None if it did not produce them."""
    if outputs_match(head_out, logits):
        if logits.ndim == 2:
            return "pooled"
        if logits.ndim == 3:
            return "per_position"
        return None
    if (
        head_out.ndim == 3
        and logits.ndim == 2
        and head_out.shape[0] == logits.shape[0]
        and head_out.shape[2] == logits.shape[1]
        and select_positions(head_out, logits, None) is not None
    ):
        return "selected_position"
    return None


def _block_paths(model: nn.Module) -> set[str]:
    """Paths of the repeated-block containers (nn.ModuleList) of the model."""
    return {path for path, m in model.named_modules() if isinstance(m, nn.ModuleList)}


_MAX_STEPS = 6  # a model without repeated blocks (a plain MLP) would otherwise list every layer


def _derive_between(model: nn.Module, call_order: list[str], head_path: str) -> str:
    """List the leaf modules that ran after the last repeated block and before the head."""
    blocks = _block_paths(model)
    head_index = len(call_order) - 1 - call_order[::-1].index(head_path)
    chain: list[str] = []
    for path in reversed(call_order[:head_index]):
        parts = path.split(".")
        if any(".".join(parts[:i]) in blocks for i in range(1, len(parts))):
            break
        if not chain or chain[-1] != path:
            chain.append(path)
    if not chain:
        return "nothing: the head reads the last hidden state directly"
    modules = dict(model.named_modules())
    steps = " -> ".join(f"{p} ({type(modules[p]).__name__})" for p in reversed(chain[:_MAX_STEPS]))
    if len(chain) > _MAX_STEPS:
        steps = f"... -> {steps}"
    return f"{steps} (modules only; functional ops such as slicing or activations are not listed)"


def _describe_between(model: nn.Module, call_order: list[str], head_path: str, selection: Selection) -> str:
    known = _KNOWN_BETWEEN.get(type(model).__name__)
    config = getattr(model, "config", None)
    if known is not None and config is not None:
        text = known(config)
    else:
        text = _derive_between(model, call_order, head_path)
    if selection == "selected_position":
        text += (
            f"; {head_path} runs on every position and the logits are taken at one position per row "
            "(in transformers: the last non-pad token)"
        )
    return text



def locate_head(model: nn.Module, probe_batch: Mapping[str, Any], logits_key: str = "logits") -> HeadInfo:
    """Find the nn.Linear whose output is the model's logits, with one no-grad probe forward.

    `probe_batch` holds the model's forward inputs; a "labels" entry is dropped (no loss needed).
    Keep it small: every Linear's output of the probe is held until the search ends. If several
    Linear layers produce the logits, the last one executed is the head.
    """
    outputs: dict[str, torch.Tensor] = {}
    call_order: list[str] = []
    linear_ids = {id(m) for m in model.modules() if isinstance(m, nn.Linear)}

    def recorder(path: str, is_linear: bool) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            call_order.append(path)
            if is_linear and isinstance(output, torch.Tensor):
                outputs[path] = output.detach()

        return hook

    handles = [
        m.register_forward_hook(recorder(path, id(m) in linear_ids))
        for path, m in model.named_modules()
        if path and (id(m) in linear_ids or next(m.children(), None) is None)
    ]
    inputs = {k: v for k, v in probe_batch.items() if k != "labels"}
    try:
        with torch.no_grad():
            output = model(**inputs)
    finally:
        for handle in handles:
            handle.remove()
    logits = model_logits(output, logits_key)

    found: tuple[str, Selection] | None = None
    for path in dict.fromkeys(reversed(call_order)):
        if path in outputs:
            selection = _selection_of(outputs[path], logits)
            if selection is not None:
                found = (path, selection)
                break
    if found is None:
        found = _fallback_head(model, outputs, logits)
    if found is None:
        ran = [p for p in dict.fromkeys(reversed(call_order)) if p in outputs][:5]
        raise HeadNotFoundError(
            f"No nn.Linear of {type(model).__name__} produces its {logits_key!r} "
            f"(shape {tuple(logits.shape)}); checked {len(outputs)} Linear layers. D_LR reads the input "
            "of the final linear layer, so the logits must come from an nn.Linear. To measure anyway, "
            "pass layer=<path of an nn.Linear> for layer-wise D_LR (features = that layer's input, "
            f"outputs = the logits); Linear layers run last: {', '.join(ran) or 'none'}."
        )
    path, selection = found
    module = dict(model.named_modules())[path]
    return HeadInfo(
        module_path=path,
        module=module,
        selection=selection,
        feature_dim=module.in_features,
        num_outputs=module.out_features,
        between=_describe_between(model, call_order, path, selection),
        logits_key=logits_key,
    )


def _fallback_head(
    model: nn.Module, outputs: dict[str, torch.Tensor], logits: torch.Tensor
) -> tuple[str, Selection] | None:
    """A head found by name: it ran, and its output has the logits' shape but not their values."""
    modules = dict(model.named_modules())
    get_output_embeddings = getattr(model, "get_output_embeddings", None)
    output_embeddings = get_output_embeddings() if callable(get_output_embeddings) else None
    names = [p for p, m in modules.items() if m is output_embeddings] + list(FALLBACK_HEAD_NAMES)
    for path in names:
        module = modules.get(path)
        if (
            isinstance(module, nn.Linear)
            and path in outputs
            and module.out_features == logits.shape[-1]
            and outputs[path].shape == logits.shape
            and logits.ndim in (2, 3)
        ):
            logger.warning(
                "No Linear output equals the logits; using %r by name (the logits are a transform of "
                "its output, e.g. soft-capping). D_LR uses the head's own output.",
                path,
            )
            return path, "pooled" if logits.ndim == 2 else "per_position"
    return None


def read_head_weight(head: HeadInfo) -> torch.Tensor:
    """The head's weight W (C, p), detached, loaded even when accelerate offloads it to 'meta'."""
    with align_module_device(head.module):
        weight = head.module.weight.detach()
    if weight.device.type == "meta":
        raise WeightsUnavailableError(
            f"The weight of head {head.module_path!r} is on the 'meta' device and no accelerate hook "
            "can load it. Load the model with real weights (or with device_map/offloading via "
            "accelerate) before measuring."
        )
    return weight
