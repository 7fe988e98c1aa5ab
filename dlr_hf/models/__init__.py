"""Model adapters: find the final linear layer of a (Hugging Face) model and tap its input.

``locate_head`` identifies the nn.Linear that produces the logits with one probe forward;
``FeatureTap`` collects (features, outputs, labels) samples from ordinary forwards, in head or
layer-wise mode; ``read_head_weight`` reads the head's weight even when accelerate offloads it.
``blocks`` lists the layers of a richness profile and taps a block's output. ``positions`` holds the batch keys that say which token positions are samples.
"""

from dlr_hf.models.blocks import BLOCKS, BlockTap, ProfileLayer, find_blocks, profile_layers, profile_tap
from dlr_hf.models.head import (
    HeadInfo,
    is_multiple_choice,
    locate_head,
    read_head_weight,
    relocate,
    require_head,
)
from dlr_hf.models.positions import CONTENT_TOKENS, LABELLED_TOKENS, WORD_STARTS, model_inputs
from dlr_hf.models.tap import FeatureTap, Samples, find_linear_layer, is_linear_layer

__all__ = [
    "BLOCKS",
    "BlockTap",
    "ProfileLayer",
    "find_blocks",
    "profile_layers",
    "profile_tap",
    "CONTENT_TOKENS",
    "WORD_STARTS",
    "find_linear_layer",
    "is_linear_layer",
    "LABELLED_TOKENS",
    "FeatureTap",
    "HeadInfo",
    "Samples",
    "is_multiple_choice",
    "locate_head",
    "model_inputs",
    "read_head_weight",
    "relocate",
    "require_head",
]
