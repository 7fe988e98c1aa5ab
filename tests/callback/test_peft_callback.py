"""DLRCallback on a LoRA fine-tune in ``transformers.Trainer``: the same keys, S_init against the base.

The base is a tiny BERT; LoRA sits on the attention's query/value projections and the classifier is
trained as a ``modules_to_save`` copy. The last logged values are checked against the probe's
pooler outputs computed by hand, the base's from a separately built copy (same seed, same weights),
and ``param_change`` against peft's own merge of a copy of the trained model.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import peft
import pytest
import torch
from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "engine"))
import engine_helpers as eh  # noqa: E402

from dlr_hf import DLRCallback  # noqa: E402
from dlr_hf.metric import compute_dlr  # noqa: E402


def _tokenized(data, tokenizer):
    return data.map(lambda rows: tokenizer(rows["text"], truncation=True, max_length=32), batched=True, remove_columns=["text"])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    tokenizer = eh.minilm_tokenizer()
    config = peft.LoraConfig(task_type="SEQ_CLS", r=4, target_modules=["query", "value"], modules_to_save=["classifier"])
    model = peft.get_peft_model(eh.tiny_bert(), config)
    probe = _tokenized(eh.text_dataset(24, seed=5), tokenizer)
    callback = DLRCallback()
    args = TrainingArguments(
        output_dir=str(tmp_path_factory.mktemp("lora")), max_steps=6, per_device_train_batch_size=8,
        per_device_eval_batch_size=8, learning_rate=2e-2, eval_strategy="steps", eval_steps=3, save_strategy="no",
        logging_steps=3, use_cpu=True, report_to=[], seed=0,
    )
    trainer = Trainer(
        model=model, args=args, train_dataset=_tokenized(eh.text_dataset(48, seed=4), tokenizer), eval_dataset=probe,
        data_collator=DataCollatorWithPadding(tokenizer), callbacks=[callback],
    )
    trainer.train()
    yield trainer, callback, probe, tokenizer
    torch.set_num_threads(threads)


def _hand(model: peft.PeftModel, probe, tokenizer) -> dict[str, float]:
    """D_LR, S_init against the base and param_change of the trained model on the probe, by hand."""
    batch = dict(tokenizer.pad({key: probe[key] for key in ("input_ids", "token_type_ids", "attention_mask")}, return_tensors="pt"))
    base = eh.tiny_bert()  # the frozen base: the same seed gives the same weights
    model.eval()
    with torch.no_grad():
        features = model.base_model.model.bert(**batch).pooler_output.double()
        base_features = base.bert(**batch).pooler_output.double()
        head = model.base_model.model.classifier.modules_to_save["default"]
        logits = features @ head.weight.double().T
    f, b = features - features.mean(0), base_features - base_features.mean(0)
    merged = dict(copy.deepcopy(model).merge_and_unload().named_parameters())
    change = sum(float((merged[n].double() - p.double()).pow(2).sum()) for n, p in base.named_parameters())
    norm = sum(float(p.double().pow(2).sum()) for p in base.parameters())
    return {
        "eval_dlr": compute_dlr(features, logits).dlr,
        "eval_s_init": float((b.T @ f).norm() ** 2 / ((b.T @ b).norm() * (f.T @ f).norm())),
        "eval_param_change": (change / norm) ** 0.5,
    }


def test_lora_run_logs_the_same_keys(trained):
    trainer, callback, _, _ = trained
    logged = [row for row in trainer.state.log_history if "eval_dlr" in row]
    assert [row["step"] for row in logged] == [3, 6]
    for row in logged:
        assert {"eval_dlr", "eval_dlr_rank", "eval_effective_rank", "eval_param_norm", "eval_param_change", "eval_s_init"} <= set(row)
    assert not callback.warnings


def test_last_values_equal_a_hand_computation_against_the_base(trained):
    trainer, _, probe, tokenizer = trained
    last = [row for row in trainer.state.log_history if "eval_dlr" in row][-1]
    hand = _hand(trainer.model, probe, tokenizer)
    assert last["eval_dlr"] == pytest.approx(hand["eval_dlr"], abs=1e-5)
    assert last["eval_s_init"] == pytest.approx(hand["eval_s_init"], abs=1e-5)
    assert last["eval_s_init"] < 0.9999  # LoRA moved the features
    assert last["eval_param_change"] == pytest.approx(hand["eval_param_change"], rel=1e-6)


def test_trainable_flags_survive_the_base_forwards(trained):
    trainer, _, _, _ = trained
    trainable = {name for name, p in trainer.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in name or "modules_to_save" in name for name in trainable)
    assert any("lora_A" in name for name in trainable) and any("modules_to_save" in name for name in trainable)
