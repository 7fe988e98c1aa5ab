"""Offloaded heads (accelerate), hook hygiene, and the errors of head discovery."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
import transformers as tf
from accelerate import cpu_offload
from torch import nn

import model_builders as mb
from dlr_hf.errors import HeadNotFoundError, ShapeMismatchError
from dlr_hf.models import FeatureTap, locate_head, read_head_weight


def forward_hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_read_head_weight_of_plain_model_is_the_weight() -> None:
    model, batch = mb.build("bert"), mb.text_batch()
    weight = read_head_weight(locate_head(model, batch))
    assert weight.shape == (3, 32) and not weight.requires_grad
    assert torch.equal(weight, model.classifier.weight)


def test_cpu_offloaded_head() -> None:
    reference, batch = mb.build("bert"), mb.text_batch()
    model = cpu_offload(mb.build("bert"), execution_device=torch.device("cpu"))
    assert model.classifier.weight.device.type == "meta"

    head = locate_head(model, batch)
    assert head.module_path == "classifier" and head.selection == "pooled"
    weight = read_head_weight(head)
    assert weight.device.type == "cpu" and torch.equal(weight, reference.classifier.weight)
    assert model.classifier.weight.device.type == "meta"  # offloaded again afterwards

    with torch.inference_mode(), FeatureTap(model, head) as tap:
        samples = tap.collect(batch, model(**batch))
    with torch.no_grad():
        expected = reference.bert(**batch).pooler_output
        logits = reference(**batch).logits
    torch.testing.assert_close(samples.features, expected)
    torch.testing.assert_close(samples.outputs, logits)
    torch.testing.assert_close(samples.outputs, samples.features @ weight.T + reference.classifier.bias)


def test_disk_offloaded_head_from_device_map(tmp_path) -> None:
    reference, batch = mb.build("llama"), mb.text_batch()
    reference.save_pretrained(tmp_path / "model")
    model = tf.AutoModelForSequenceClassification.from_pretrained(
        tmp_path / "model", device_map={"model": "cpu", "score": "disk"}, offload_folder=tmp_path / "offload"
    ).eval()
    assert model.score.weight.device.type == "meta"
    head = locate_head(model, batch)
    assert (head.module_path, head.selection) == ("score", "selected_position")
    weight = read_head_weight(head)
    assert torch.equal(weight, reference.score.weight)
    with torch.inference_mode(), FeatureTap(model, head) as tap:
        samples = tap.collect(batch, model(**batch))
    torch.testing.assert_close(samples.outputs, samples.features @ weight.T)
    with torch.no_grad():
        torch.testing.assert_close(samples.outputs, reference(**batch).logits)


def test_hooks_are_removed_and_captures_released() -> None:
    model, batch = mb.build("gpt2"), mb.text_batch()
    before = forward_hook_count(model)
    head = locate_head(model, batch)
    assert forward_hook_count(model) == before
    with FeatureTap(model, head, layer="transformer.h.0.mlp.c_fc") as tap:
        assert forward_hook_count(model) == before + 2  # the layer, and the head for its position
        with torch.inference_mode():
            out = model(**batch)
            tap.collect(batch, out)
            with pytest.raises(HeadNotFoundError, match="did not run"):  # nothing kept from the last batch
                tap.collect(batch, out)
    assert forward_hook_count(model) == before
    with pytest.raises(RuntimeError), FeatureTap(model, head):
        raise RuntimeError("a failing batch")
    assert forward_hook_count(model) == before


@dataclass
class Output:
    logits: torch.Tensor


class NoLinearLogits(nn.Module):
    """Logits from an explicit matrix product: there is an nn.Linear, but it does not make them."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Linear(8, 8)
        self.readout = nn.Parameter(torch.randn(3, 8))

    def forward(self, x: torch.Tensor) -> Output:
        return Output(logits=torch.relu(self.encoder(x)) @ self.readout.T)


