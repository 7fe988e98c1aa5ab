"""String labels: mapped through the model's ``config.label2id`` (any case), else skipped with a warning."""

from __future__ import annotations

import datasets
import pytest

import engine_helpers as eh
from dlr_hf.engine import evaluate

NAMES = {"Negative": 0, "Neutral": 1, "Positive": 2}


def named_bert():
    model = eh.tiny_bert(num_labels=3)
    model.config.label2id = dict(NAMES)
    model.config.id2label = {index: name for name, index in NAMES.items()}
    return model


def run(model, data, tokenizer, **kwargs):
    return evaluate(model, data, processor=tokenizer, num_samples=None, batch_size=8, progress=False, **kwargs)


def test_class_names_in_any_case_give_the_class_id_results(tokenizer):
    ids = eh.text_dataset(12)
    spelled = [["negative", "NEUTRAL", "Positive"][label] for label in ids["label"]]
    named = datasets.Dataset.from_dict({"text": ids["text"], "label": spelled})
    expected = run(named_bert(), ids, tokenizer)
    report = run(named_bert(), named, tokenizer)
    assert report.dataset["label_column"] == "label"
    assert report.result.accuracy == expected.result.accuracy is not None
    assert report.result.nc1 == pytest.approx(expected.result.nc1, rel=1e-12)
    assert report.result.class_counts == expected.result.class_counts == [4, 4, 4]


def test_unknown_string_labels_are_skipped_with_a_warning(tokenizer):
    ids = eh.text_dataset(12)
    moods = datasets.Dataset.from_dict({"text": ids["text"], "label": ["cheerful", "gloomy"] * 6})
    report = run(named_bert(), moods, tokenizer)
    assert report.dataset["label_column"] is None
    assert report.result.accuracy is None and report.result.nc1 is None
    assert report.dlr == pytest.approx(run(named_bert(), ids, tokenizer).dlr, abs=1e-12)  # D_LR never uses labels
    notice = "label column 'label' holds strings that are not the model's class names (config.label2id: Negative, Neutral, Positive)"
    assert any(warning.startswith(notice) and "accuracy, NC1 and Q(k) are skipped" in warning for warning in report.warnings)
    assert any(notice in warning for warning in report.to_dict()["warnings"])


def test_per_word_tag_names(tokenizer):
    tags = {"O": 0, "B-PER": 1, "I-PER": 2, "B-LOC": 3, "I-LOC": 4}
    model = eh.tiny_bert_tokens(num_labels=5)
    model.config.label2id = dict(tags)
    model.config.id2label = {index: name for name, index in tags.items()}
    words = [sentence.split() for sentence in eh.sentences(6, seed=3)]
    ids = [[(w + r) % 5 for w in range(len(row))] for r, row in enumerate(words)]
    names = [[list(tags)[tag].lower() for tag in row] for row in ids]
    expected = run(model, datasets.Dataset.from_dict({"tokens": words, "ner_tags": ids}), tokenizer)
    report = run(model, datasets.Dataset.from_dict({"tokens": words, "ner_tags": names}), tokenizer)
    assert report.dataset["label_column"] == "ner_tags"
    assert report.result.accuracy == expected.result.accuracy is not None
    assert report.result.class_counts == expected.result.class_counts
