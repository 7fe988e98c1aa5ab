"""The built-in default: a rich and a lazy checkpoint trained on scikit-learn's digits, offline.

The same tiny ViT (8×8 images, 2×2 patches) is trained twice from the same initialisation, to
show the paper's point — richness is not accuracy:

* "lazy": only the final linear layer is trained (features frozen at initialisation), to
  convergence on the cached features — a linear model of the initial features, ~82 % accurate;
* "rich": full back-propagation, stopped as soon as its test accuracy reaches the lazy model's
  (early stopping on the evaluation split: matching the accuracies is this demonstration's
  point), so the two are within a point or two of each other while their D_LR differ by ~0.5.

Checkpoints are ordinary ``save_pretrained`` folders (model + image processor), and the data is a
``save_to_disk`` DatasetDict, so every surface loads them by path. Built once (~15 s on one core),
cached under ``$DLR_HF_CACHE`` (default ``~/.cache/dlr-hf``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import datasets
import numpy as np
import torch
from PIL import Image
from torch import nn
from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessorPil

from dlr_hf.engine.progress import library_bars

logger = logging.getLogger(__name__)

DEMO_VERSION = "4"
SEED = 0
RICH_CHECK_EVERY = 4
"""Steps between the rich run's checks of its training accuracy against the lazy model's."""


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


@contextmanager
def _one_thread():
    """A model this small trains fastest, and deterministically, on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _accuracy(model: ViTForImageClassification, pixels: torch.Tensor, labels: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(pixel_values=pixels).logits.argmax(dim=1) == labels).float().mean())


def train_lazy(model: ViTForImageClassification, pixels: torch.Tensor, labels: torch.Tensor, steps: int = 6000) -> None:
    """The classifier alone, full batch, on features computed once (the body is frozen, so they are fixed)."""
    model.eval()
    captured: dict[str, torch.Tensor] = {}
    handle = model.classifier.register_forward_hook(lambda module, args, output: captured.update(features=args[0].detach()))
    with _one_thread(), torch.no_grad():
        model(pixel_values=pixels)
    handle.remove()
    optimiser = torch.optim.Adam(model.classifier.parameters(), lr=0.05)
    with _one_thread():
        for _ in range(steps):
            loss = nn.functional.cross_entropy(model.classifier(captured["features"]), labels)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()


def train_rich(
    model: ViTForImageClassification,
    pixels: torch.Tensor,
    labels: torch.Tensor,
    stop_when: Callable[[ViTForImageClassification], bool],
    max_epochs: int = 20,
) -> int:
    """Every parameter (Adam, batch 64) until ``stop_when(model)``, checked every few steps; returns the steps."""
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(SEED)
    steps = 0
    with _one_thread():
        for _ in range(max_epochs):
            for batch in torch.randperm(len(labels), generator=generator).split(64):
                model.train()
                loss = model(pixel_values=pixels[batch], labels=labels[batch]).loss
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
                steps += 1
                if steps % RICH_CHECK_EVERY == 0:
                    model.eval()
                    if stop_when(model):
                        return steps
    model.eval()
    return steps


def ensure_demo(root: Path | None = None, *, progress: bool = True) -> dict[str, Path]:
    """Build (once) and return the demo's paths: ``data``, ``rich``, ``lazy``, ``initial``.

    Public as ``dlr_hf.demo()``: ``paths = dlr_hf.demo(); dlr_hf.evaluate(paths["rich"], paths["data"])``.
    ``progress=False`` (``--quiet``) builds without the libraries' bars (datasets' save, transformers'
    weight writing); the one log line saying that the demo is being built stays.
    """
    root = root or cache_dir()
    paths = {name: root / name for name in ("data", "initial", "rich", "lazy")}
    if all((path / "ready").exists() for path in paths.values()):
        return paths
    logger.warning("dlr-hf: building the built-in demo (a rich and a lazy tiny ViT on digits) in %s, once (~15 s)", root)
    with library_bars(progress):
        _build(paths)
    return paths


def _build(paths: dict[str, Path]) -> None:
    """Train the three checkpoints and save them, with the data, where ``paths`` say; each folder gets ``ready``."""
    data = digits_dataset()
    processor = image_processor()
    pixels, labels = pixel_values(data["train"], processor), torch.tensor(data["train"]["label"])
    test_pixels, test_labels = pixel_values(data["test"], processor), torch.tensor(data["test"]["label"])
    data.save_to_disk(str(paths["data"]))
    models = {name: tiny_vit() for name in ("initial", "lazy", "rich")}
    train_lazy(models["lazy"], pixels, labels)
    with _one_thread():
        target = _accuracy(models["lazy"], test_pixels, test_labels)
    train_rich(models["rich"], pixels, labels, lambda model: _accuracy(model, test_pixels, test_labels) >= target)
    for name, model in models.items():
        model.save_pretrained(paths[name])
        processor.save_pretrained(paths[name])
    for path in paths.values():
        (path / "ready").write_text(DEMO_VERSION)


demo = ensure_demo
"""``dlr_hf.demo()``: the built-in checkpoints' paths (built offline on first use)."""