class SoftCapped(nn.Module):
    """Gemma-style: logits = cap·tanh(classifier(h)/cap), so no Linear output equals them."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.body = nn.Linear(8, 8)
        self.classifier = nn.Linear(8, classes)

    def forward(self, x: torch.Tensor) -> Output:
        return Output(logits=5.0 * torch.tanh(self.classifier(torch.relu(self.body(x))) / 5.0))


def test_logits_not_from_a_linear_raise_with_a_fix() -> None:
    torch.manual_seed(0)
    with pytest.raises(HeadNotFoundError, match=r"layer=.*encoder"):
        locate_head(NoLinearLogits(), {"x": torch.randn(4, 8)})


def test_soft_capped_head_found_by_name_gives_pre_cap_outputs() -> None:
    torch.manual_seed(0)
    model, batch = SoftCapped().eval(), {"x": 3 * torch.randn(6, 8)}
    head = locate_head(model, batch)
    assert (head.module_path, head.selection, head.num_outputs) == ("classifier", "pooled", 3)
    with torch.inference_mode(), FeatureTap(model, head) as tap:
        out = model(**batch)
        samples = tap.collect(batch, out)
    with torch.no_grad():
        pre_cap = model.classifier(torch.relu(model.body(batch["x"])))
    torch.testing.assert_close(samples.outputs, pre_cap)
    assert not torch.allclose(samples.outputs, out.logits)
    assert len(head.notices) == 1 and "soft-capped, 5·tanh(x / 5)" in head.notices[0]


def test_name_fallback_requires_matching_width() -> None:
    class Mismatch(SoftCapped):
        def forward(self, x: torch.Tensor) -> Output:
            return Output(logits=torch.tanh(self.classifier(self.body(x)))[:, :2])

    with pytest.raises(HeadNotFoundError):
        locate_head(Mismatch().eval(), {"x": torch.randn(4, 8)})


class ReusesBuffer(nn.Module):
    """Modifies the head's input in place after the head ran (buffer reuse, in-place residuals)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(8, 8)
        self.classifier = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> Output:
        hidden = torch.relu(self.body(x))
        logits = self.classifier(hidden)
        hidden.zero_()
        return Output(logits=logits)


def test_features_are_not_altered_by_later_in_place_ops() -> None:
    torch.manual_seed(0)
    model, batch = ReusesBuffer().eval(), {"x": torch.randn(5, 8)}
    head = locate_head(model, batch)
    with torch.inference_mode(), FeatureTap(model, head) as tap:
        samples = tap.collect(batch, model(**batch))
    with torch.no_grad():
        torch.testing.assert_close(samples.features, torch.relu(model.body(batch["x"])))
    assert samples.features.abs().sum() > 0


def test_per_position_mask_must_match_positions() -> None:
    model, batch = mb.build("gpt2-lm"), mb.text_batch()
    head = locate_head(model, batch)
    with torch.inference_mode(), FeatureTap(model, head) as tap:
        out = model(**batch)
        with pytest.raises(ShapeMismatchError, match="attention_mask"):
            tap.collect({"attention_mask": batch["attention_mask"][:, :5]}, out)


class DictScores(nn.Module):
    """Returns a plain dict whose logits live under another key."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(8, 8)
        self.out = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"scores": self.out(torch.relu(self.body(x)))}


def test_logits_under_another_key() -> None:
    torch.manual_seed(0)
    model, batch = DictScores().eval(), {"x": torch.randn(5, 8)}
    with pytest.raises(HeadNotFoundError, match="no tensor 'logits'"):
        locate_head(model, batch)
    head = locate_head(model, batch, logits_key="scores")
    assert (head.module_path, head.logits_key) == ("out", "scores")
    assert head.between.startswith("body (Linear)")
    with torch.inference_mode(), FeatureTap(model, head) as tap:
        out = model(**batch)
        samples = tap.collect(batch, out)
    torch.testing.assert_close(samples.outputs, out["scores"])
