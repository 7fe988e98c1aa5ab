"""Which positions of a per-position head count as samples, and the batch keys that say so; which
positions a pooled head reads when that is not the first token.

SPEC §1: labels are not used by D_LR, so the set of positions must not depend on whether labels are
present. A collate function that knows the tokenizer puts a boolean mask of the positions to keep in
the batch under one of ``POSITION_KEYS`` (the key names the rule); the model never sees it.

Pooled heads that read elsewhere than the first token follow the model's own rule: audio heads
average over the frames of non-padding samples (``frame_mask``), the Audio Spectrogram Transformer
over its first two tokens (``averaged_first_tokens``), encoder-decoder sequence classifiers read the
decoder's state at the last EOS token of ``input_ids`` (``eos_positions``).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

WORD_STARTS = "dlr_hf_word_starts"
CONTENT_TOKENS = "dlr_hf_content_tokens"
LABELLED_TOKENS = "dlr_hf_labelled_tokens"

POSITION_KEYS = {
    WORD_STARTS: "first sub-token of each word (special tokens and padding excluded)",
    CONTENT_TOKENS: "every non-padding, non-special token (the tokenizer gives no word ids)",
    LABELLED_TOKENS: "every labelled token (labels ≠ −100, padding excluded): the first sub-token of each word "
                     "under the standard Hugging Face preprocessing (a Trainer's batches carry no word ids)",
}

NOT_MODEL_INPUTS = ("labels", *POSITION_KEYS)
"""Batch entries that are not forward arguments: labels (no loss wanted) and the position masks."""


def model_inputs(batch: Mapping[str, Any]) -> dict[str, Any]:
    """The forward arguments of a batch: labels and position masks stay out."""
    return {key: value for key, value in batch.items() if key not in NOT_MODEL_INPUTS}


def kept_positions(
    model: nn.Module, is_lm_head: bool, inputs: Mapping[str, Any]
) -> tuple[str, torch.Tensor | None, str]:
    """(name of the mask, the mask or None for every position, the rule in words) for a per-position head.

    Token classification uses the collate's position mask when there is one; language-model heads
    predict at every non-padding position; the LM head of an encoder-decoder predicts on the decoder
    side, so the encoder's ``attention_mask`` does not apply to it (an encoder-only head such as
    T5ForTokenClassification's, whose config also says encoder-decoder, keeps the encoder's rules).
    """
    encoder_decoder = getattr(getattr(model, "config", None), "is_encoder_decoder", False)
    if "decoder_input_ids" in inputs or (encoder_decoder and is_lm_head):
        mask = inputs.get("decoder_attention_mask")
        if mask is None:
            return "decoder_attention_mask", None, "every decoder position (no decoder_attention_mask given)"
        return "decoder_attention_mask", mask, "every decoder position where decoder_attention_mask is 1"
    if not is_lm_head:
        for key, rule in POSITION_KEYS.items():
            if inputs.get(key) is not None:
                return key, inputs[key], rule
    mask = inputs.get("attention_mask")
    if mask is None:
        return "attention_mask", None, "every position (no attention_mask given)"
    return "attention_mask", mask, "every non-padding position (attention_mask)"


def frame_mask(model: nn.Module, mask: torch.Tensor | None, frames: int) -> torch.Tensor | None:
    """(B, frames) bool: the feature frames an audio model's pooled head averages over, or None.

    The ``attention_mask`` of a speech model (wav2vec2, HuBERT, WavLM, …) covers input samples, and
    its convolutional feature encoder turns them into fewer frames; the classification head averages
    over the first ``_get_feat_extract_output_lengths(non-padding samples)`` frames of each row
    (transformers' ``_get_feature_vector_attention_mask``), as here. None when the model has no such
    rule (Whisper averages over every frame), or when ``frames`` is not what the whole padded input
    makes (a layer of another length, e.g. after a downsampling adapter the length is tried with it).
    """
    lengths_of = getattr(model, "_get_feat_extract_output_lengths", None)
    if mask is None or mask.ndim != 2 or not callable(lengths_of) or not callable(
        getattr(model, "_get_feature_vector_attention_mask", None)
    ):
        return None
    options: list[dict[str, bool]] = [{}]
    if "add_adapter" in inspect.signature(lengths_of).parameters:
        options = [{"add_adapter": False}] + (
            [{"add_adapter": True}] if getattr(getattr(model, "config", None), "add_adapter", False) else []
        )
    for option in options:
        if int(lengths_of(torch.tensor([mask.shape[1]]), **option)[0]) == frames:
            lengths = lengths_of(mask.long().sum(dim=-1), **option).to(mask.device).long()
            return torch.arange(frames, device=mask.device)[None, :] < lengths[:, None]
    return None


AVERAGED_FIRST_TOKENS = {"ASTForAudioClassification": 2}
"""Pooled heads that average their first k tokens (the Audio Spectrogram Transformer's CLS and distillation
tokens: ``(h[:, 0] + h[:, 1]) / 2``), by model class."""


def averaged_first_tokens(model: nn.Module) -> int | None:
    """How many leading tokens the model's pooled head averages (``AVERAGED_FIRST_TOKENS``), or None."""
    return AVERAGED_FIRST_TOKENS.get(type(model).__name__)


def eos_positions(model: nn.Module, inputs: Mapping[str, Any], length: int) -> torch.Tensor | None:
    """Per row, the position an encoder-decoder sequence classifier reads, or None for other models.

    BART, mBART, T5, … ``ForSequenceClassification`` take the decoder's last hidden state at the last
    EOS token of ``input_ids`` (the decoder runs on ``input_ids`` shifted right, so positions align);
    ``length`` is the sequence length of the hidden state read there.
    """
    config = getattr(model, "config", None)
    eos = getattr(config, "eos_token_id", None)
    ids = inputs.get("input_ids")
    if not (
        getattr(config, "is_encoder_decoder", False)
        and type(model).__name__.endswith("ForSequenceClassification")
        and isinstance(eos, int)
        and isinstance(ids, torch.Tensor)
        and ids.ndim == 2
        and ids.shape[1] == length
    ):
        return None
    order = torch.arange(1, length + 1, device=ids.device)
    return (ids.eq(eos).long() * order).argmax(dim=1)  # the last EOS of each row
