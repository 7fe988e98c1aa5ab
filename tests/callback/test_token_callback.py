"""DLRCallback on token classification: the same token positions as ``dlr_hf.evaluate``.

``evaluate()`` measures the first sub-token of each word (from the tokenizer's word ids). The Trainer's
batches carry no word ids; the standard preprocessing (``tokenize_and_align_labels`` of the
transformers examples) labels exactly those positions and gives −100 to the other sub-tokens, the
special tokens and the padding, and the callback measures the labelled positions. The references are
``evaluate()`` of the saved checkpoint (and of the initial model) over the same word-level examples.
"""

from __future__ import annotations

import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from transformers import DataCollatorForTokenClassification, Trainer, TrainingArguments

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "engine"))
import engine_helpers as eh  # noqa: E402

from dlr_hf import DLRCallback, evaluate  # noqa: E402

LABELS, EVAL_BATCH = 5, 8
WORD_RULE = "first sub-token of each word (special tokens and padding excluded)"
VOCABULARY = eh.WORDS + ["mountaineering", "xylophones", "photosynthesis"]  # words of several sub-tokens


def words(n: int, seed: int) -> datasets.Dataset:
    """Sentences of 2–6 words with one tag per word (the CoNLL layout: tokens, ner_tags)."""
    rng = np.random.default_rng(seed)
    tokens = [[str(w) for w in rng.choice(VOCABULARY, size=int(rng.integers(2, 7)))] for _ in range(n)]
    tags = [[int(t) for t in rng.integers(0, LABELS, size=len(row))] for row in tokens]
    return datasets.Dataset.from_dict({"tokens": tokens, "ner_tags": tags})


def aligned(data: datasets.Dataset, tokenizer) -> datasets.Dataset:
    """The Trainer's rows: the first sub-token of each word labelled, −100 elsewhere (HF's recipe)."""

    def tokenize_and_align_labels(rows):
        encoding = tokenizer(rows["tokens"], is_split_into_words=True, truncation=True)
        labels = []
        for row, tags in enumerate(rows["ner_tags"]):
            previous, row_labels = None, []
            for word in encoding.word_ids(row):
                row_labels.append(-100 if word is None or word == previous else tags[word])
                previous = word
            labels.append(row_labels)
        encoding["labels"] = labels
        return encoding

    return data.map(tokenize_and_align_labels, batched=True, remove_columns=data.column_names)


def initial_model():
    return eh.tiny_bert_tokens(num_labels=LABELS, seed=0)  # (eval mode; the Trainer switches it)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    output = tmp_path_factory.mktemp("tokens")
    tokenizer = eh.minilm_tokenizer()
    train, evaluation = words(32, seed=1), words(20, seed=2)
    # every_n_steps: a probe pass over the same eval set (the default probe), through the probe's collate.
    callback = DLRCallback(every_n_steps=2, num_samples=None)
    args = TrainingArguments(
        output_dir=str(output), max_steps=2, per_device_train_batch_size=8, per_device_eval_batch_size=EVAL_BATCH,
        learning_rate=1e-2, eval_strategy="steps", eval_steps=2, save_strategy="steps", save_steps=2,
        use_cpu=True, report_to=[], seed=0,
    )
    torch.set_num_threads(1)
    trainer = Trainer(
        model=initial_model(), args=args, train_dataset=aligned(train, tokenizer),
        eval_dataset=aligned(evaluation, tokenizer), processing_class=tokenizer,
        data_collator=DataCollatorForTokenClassification(tokenizer), callbacks=[callback],
    )
    trainer.train()
    return trainer, callback, output, tokenizer, evaluation


def test_token_positions_are_those_of_evaluate(run):
    """eval_dlr (riding on the evaluation) and dlr (a probe pass) at step 2 equal evaluate() of the saved
    checkpoint on the same 20 sentences, which measures one sample per word."""
    trainer, callback, output, tokenizer, evaluation = run
    settings = {"processor": tokenizer, "num_samples": None, "batch_size": EVAL_BATCH, "progress": False}
    report = evaluate(str(output / "checkpoint-2"), evaluation, reference_model=initial_model(), **settings)
    assert report.head["positions"] == WORD_RULE
    assert report.result.num_samples == sum(len(row) for row in evaluation["tokens"])
    pieces = sum(len(tokenizer(row, is_split_into_words=True)["input_ids"]) - 2 for row in evaluation["tokens"])
    assert pieces > report.result.num_samples  # some words are split: every token would not be the same samples
    start = evaluate(initial_model(), evaluation, baselines=False, **settings)
    assert not callback.warnings
    for prefix in ("eval_", ""):
        (logged,) = [row for row in trainer.state.log_history if f"{prefix}dlr" in row]
        assert logged["step"] == 2
        assert logged[f"{prefix}dlr"] == pytest.approx(report.dlr, abs=1e-8)
        assert logged[f"{prefix}effective_rank"] == pytest.approx(report.baselines["effective_rank"], rel=1e-8)
        assert logged[f"{prefix}s_init"] == pytest.approx(report.baselines["s_init"], abs=1e-8)
        assert logged[f"{prefix}param_change"] == pytest.approx(report.baselines["param_change"], rel=1e-6)
        assert logged[f"{prefix}dlr_change"] == pytest.approx(report.dlr - start.dlr, abs=1e-8)
    assert callback.initial_dlr == {"eval_dlr": pytest.approx(start.dlr, abs=1e-8), "dlr": pytest.approx(start.dlr, abs=1e-8)}
