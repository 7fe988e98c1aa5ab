"""PEFT adapters through ``evaluate()``: by path, by name through the offline Hub cache, in memory.

A tiny BERT base is saved, a LoRA adapter (query/value, trained classifier copy) is made by peft
on a copy of it and saved. D_LR is checked against the pooler output computed by hand, S_init
against the base loaded on its own, ``param_change`` against peft's own merge of a copy.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

import huggingface_hub.constants
import peft
import pytest
import torch
import transformers as tf

import engine_helpers as eh
from dlr_hf.engine import evaluate
from dlr_hf.errors import ModelLoadError
from dlr_hf.metric import compute_dlr

BASE_ID, ADAPTER_ID, ORPHAN_ID, PICKLED_ID = "org/tiny-base", "org/tiny-lora", "org/orphan-lora", "org/pickled-lora"
LOCAL_BASE_ID = "org/local-base-lora"
BASE_COMMIT = "1" * 40
ADAPTER_COMMIT = "2" * 40


@dataclass
class Adapters:
    base_dir: Path
    adapter_dir: Path
    adapted: peft.PeftModel
    hub_cache: Path
    data: object


def _adapted(base: tf.BertForSequenceClassification) -> peft.PeftModel:
    """LoRA on the attention, the classifier trained as a copy; B factors and copy moved as training would."""
    adapted = peft.get_peft_model(base, peft.LoraConfig(task_type="SEQ_CLS", r=4, target_modules=["query", "value"]))
    torch.manual_seed(7)
    with torch.no_grad():
        for name, parameter in adapted.named_parameters():
            if "lora_B" in name or "modules_to_save" in name:
                parameter.add_(0.3 * torch.randn_like(parameter))
    return adapted.eval()


def _save_adapter(adapted: peft.PeftModel, folder: Path, base: str, **save: object) -> Path:
    adapted.peft_config["default"].base_model_name_or_path = base
    adapted.save_pretrained(folder, **save)
    return folder


def _cache_adapter(hub_cache: Path, repo_id: str, commit: str, adapted: peft.PeftModel, base: str, **save: object) -> None:
    repo = hub_cache / ("models--" + repo_id.replace("/", "--"))
    _save_adapter(adapted, repo / "snapshots" / commit, base, **save)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)


@pytest.fixture(scope="module")
def adapters(tmp_path_factory: pytest.TempPathFactory, tokenizer) -> Adapters:
    root = tmp_path_factory.mktemp("peft")
    base_dir = root / "base"
    eh.tiny_bert().save_pretrained(base_dir)
    tokenizer.save_pretrained(base_dir)  # the adapter folder has no tokenizer: the base's is used
    adapted = _adapted(tf.BertForSequenceClassification.from_pretrained(base_dir))
    adapter_dir = _save_adapter(adapted, root / "adapter", str(base_dir))
    hub_cache = root / "hub"
    eh.save_hub_model(hub_cache, BASE_ID, BASE_COMMIT, eh.tiny_bert(), tokenizer)
    _cache_adapter(hub_cache, ADAPTER_ID, ADAPTER_COMMIT, adapted, BASE_ID)
    _cache_adapter(hub_cache, ORPHAN_ID, ADAPTER_COMMIT, adapted, "org/not-cached")
    _cache_adapter(hub_cache, PICKLED_ID, ADAPTER_COMMIT, adapted, BASE_ID, safe_serialization=False)
    _cache_adapter(hub_cache, LOCAL_BASE_ID, ADAPTER_COMMIT, adapted, str(base_dir))
    adapted.peft_config["default"].base_model_name_or_path = str(base_dir)
    return Adapters(base_dir, adapter_dir, adapted, hub_cache, eh.text_dataset(24, seed=3))


def _by_hand(adapters: Adapters, tokenizer) -> dict[str, float]:
    """D_LR, S_init and param_change from the pooler outputs of the adapted and the separately loaded base."""
    texts = list(adapters.data["text"])
    batch = dict(tokenizer(texts, padding=True, truncation=True, return_tensors="pt"))
    adapted = adapters.adapted
    base = tf.BertForSequenceClassification.from_pretrained(adapters.base_dir).eval()
    with torch.no_grad():
        features = adapted.base_model.model.bert(**batch).pooler_output.double()
        base_features = base.bert(**batch).pooler_output.double()
        logits = adapted(**batch).logits.double()
        trained = adapted.base_model.model.classifier.modules_to_save["default"]
        hand_logits = features @ trained.weight.double().T + trained.bias.double()
    assert torch.allclose(hand_logits, logits, atol=1e-5)  # the pooler output is the effective head's input
    f, b = features - features.mean(0), base_features - base_features.mean(0)
    merged = dict(copy.deepcopy(adapted).merge_and_unload().named_parameters())
    change = sum(float((merged[n].double() - p.double()).pow(2).sum()) for n, p in base.named_parameters())
    norm = sum(float(p.double().pow(2).sum()) for p in base.parameters())
    return {
        "dlr": compute_dlr(features, hand_logits).dlr,
        "s_init": float((b.T @ f).norm() ** 2 / ((b.T @ b).norm() * (f.T @ f).norm())),
        "param_change": (change / norm) ** 0.5,
    }


def test_adapter_by_path(adapters, tokenizer):
    report = evaluate(str(adapters.adapter_dir), adapters.data, num_samples=None, batch_size=24, progress=False)
    hand = _by_hand(adapters, tokenizer)
    assert report.dlr == pytest.approx(hand["dlr"], abs=1e-7)
    assert report.baselines["s_init"] == pytest.approx(hand["s_init"], abs=1e-7)
    assert hand["s_init"] < 0.999  # the adapter moved the features away from the base's
    assert report.baselines["param_change"] == pytest.approx(hand["param_change"], rel=1e-9)
    model = report.model
    assert model["class"] == "PeftModelForSequenceClassification"
    assert model["adapter"]["path"] == str(adapters.adapter_dir.resolve()) == model["path"]
    assert (model["adapter"]["peft_type"], model["adapter"]["r"]) == ("LORA", 4)
    assert model["base"]["path"] == str(adapters.base_dir.resolve())
    assert model["base"]["class"] == "BertForSequenceClassification"
    assert report.head["module_path"] == "base_model.model.classifier.modules_to_save.default"
    assert not any("preprocessor" in warning for warning in report.warnings)  # found in the base folder


def test_adapter_by_name_offline(adapters, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(adapters.hub_cache))
    report = evaluate(ADAPTER_ID, adapters.data, num_samples=None, batch_size=24, progress=False)
    by_path = evaluate(str(adapters.adapter_dir), adapters.data, num_samples=None, batch_size=24, progress=False)
    assert report.dlr == pytest.approx(by_path.dlr, abs=1e-12)  # same base weights, same adapter
    assert report.baselines["s_init"] == pytest.approx(by_path.baselines["s_init"], abs=1e-12)
    assert (report.model["id"], report.model["commit"]) == (ADAPTER_ID, ADAPTER_COMMIT)
    assert (report.model["adapter"]["id"], report.model["adapter"]["commit"]) == (ADAPTER_ID, ADAPTER_COMMIT)
    assert (report.model["base"]["id"], report.model["base"]["commit"]) == (BASE_ID, BASE_COMMIT)
    assert json.loads(json.dumps(report.model)) == report.model  # JSON-ready


def test_adapter_in_memory(adapters, tokenizer):
    report = evaluate(adapters.adapted, adapters.data, processor=tokenizer, num_samples=None, batch_size=24, progress=False)
    hand = _by_hand(adapters, tokenizer)
    assert report.dlr == pytest.approx(hand["dlr"], abs=1e-7)
    assert report.baselines["s_init"] == pytest.approx(hand["s_init"], abs=1e-7)
    assert report.model["adapter"]["peft_type"] == "LORA"
    assert report.model["base"]["id"] == str(adapters.base_dir)


def test_adapter_whose_base_is_not_available_offline(adapters, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(adapters.hub_cache))
    with pytest.raises(ModelLoadError, match=r"adapter on the base model 'org/not-cached'.*hf download org/not-cached"):
        evaluate(ORPHAN_ID, adapters.data, progress=False)


def test_pickle_only_adapter_refused_when_safetensors_only(adapters, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(adapters.hub_cache))
    with pytest.raises(ModelLoadError, match="no adapter_model.safetensors.*--allow-pickle"):
        evaluate(PICKLED_ID, adapters.data, safetensors_only=True, progress=False)


def test_hub_adapter_naming_a_local_base_is_refused(adapters, monkeypatch):
    """A Hub adapter must not make the app load a folder of the server it runs on."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(adapters.hub_cache))
    with pytest.raises(ModelLoadError, match="names a base on this machine.*only load a Hub base"):
        evaluate(LOCAL_BASE_ID, adapters.data, progress=False)
