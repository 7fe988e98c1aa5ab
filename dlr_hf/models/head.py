"""Finding the final nn.Linear that produces a model's logits, and reading its weight.

D_LR needs Φ(x), the input of the linear layer that computes the logits (SPEC §1). Heads differ per
family (BERT pooler, RoBERTa dense+tanh head, ResNet `Sequential(Flatten, Linear)`, GPT-2 `score` run
on every position) and transformers has no uniform API for them, so the head is identified by
behaviour: one probe forward with every nn.Linear hooked, then the Linear whose output *is* the
returned logits wins. Two heads whose outputs are averaged (DeiT's class and distillation heads) are
found the same way. Known head names are only a fallback, accepted only when a documented monotone
map (soft-capping, a logit scale, a per-class offset) turns the head's output into the logits.
Everything noteworthy about the head lands in ``HeadInfo.notices`` for the report.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

import torch
from accelerate.utils import align_module_device
from torch import nn

from dlr_hf.errors import HeadNotFoundError, WeightsUnavailableError
from dlr_hf.models.adapters import effective_weight, is_lora_layer, is_lora_linear
from dlr_hf.models.positions import kept_positions, model_inputs

logger = logging.getLogger(__name__)

Selection = Literal["pooled", "per_position", "selected_position", "per_choice"]

# Tried, in order, only when no Linear's output equals the logits; accepted only through a documented
# map (soft-capping after lm_head, a logit scale, BART's final_logits_bias).
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
    "WhisperForAudioClassification": lambda c: (
        ("weighted sum of all hidden states -> " if c.use_weighted_layer_sum else "")
        + "encoder (on the input padded to 30 s) -> projector (Linear) -> mean over all frames"
    ),
    "DeiTForImageClassificationWithTeacher": lambda c: (
        "final layernorm (deit.layernorm); [CLS] (token 0) feeds cls_classifier and the distillation "
        "token (token 1) feeds distillation_classifier; the features are both, side by side"
    ),
}

# Auto classes that put a linear head on a bare base model, suggested when one is given.
_HEAD_AUTO_CLASSES = {
    "AutoModelForSequenceClassification": "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES",
    "AutoModelForTokenClassification": "MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES",
    "AutoModelForImageClassification": "MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES",
    "AutoModelForAudioClassification": "MODEL_FOR_AUDIO_CLASSIFICATION_MAPPING_NAMES",
    "AutoModelForMultipleChoice": "MODEL_FOR_MULTIPLE_CHOICE_MAPPING_NAMES",
    "AutoModelForCausalLM": "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES",
    "AutoModelForSeq2SeqLM": "MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES",
}

# bitsandbytes classes (duck-typed: bitsandbytes itself need not be installed).
_QUANTIZED_CLASSES = ("Linear8bitLt", "Linear4bit", "LinearFP4", "LinearNF4", "Params4bit", "Int8Params")


@dataclass(frozen=True, eq=False)
class HeadInfo:
    """The final linear layer of a model and how its outputs map to samples (SPEC §1).

    ``averaged`` holds (path, Linear) of heads whose outputs are averaged into the logits (DeiT):
    their inputs side by side are the features. ``module`` is None only when no head makes the
    logits and a layer was given for layer-wise D_LR. ``notices`` are the caveats the report shows;
    ``positions`` says which positions are samples (per-position heads only).
    """

    module_path: str | None
    module: nn.Linear | None
    selection: Selection
    feature_dim: int
    num_outputs: int
    between: str
    logits_key: str
    notices: tuple[str, ...] = ()
    averaged: tuple[tuple[str, nn.Linear], ...] = ()
    positions: str | None = None

    @property
    def linears(self) -> tuple[tuple[str, nn.Linear], ...]:
        """Every (path, Linear) whose output makes the logits: the head, or the averaged heads."""
        if self.averaged:
            return self.averaged
        return () if self.module is None or self.module_path is None else ((self.module_path, self.module),)


def relocate(head: HeadInfo, model: nn.Module) -> HeadInfo:
    """The same head (same module paths) in another copy of the architecture, e.g. the initial checkpoint."""
    return replace(
        head,
        module=None if head.module_path is None else model.get_submodule(head.module_path),
        averaged=tuple((path, model.get_submodule(path)) for path, _ in head.averaged),
    )


def is_multiple_choice(model: nn.Module) -> bool:
    """Whether the model scores choices: inputs (batch, choices, length), one logit per choice."""
    return type(model).__name__.endswith("ForMultipleChoice")


def _class_names(mapping: Mapping[str, Any]) -> set[str]:
    names: set[str] = set()
    for value in mapping.values():
        names.update((value,) if isinstance(value, str) else value)
    return names


@functools.cache
def _head_mappings() -> dict[str, set[str]]:
    """Auto class -> model types it covers (to suggest a head for a bare model)."""
    from transformers.models.auto import modeling_auto

    return {auto: set(getattr(modeling_auto, names)) for auto, names in _HEAD_AUTO_CLASSES.items()}


@functools.cache
def _bare_model_classes() -> frozenset[str]:
    """Classes ``AutoModel`` builds (hidden states, no head), minus any that also serve a head task."""
    from transformers.models.auto import modeling_auto

    with_head: set[str] = set()
    for names in _HEAD_AUTO_CLASSES.values():
        with_head |= _class_names(getattr(modeling_auto, names))
    return frozenset(_class_names(modeling_auto.MODEL_MAPPING_NAMES) - with_head)


def require_head(model: nn.Module) -> None:
    """Refuse a bare base model (BertModel, CLIPModel) before anything else goes wrong on it.

    Such a model returns hidden states or embeddings, so there is no final linear layer whose
    input D_LR could read; without this check the user would see a modality or shape error.
    """
    name = type(model).__name__
    if name not in _bare_model_classes():
        return
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    options = [auto for auto, types in _head_mappings().items() if model_type in types]
    hint = f"{options[0]}.from_pretrained(...)" if options else "an AutoModelFor… class with a classification head"
    also = f" (or {', '.join(options[1:])})" if len(options) > 1 else ""
    raise HeadNotFoundError(
        f"{name} has no classification head: it returns hidden states or embeddings, not logits made by "
        f"a final linear layer, whose input D_LR reads. Load the checkpoint with a head, e.g. {hint}{also}, "
        "trained for your task."
    )


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
    if (  # multiple choice: one score per (example, choice) row, viewed as (B, num_choices)
        head_out.ndim == 2
        and logits.ndim == 2
        and head_out.shape[1] == 1
        and head_out.shape[0] == logits.numel()
        and outputs_match(head_out.reshape(logits.shape), logits)
    ):
        return "per_choice"
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
_MAX_AVERAGED = 8  # same-shaped Linear outputs searched for an averaged pair (DeiT): the last ones run


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


def locate_head(
    model: nn.Module, probe_batch: Mapping[str, Any], logits_key: str = "logits", layer: str | None = None
) -> HeadInfo:
    """Find the nn.Linear whose output is the model's logits, with one no-grad probe forward.

    `probe_batch` holds the model's forward inputs; "labels" and position masks are dropped (no
    loss needed). Keep it small: every Linear's output of the probe is held until the search ends.
    If several Linear layers produce the logits, the last one executed is the head. With `layer`
    (layer-wise D_LR, whose outputs are the logits themselves) a model whose logits come from no
    linear head is accepted: the result then has no module.
    """
    require_head(model)
    outputs: dict[str, torch.Tensor] = {}
    call_order: list[str] = []
    # A LoRA layer around a Linear is a linear map too: when it is the head, its output (not its base layer's) is the logits.
    linear_ids = {id(m) for m in model.modules() if isinstance(m, nn.Linear) or is_lora_linear(m)}

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
    try:
        with torch.no_grad():
            output = model(**model_inputs(probe_batch))
    finally:
        for handle in handles:
            handle.remove()
    logits = model_logits(output, logits_key)
    last_first = [p for p in dict.fromkeys(reversed(call_order)) if p in outputs]

    notices: list[str] = []
    found: tuple[tuple[str, ...], Selection] | None = None
    for path in last_first:
        selection = _selection_of(outputs[path], logits)
        if selection is not None:
            found = ((path,), selection)
            break
    if found is None:
        pair = _averaged_pair(last_first, outputs, logits)
        if pair is not None:
            found = (pair, "pooled" if logits.ndim == 2 else "per_position")
    rejected: list[str] = []
    if found is None:
        fallback, rejected = _fallback_head(model, outputs, logits)
        if fallback is not None:
            path, selection, notice = fallback
            found = ((path,), selection)
            notices.append(notice)
    if found is None:
        if layer is not None and logits.ndim in (2, 3):
            return _logits_only(model, probe_batch, logits, logits_key, layer)
        ran = last_first[:5]
        why = "".join(
            f" {path!r} has the logits' shape, but its output is not the logits, nor turns into them by "
            "soft-capping, a scale or a per-class offset, so it is not the head." for path in rejected
        )
        raise HeadNotFoundError(
            f"No nn.Linear of {type(model).__name__} produces its {logits_key!r} "
            f"(shape {tuple(logits.shape)}); checked {len(outputs)} Linear layers.{why} D_LR reads the input "
            "of the final linear layer, so the logits must come from an nn.Linear. To measure anyway, "
            "pass layer=<path of an nn.Linear> for layer-wise D_LR (features = that layer's input, "
            f"outputs = the logits); Linear layers run last: {', '.join(ran) or 'none'}."
        )
    paths, selection = found
    modules = dict(model.named_modules())
    module = modules[paths[0]]
    get_output_embeddings = getattr(model, "get_output_embeddings", None)
    is_lm_head = callable(get_output_embeddings) and get_output_embeddings() is module
    notices += _structure_notices(modules, paths, selection)
    for notice in notices:
        logger.warning("Head of %s: %s", type(model).__name__, notice)
    return HeadInfo(
        module_path=paths[0],
        module=module,
        selection=selection,
        feature_dim=sum(modules[p].in_features for p in paths),
        num_outputs=module.out_features,
        between=_describe_between(model, call_order, paths[-1], selection),
        logits_key=logits_key,
        notices=tuple(notices),
        averaged=tuple((p, modules[p]) for p in paths) if len(paths) > 1 else (),
        positions=kept_positions(model, is_lm_head, probe_batch)[2] if selection == "per_position" else None,
    )


def _structure_notices(modules: dict[str, nn.Module], paths: tuple[str, ...], selection: Selection) -> list[str]:
    """Caveats that follow from the head's structure: averaged heads, choices, wrappers, quantization."""
    notices: list[str] = []
    if len(paths) > 1:
        notices.append(
            f"the logits are the average of the outputs of {paths[0]!r} and {paths[1]!r} (e.g. DeiT's class "
            "and distillation heads): the features are their two inputs side by side "
            f"(p = {sum(modules[p].in_features for p in paths)}) and the head is W = ½[W₁ W₂], bias ½(b₁ + b₂)"
        )
    if selection == "per_choice":
        notices.append(
            "multiple choice: each example × choice is one sample with one output (C = 1); the label (the "
            "correct choice) is not a class of that output, so accuracy and NC1 are not computed"
        )
    for path in paths:
        notices += _wrapper_notices(modules, path) + _quantization_notices(path, modules[path])
    return notices


