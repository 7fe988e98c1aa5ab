"""The built-in default: a rich and a lazy checkpoint trained on scikit-learn's digits, offline.

The same tiny ViT (8×8 images, 2×2 patches) is trained twice from the same initialisation:
"rich" with full back-propagation, "lazy" with only the final linear layer trained (features
frozen at initialisation) — the paper's rich-vs-lazy contrast, which D_LR tells apart whatever
the accuracies. Checkpoints are ordinary ``save_pretrained`` folders (model + image processor),
and the data is a ``save_to_disk`` DatasetDict, so every surface loads them by path.
"""

from __future__ import annotations

import os
from pathlib import Path

import datasets
import numpy as np
import torch
from PIL import Image
from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessorPil

DEMO_VERSION = "3"
SEED = 0


def cache_dir() -> Path:
    """Where the demo lives: ``$DLR_HF_CACHE`` or ``~/.cache/dlr-hf``."""
    return Path(os.environ.get("DLR_HF_CACHE", Path.home() / ".cache" / "dlr-hf")) / f"demo-v{DEMO_VERSION}"


def digits_dataset() -> datasets.DatasetDict:
    """scikit-learn's 1,797 handwritten digits as 8×8 grayscale images, split 80/20."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = [Image.fromarray((image * 255 / 16).astype(np.uint8), mode="L") for image in digits.images]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=[str(d) for d in range(10)])})
    full = datasets.Dataset.from_dict({"image": images, "label": digits.target.tolist()}, features=features)
    return full.train_test_split(test_size=0.2, seed=SEED, stratify_by_column="label")


def image_processor() -> ViTImageProcessorPil:
    return ViTImageProcessorPil(size={"height": 8, "width": 8}, image_mean=[0.5] * 3, image_std=[0.5] * 3)


def pixel_values(split: datasets.Dataset, processor: ViTImageProcessorPil | None = None) -> torch.Tensor:
    """A demo split's images as the ViT's input tensor (N, 3, 8, 8), preprocessed once."""
    processor = processor or image_processor()
    return processor(images=[image.convert("RGB") for image in split["image"]], return_tensors="pt")["pixel_values"]


def trainer_rows(split: datasets.Dataset) -> list[dict]:
    """A demo split as ``Trainer`` examples: ``{"pixel_values", "labels"}`` per row."""
    return [{"pixel_values": p, "labels": int(label)} for p, label in zip(pixel_values(split), split["label"])]


def tiny_vit(seed: int = SEED) -> ViTForImageClassification:
    torch.manual_seed(seed)
    config = ViTConfig(
        image_size=8, patch_size=2, num_channels=3, hidden_size=64, num_hidden_layers=2,
        num_attention_heads=4, intermediate_size=128, num_labels=10,
        id2label={i: str(i) for i in range(10)}, label2id={str(i): i for i in range(10)},
    )
    return ViTForImageClassification(config)


def train(model: ViTForImageClassification, pixels: torch.Tensor, labels: torch.Tensor, *, lazy: bool, epochs: int = 20) -> None:
    """Adam, batch 64; ``lazy`` trains the classifier alone (at a larger step, as a linear model)."""
    params = model.classifier.parameters() if lazy else model.parameters()
    optimiser = torch.optim.Adam(params, lr=1e-2 if lazy else 1e-3)
    generator = torch.Generator().manual_seed(SEED)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a model this small runs fastest, and deterministically, on one thread
    model.train()
    try:
        for _ in range(epochs):
            for batch in torch.randperm(len(labels), generator=generator).split(64):
                loss = model(pixel_values=pixels[batch], labels=labels[batch]).loss
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
    finally:
        model.eval()
        torch.set_num_threads(threads)


def ensure_demo(root: Path | None = None) -> dict[str, Path]:
    """Build (once) and return the demo's paths: ``data``, ``rich``, ``lazy``, ``initial``."""
    root = root or cache_dir()
    paths = {name: root / name for name in ("data", "initial", "rich", "lazy")}
    if all((path / "ready").exists() for path in paths.values()):
        return paths
    data = digits_dataset()
    processor = image_processor()
    pixels = pixel_values(data["train"], processor)
    labels = torch.tensor(data["train"]["label"])
    data.save_to_disk(str(paths["data"]))
    for name in ("initial", "rich", "lazy"):
        model = tiny_vit()
        if name != "initial":
            train(model, pixels, labels, lazy=name == "lazy")
        model.save_pretrained(paths[name])
        processor.save_pretrained(paths[name])
    for path in paths.values():
        (path / "ready").write_text(DEMO_VERSION)
    return paths
