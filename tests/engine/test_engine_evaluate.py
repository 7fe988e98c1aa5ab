"""``evaluate()`` against independent computations: features recomputed by hand from the model's
internals, fed to ``compute_dlr`` (the in-memory reference), must give the same D_LR (≤ 1e-10)."""

from __future__ import annotations

import json

import datasets
import pytest
import torch
import transformers as tf

import engine_helpers as eh
from dlr_hf.engine import SCHEMA, EvaluationReport, evaluate
from dlr_hf.engine.data import subsample_indices
from dlr_hf.metric import compute_dlr

# The engine's head-weight path drops feature directions below the float32 rounding floor, which
# the streamed-logits reference keeps: they may move D_LR by ~1e-9, far below any reading.
TOL = 1e-8


@pytest.fixture(scope="module")
def rich_vit(demo):
    return tf.ViTForImageClassification.from_pretrained(demo["rich"]).eval(), tf.AutoImageProcessor.from_pretrained(demo["rich"])


@pytest.fixture(scope="module")
def digits_test(demo) -> datasets.Dataset:
    return datasets.load_from_disk(str(demo["data"]))["test"]


@pytest.fixture(scope="module")
def demo_reports(demo):
    """Rich and lazy demo checkpoints, loaded by path, on the demo data loaded by path."""
    return {
        name: evaluate(str(demo[name]), str(demo["data"]), num_samples=None, batch_size=128, progress=False)
        for name in ("rich", "lazy")
    }


def vit_head_input(model: tf.ViTForImageClassification, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """What ViT's classifier reads: the final layernorm applied to the last encoder state, at [CLS]."""
    hidden = model.vit(**batch, output_hidden_states=True).hidden_states[-1]
    return model.vit.layernorm(hidden)[:, 0]


def test_vit_equals_hand_computed_features(rich_vit, digits_test):
    model, processor = rich_vit
    report = evaluate(model, digits_test, processor=processor, num_samples=None, batch_size=64, progress=False)

    rows = list(range(len(digits_test)))
    batches = [
        {"pixel_values": processor(images=[digits_test[i]["image"].convert("RGB") for i in chunk], return_tensors="pt")["pixel_values"]}
        for chunk in eh.chunks(rows, 64)
    ]
    features, logits = eh.hand_features(model, batches, vit_head_input)
    assert torch.allclose(eh.head_outputs(features, model.classifier), logits, atol=1e-5)  # Φ is what the head reads
    labels = torch.tensor(digits_test["label"])
    expected = compute_dlr(features, eh.head_outputs(features, model.classifier), labels=labels)

    assert abs(report.dlr - expected.dlr) <= TOL
    assert report.result.num_samples == len(digits_test) == 360
    assert (report.result.feature_dim, report.result.num_outputs) == (64, 10)
    assert report.head["module_path"] == "classifier" and report.head["selection"] == "pooled"
    assert report.baselines["accuracy"] == pytest.approx((logits.argmax(1) == labels).double().mean().item(), abs=1e-12)
    assert report.baselines["effective_rank"] == pytest.approx(expected.effective_rank, rel=1e-6)
    assert report.dataset["label_column"] == "label" and report.dataset["input_columns"] == ["image"]


def test_bert_text_equals_pooler_output(tokenizer):
    model = eh.tiny_bert()
    data = eh.text_dataset(44)
    report = evaluate(model, data, processor=tokenizer, num_samples=None, batch_size=8, progress=False)

    batches = [dict(tokenizer(chunk, padding=True, truncation=True, return_tensors="pt")) for chunk in eh.chunks(data["text"], 8)]
    features, logits = eh.hand_features(model, batches, lambda m, b: m.bert(**b).pooler_output)
    expected = compute_dlr(features, eh.head_outputs(features, model.classifier), labels=torch.tensor(data["label"]))

    assert abs(report.dlr - expected.dlr) <= TOL
    assert report.result.num_samples == 44
    assert report.dataset["input_columns"] == ["text"]
    assert "pooler" in report.head["between"]


def test_rich_demo_is_richer_than_lazy(demo_reports, demo):
    rich, lazy = demo_reports["rich"], demo_reports["lazy"]
    assert 0 <= rich.dlr < lazy.dlr <= 1
    # The paper's point, which the demo exists to show: richness decoupled from accuracy.
    assert lazy.dlr - rich.dlr >= 0.25
    assert abs(lazy.result.accuracy - rich.result.accuracy) <= 0.03
    for name, report in demo_reports.items():
        assert report.model["path"] == str(demo[name].resolve())
        assert report.model["commit"] is None  # a local folder has no Hub commit
        assert report.dataset["split"] == "test" and report.dataset["num_examples"] == 360
        assert report.result.num_samples == 360


def test_json_report_round_trip(demo_reports, tmp_path):
    report = demo_reports["rich"]
    text = report.to_json(tmp_path / "report.json")
    document = json.loads(text)
    assert json.loads((tmp_path / "report.json").read_text()) == json.loads(text)
    assert document["schema"] == SCHEMA
    assert document["dlr"] == report.dlr == document["result"]["dlr"]
    assert set(document) == {
        "schema", "dlr", "degenerate", "warnings", "model", "dataset", "head", "result",
        "baselines", "layers", "settings", "timings", "versions", "verdict", "initial", "measured",
    }
    assert document["layers"] == []  # no profile asked for
    again = EvaluationReport.from_dict(document)
    assert again.to_json() == text
    assert again.dlr == report.dlr and again.result.spectrum == report.result.spectrum
    with pytest.raises(ValueError, match="schema"):
        EvaluationReport.from_dict({**document, "schema": "something/else"})


def test_subsample_is_deterministic(rich_vit, digits_test):
    model, processor = rich_vit

    def run(seed: int, data: datasets.Dataset = digits_test, num_samples: int | None = 50) -> EvaluationReport:
        return evaluate(model, data, processor=processor, num_samples=num_samples, seed=seed, batch_size=16, progress=False)

    first, again, other = run(1), run(1), run(2)
    strip = lambda report: {k: v for k, v in report.to_dict().items() if k != "timings"}  # noqa: E731
    assert strip(first) == strip(again)
    assert first.result.num_samples == other.result.num_samples == 50

    chosen, chosen_other = subsample_indices(360, 50, 1), subsample_indices(360, 50, 2)
    assert chosen == subsample_indices(360, 50, 1) and chosen != chosen_other
    assert chosen == sorted(set(chosen)) and len(chosen) == 50
    # The report measures exactly those rows: the same rows selected by hand give the same D_LR.
    assert abs(run(0, digits_test.select(chosen), None).dlr - first.dlr) <= TOL
    assert abs(run(0, digits_test.select(chosen_other), None).dlr - other.dlr) <= TOL
    assert first.dlr != other.dlr