def _logits_only(
    model: nn.Module, probe_batch: Mapping[str, Any], logits: torch.Tensor, logits_key: str, layer: str
) -> HeadInfo:
    """No head, but layer-wise D_LR needs none: its outputs are the final logits."""
    selection: Selection = "pooled" if logits.ndim == 2 else "per_position"
    tapped = dict(model.named_modules()).get(layer)
    notice = (
        f"no nn.Linear of {type(model).__name__} produces its {logits_key!r}, so D_LR is layer-wise only: "
        f"features = the input of {layer!r}, outputs = the final logits"
    )
    logger.warning(notice)
    return HeadInfo(
        module_path=None,
        module=None,
        selection=selection,
        feature_dim=getattr(tapped, "in_features", getattr(tapped, "nx", 0)),
        num_outputs=logits.shape[-1],
        between=f"no linear head makes the logits; layer-wise D_LR reads {layer!r}",
        logits_key=logits_key,
        notices=(notice,),
        positions=kept_positions(model, False, probe_batch)[2] if selection == "per_position" else None,
    )


def _averaged_pair(
    last_first: list[str], outputs: dict[str, torch.Tensor], logits: torch.Tensor
) -> tuple[str, str] | None:
    """Two Linear layers whose outputs, averaged, are the logits (in the order they ran)."""
    shaped = [p for p in last_first if outputs[p].shape == logits.shape][:_MAX_AVERAGED][::-1]
    for i, first in enumerate(shaped):
        for second in shaped[i + 1 :]:
            mean = (outputs[first].to(logits.device, torch.float32) + outputs[second].to(logits.device, torch.float32)) / 2
            if outputs_match(mean, logits):
                return first, second
    return None


