"""Model adapters: find the final linear layer of a (Hugging Face) model and tap its input.

``locate_head`` identifies the nn.Linear that produces the logits with one probe forward;
``FeatureTap`` collects (features, outputs, labels) samples from ordinary forwards, in head or
layer-wise mode; ``read_head_weight`` reads the head's weight even when accelerate offloads it.
"""

from dlr_hf.models.head import HeadInfo, locate_head, read_head_weight
from dlr_hf.models.tap import FeatureTap, Samples

__all__ = ["FeatureTap", "HeadInfo", "Samples", "locate_head", "read_head_weight"]
