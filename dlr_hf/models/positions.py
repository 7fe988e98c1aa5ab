"""Which positions of a per-position head count as samples, and the batch keys that say so.

SPEC §1: labels are not used by D_LR, so the set of positions must not depend on whether labels are
present. A collate function that knows the tokenizer puts a boolean mask of the positions to keep in
the batch under one of ``POSITION_KEYS`` (the key names the rule); the model never sees it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

WORD_STARTS = "dlr_hf_word_starts"
CONTENT_TOKENS = "dlr_hf_content_tokens"

POSITION_KEYS = {
    WORD_STARTS: "first sub-token of each word (special tokens and padding excluded)",
    CONTENT_TOKENS: "every non-padding, non-special token (the tokenizer gives no word ids)",
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