def _fallback_head(
    model: nn.Module, outputs: dict[str, torch.Tensor], logits: torch.Tensor
) -> tuple[tuple[str, Selection, str] | None, list[str]]:
    """A head found by name whose output maps to the logits by a documented monotone map.

    Returns (path, selection, notice) or None, and the named candidates of the logits' shape that
    were rejected because no such map reproduces the logits (e.g. an auxiliary classifier).
    """
    modules = dict(model.named_modules())
    get_output_embeddings = getattr(model, "get_output_embeddings", None)
    output_embeddings = get_output_embeddings() if callable(get_output_embeddings) else None
    names = [p for p, m in modules.items() if m is output_embeddings] + list(FALLBACK_HEAD_NAMES)
    rejected: list[str] = []
    for path in dict.fromkeys(names):
        module = modules.get(path)
        if not (
            isinstance(module, nn.Linear)
            and path in outputs
            and outputs[path].shape == logits.shape
            and logits.ndim in (2, 3)
        ):
            continue
        notice = _documented_map(outputs[path], logits, path)
        if notice is None:
            rejected.append(path)
            continue
        return (path, "pooled" if logits.ndim == 2 else "per_position", notice), rejected
    return None, rejected


def _close(x: torch.Tensor, target: torch.Tensor, dtype: torch.dtype) -> bool:
    """Equal up to the round-off of the model's dtype (x, target in float64)."""
    rtol = max(1e-5, 8 * torch.finfo(dtype).eps) if dtype.is_floating_point else 1e-5
    atol = rtol * float(target.abs().max().clamp_min(1e-30))
    return torch.allclose(x, target, rtol=rtol, atol=atol)


