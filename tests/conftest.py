"""Test-wide settings: offline hub, no analytics, deterministic CPU threads.

HF_HUB_OFFLINE and HF_DATASETS_OFFLINE are read at import time by huggingface_hub/datasets, so
they are set here, before any test module imports them.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
