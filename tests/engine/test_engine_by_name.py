"""Loading a model and a dataset BY NAME, offline, through the real from_pretrained / load_dataset.

HF_HUB_CACHE, HF_DATASETS_CACHE and the offline flags are read when huggingface_hub / datasets are
imported, so the end-to-end check runs the CLI in a fresh process with that environment.
"""

from __future__ import annotations

import json

import huggingface_hub.constants
import pytest

import engine_helpers as eh
from dlr_hf.engine import evaluate
from dlr_hf.errors import DatasetLoadError, ModelLoadError


def test_cli_loads_model_and_dataset_by_name(hub, tmp_path, tokenizer):
    output = tmp_path / "report.json"
    done = eh.run_cli(
        ["evaluate", hub.model_id, "--dataset", hub.dataset_id, "--num-samples", "all", "--batch-size", "8",
         "--output", str(output), "--quiet"],
        env=hub.env(),
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(output.read_text())
    assert report["model"]["id"] == hub.model_id
    assert report["model"]["commit"] == hub.commit
    assert report["model"]["path"] is None
    assert report["model"]["class"] == "BertForSequenceClassification"
    assert report["dataset"]["id"] == hub.dataset_id
    assert report["dataset"]["split"] == "test"  # preferred over train
    assert report["dataset"]["num_examples"] == report["result"]["num_samples"] == 20
    assert report["dataset"]["input_columns"] == ["text"] and report["dataset"]["label_column"] == "label"
    assert not any("preprocessor" in w for w in report["warnings"])  # the tokenizer came from the snapshot
    # Same weights and rows in memory give the same number: what was loaded is what was saved.
    in_memory = evaluate(eh.tiny_bert(), hub.data["test"], processor=tokenizer, num_samples=None, batch_size=8, progress=False)
    assert abs(report["dlr"] - in_memory.dlr) <= 1e-10
    assert f"@ {hub.commit[:10]}" in done.stdout


def test_dataset_config_split_and_revision_by_name(hub, monkeypatch):
    """In process, with the caches patched in: the cached config named explicitly, --split train, revision main."""
    import datasets.config

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub.hub_cache))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", hub.datasets_cache)
    report = evaluate(hub.model_id, hub.dataset_id, dataset_config="default", split="train", revision="main", progress=False)
    assert (report.dataset["config"], report.dataset["split"], report.dataset["num_examples"]) == ("default", "train", 8)
    assert report.model["commit"] == hub.commit and report.model["revision"] == "main"


def test_unknown_revision_of_a_cached_model(hub, monkeypatch):
    """The model is in the cache, the revision is not: a ModelLoadError naming the revision."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub.hub_cache))
    with pytest.raises(ModelLoadError, match="revision 'v9.9'"):
        evaluate(hub.model_id, hub.data["test"], revision="v9.9", progress=False)
    # Control: the same cache and id load at the cached revision (so the failure above is the revision).
    report = evaluate(hub.model_id, hub.data["test"], revision=hub.commit, num_samples=4, batch_size=4, progress=False)
    assert report.model["commit"] == hub.commit and report.result.num_samples == 4


def test_unknown_dataset_config_by_name(hub, monkeypatch):
    import datasets.config

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", hub.datasets_cache)
    with pytest.raises(DatasetLoadError, match="config 'nope'"):
        evaluate(eh.tiny_bert(), hub.dataset_id, dataset_config="nope", progress=False)