def _documented_map(head_out: torch.Tensor, logits: torch.Tensor, path: str) -> str | None:
    """The notice saying how the logits follow from the output of head `path` by a documented monotone map, or None.

    The maps: a per-class offset (BART's final_logits_bias), a positive logit scale (Cohere,
    Granite), soft-capping ``cap·tanh(x/cap)`` (Gemma 2). Each is checked on every element, and
    needs at least two rows / elements to be told apart from chance.
    """
    a, y = head_out.to(logits.device, torch.float64), logits.to(torch.float64)
    if a.numel() < 2 or not (torch.isfinite(a).all() and torch.isfinite(y).all()):
        return None
    rows = y.reshape(-1, y.shape[-1])
    if rows.shape[0] >= 2:
        offset = (rows - a.reshape(rows.shape)).mean(dim=0)
        if _close(a + offset, y, logits.dtype):
            return (
                f"a constant per-class offset (e.g. final_logits_bias) is added to the output of {path!r} to make "
                "the logits; D_LR uses the head's own output, and the offset cancels when outputs are centred"
            )
    norm = float((a * a).sum())
    if norm > 0:
        scale = float((a * y).sum()) / norm
        if scale > 0 and _close(scale * a, y, logits.dtype):
            return (
                f"the logits are the output of {path!r} times {scale:.6g} (a logit scale); D_LR uses the head's "
                "own output, and a scale does not change D_LR"
            )
    cap = _soft_cap(a, y)
    if cap is not None and _close(cap * torch.tanh(a / cap), y, logits.dtype):
        return (
            f"the logits are soft-capped, {cap:.6g}·tanh(x / {cap:.6g}) of the output x of {path!r}; D_LR uses "
            "the head's own output, before the cap (SPEC §1)"
        )
    return None


def _soft_cap(a: torch.Tensor, y: torch.Tensor) -> float | None:
    """The cap c with y = c·tanh(a/c) at the largest |a| (c·tanh(x/c) grows with c), or None."""
    index = int(a.abs().flatten().argmax())
    x = float(a.flatten()[index].abs())
    t = float(y.flatten()[index]) * (1.0 if float(a.flatten()[index]) >= 0 else -1.0)
    if not 0 < t < x:
        return None
    low, high = t, 2 * t
    while high * math.tanh(x / high) < t:  # ends: c·tanh(x/c) -> x > t as c grows
        high *= 2
    for _ in range(200):
        middle = (low + high) / 2
        low, high = (middle, high) if middle * math.tanh(x / middle) < t else (low, middle)
    return (low + high) / 2


def _wrapper_notices(modules: dict[str, nn.Module], path: str) -> list[str]:
    """A notice when the head sits inside a wrapper (PEFT ModulesToSaveWrapper and the like) or carries a LoRA."""
    if is_lora_layer(modules[path]):
        return [
            f"the head {path!r} carries a LoRA adapter: D_LR reads its input, and its weight is the effective "
            "W0 + (B @ A)·scaling (read without merging the adapter)"
        ]
    parts = path.split(".")
    for i in range(len(parts) - 1, 0, -1):
        ancestor = ".".join(parts[:i])
        name = type(modules[ancestor]).__name__
        if name.endswith("Wrapper") or parts[i] in ("modules_to_save", "base_layer", "original_module"):
            return [
                f"the head {path!r} sits inside {name} ({ancestor!r}); D_LR reads this inner Linear's input "
                "and output, which are what the logits come from"
            ]
    return []


def _quantized_kind(module: nn.Module) -> str:
    weight = getattr(module, "weight", None)
    names = (type(module).__name__, type(weight).__name__)
    return next((n for n in names if n in _QUANTIZED_CLASSES), f"{type(module).__name__} with {getattr(weight, 'dtype', None)} weight")


def _quantization_notices(path: str, module: nn.Module) -> list[str]:
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.is_floating_point():
        return []
    return [
        f"the head {path!r} is quantized ({_quantized_kind(module)}); D_LR's head-weight path uses its weight "
        "dequantized to floats, which differs from the quantized forward by its rounding"
    ]


def read_head_weight(head: HeadInfo) -> torch.Tensor:
    """The head's weight W (C, p) as floats, detached, loaded even when accelerate offloads it.

    Averaged heads (DeiT) give W = [W₁ W₂] / 2, matching their inputs side by side. A quantized
    (bitsandbytes) head is dequantized when its format allows (int8 with a per-row scale), and
    refused with a typed error otherwise.
    """
    if not head.linears:
        raise HeadNotFoundError(
            "No linear head makes this model's logits, so D_LR's head weight does not exist; measure "
            "layer-wise instead (layer=<path of an nn.Linear>), whose outputs are the logits themselves."
        )
    weights = [_float_weight(path, module) for path, module in head.linears]
    if len(weights) == 1:
        return weights[0]
    return torch.cat([w.to(weights[0].device) for w in weights], dim=1) / len(weights)


def _float_weight(path: str, module: nn.Linear) -> torch.Tensor:
    with align_module_device(module):
        weight = effective_weight(module) if is_lora_layer(module) else module.weight.detach()
        if weight.device.type == "meta":
            raise WeightsUnavailableError(
                f"The weight of head {path!r} is on the 'meta' device and no accelerate hook "
                "can load it. Load the model with real weights (or with device_map/offloading via "
                "accelerate) before measuring."
            )
        if weight.is_floating_point():
            return weight
        return _dequantized(path, module, weight)


def _dequantized(path: str, module: nn.Linear, weight: torch.Tensor) -> torch.Tensor:
    """bitsandbytes int8 (LLM.int8): W = W_int8 · SCB / 127 per output row; anything else is refused."""
    scale = getattr(module.weight, "SCB", None)
    if scale is None:
        scale = getattr(getattr(module, "state", None), "SCB", None)
    if weight.dtype == torch.int8 and isinstance(scale, torch.Tensor) and scale.numel() == weight.shape[0]:
        return weight.float() * (scale.to(weight.device, torch.float32).reshape(-1, 1) / 127)
    leaf = path.rsplit(".", 1)[-1]
    raise WeightsUnavailableError(
        f"The head {path!r} is quantized ({_quantized_kind(module)}) and its weight cannot be dequantized "
        "here (only int8 weights with a per-row SCB scale can). Load the model with the head left "
        f"unquantized, e.g. BitsAndBytesConfig(..., llm_int8_skip_modules=[{leaf!r}]), or pass "
        f"layer={path!r} for layer-wise D_LR, which needs no head weight."
    )
