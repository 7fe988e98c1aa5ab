"""Head discovery beyond a single Linear (issue #9): averaged, per-choice, decoder-side, quantized,
wrapped and missing heads, and the name fallback that accepts only documented maps.

Every check recomputes features by running the model's submodules by hand and the outputs as
Φ·Wᵀ + b from the parameters, independently of the tap.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
import transformers as tf
from torch import nn

import model_builders as mb
from dlr_hf.errors import HeadNotFoundError, WeightsUnavailableError
from dlr_hf.models import FeatureTap, HeadInfo, Samples, locate_head, read_head_weight


@dataclass
class Output:
    logits: torch.Tensor
    aux_logits: torch.Tensor | None = None


def tap_once(model: nn.Module, head: HeadInfo, batch: dict, layer: str | None = None, labels=None) -> tuple[Samples, object]:
    with torch.inference_mode(), FeatureTap(model, head, layer=layer) as tap:
        out = model(**batch)
        return tap.collect(batch, out, labels=labels), out


# --- the name fallback --------------------------------------------------------------------------------
class AuxiliaryClassifier(nn.Module):
    """The logits come from a matrix product; `classifier` is an auxiliary head of the very same shape."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(8, 8)
        self.classifier = nn.Linear(8, 3)
        self.readout = nn.Parameter(torch.randn(3, 8))

    def forward(self, x: torch.Tensor) -> Output:
        hidden = torch.relu(self.body(x))
        return Output(logits=hidden @ self.readout.T, aux_logits=self.classifier(hidden))


def test_same_shaped_auxiliary_classifier_is_not_taken_for_the_head() -> None:
    torch.manual_seed(0)
    model, batch = AuxiliaryClassifier().eval(), {"x": torch.randn(6, 8)}
    with pytest.raises(HeadNotFoundError, match=r"'classifier' has the logits' shape, but its output is not the logits"):
        locate_head(model, batch)


def test_layer_wise_works_when_no_head_makes_the_logits() -> None:
    torch.manual_seed(0)
    model, batch = AuxiliaryClassifier().eval(), {"x": torch.randn(6, 8)}
    head = locate_head(model, batch, layer="classifier")
    assert head.module is None and head.module_path is None and not head.linears
    assert (head.selection, head.num_outputs, head.feature_dim) == ("pooled", 3, 8)
    assert any("layer-wise only" in notice for notice in head.notices)
    samples, out = tap_once(model, head, batch, layer="classifier")
    with torch.no_grad():
        hidden = torch.relu(model.body(batch["x"]))
    torch.testing.assert_close(samples.features, hidden)
    torch.testing.assert_close(samples.outputs, hidden @ model.readout.T)
    with pytest.raises(HeadNotFoundError, match="layer="):
        FeatureTap(model, head)  # head mode has no features without a head
    with pytest.raises(HeadNotFoundError, match="layer-wise"):
        read_head_weight(head)


class Scaled(nn.Module):
    """Cohere/Granite-style: logits = classifier(h) · 0.25."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(8, 8)
        self.classifier = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> Output:
        return Output(logits=self.classifier(torch.relu(self.body(x))) * 0.25)


def test_logit_scale_is_a_documented_map_with_a_notice() -> None:
    torch.manual_seed(0)
    model, batch = Scaled().eval(), {"x": torch.randn(6, 8)}
    head = locate_head(model, batch)
    assert (head.module_path, head.selection) == ("classifier", "pooled")
    assert len(head.notices) == 1 and "times 0.25 (a logit scale)" in head.notices[0]
    samples, out = tap_once(model, head, batch)
    torch.testing.assert_close(samples.outputs * 0.25, out.logits)


# --- DeiT: two heads averaged -------------------------------------------------------------------------
def test_deit_distillation_heads_side_by_side() -> None:
    model, batch = mb.build("deit-teacher"), mb.image_batch()
    head = locate_head(model, batch)
    assert [path for path, _ in head.averaged] == ["cls_classifier", "distillation_classifier"]
    assert (head.selection, head.feature_dim, head.num_outputs) == ("pooled", 64, 3)
    assert any("average of the outputs of 'cls_classifier' and 'distillation_classifier'" in n for n in head.notices)
    samples, out = tap_once(model, head, batch)

    with torch.no_grad():
        hidden = model.deit(**batch).last_hidden_state  # after the final layernorm
        expected = torch.cat([hidden[:, 0], hidden[:, 1]], dim=1)
        cls, dist = model.cls_classifier, model.distillation_classifier
        weight = torch.cat([cls.weight, dist.weight], dim=1) / 2
        bias = (cls.bias + dist.bias) / 2
    torch.testing.assert_close(samples.features, expected)
    torch.testing.assert_close(read_head_weight(head), weight)
    torch.testing.assert_close(expected @ weight.T + bias, out.logits)
    torch.testing.assert_close(samples.outputs, out.logits)


def test_deit_layer_wise() -> None:
    model, batch = mb.build("deit-teacher"), mb.image_batch()
    head = locate_head(model, batch, layer="cls_classifier")
    samples, out = tap_once(model, head, batch, layer="cls_classifier")
    with torch.no_grad():
        expected = model.deit(**batch).last_hidden_state[:, 0]
    torch.testing.assert_close(samples.features, expected)
    torch.testing.assert_close(samples.outputs, out.logits)


# --- multiple choice ----------------------------------------------------------------------------------
def choice_batch() -> dict[str, torch.Tensor]:
    """3 examples × 4 choices × 6 tokens, some choices padded."""
    ids = torch.randint(2, mb.VOCAB, (3, 4, 6), generator=torch.Generator().manual_seed(4))
    mask = torch.ones_like(ids)
    mask[0, 1, 4:] = mask[2, 3, 2:] = 0
    ids[mask == 0] = mb.PAD
    return {"input_ids": ids, "attention_mask": mask}


def test_multiple_choice_each_choice_is_a_sample() -> None:
    model, batch = mb.build("bert-choice"), choice_batch()
    head = locate_head(model, batch)
    assert (head.module_path, head.selection, head.num_outputs, head.feature_dim) == ("classifier", "per_choice", 1, 32)
    assert any("each example × choice is one sample" in n for n in head.notices)
    samples, out = tap_once(model, head, batch, labels=torch.tensor([0, 3, 1]))
    flat = {key: value.reshape(12, 6) for key, value in batch.items()}
    with torch.no_grad():
        expected = model.bert(**flat).pooler_output
        outputs = expected @ model.classifier.weight.T + model.classifier.bias
    assert out.logits.shape == (3, 4) and samples.features.shape == (12, 32)
    torch.testing.assert_close(samples.features, expected)
    torch.testing.assert_close(samples.outputs, outputs)
    torch.testing.assert_close(samples.outputs, out.logits.reshape(12, 1))
    assert samples.labels is None  # the correct-choice index is no class of a 1-wide output


def test_multiple_choice_layer_wise_averages_each_choice() -> None:
    model, batch = mb.build("bert-choice"), choice_batch()
    layer = "bert.encoder.layer.1.output.dense"
    seen: list[torch.Tensor] = []
    handle = model.get_submodule(layer).register_forward_hook(lambda m, args, out: seen.append(args[0].clone()))
    try:
        head = locate_head(model, batch, layer=layer)
        samples, out = tap_once(model, head, batch, layer=layer)
    finally:
        handle.remove()
    raw, mask = seen[-1], batch["attention_mask"].reshape(12, 6)
    expected = torch.stack([raw[i, mask[i].bool()].mean(dim=0) for i in range(12)])
    torch.testing.assert_close(samples.features, expected)
    torch.testing.assert_close(samples.outputs, out.logits.reshape(12, 1))


# --- seq2seq: the decoder's positions -----------------------------------------------------------------
def seq2seq_batch(decoder_length: int, decoder_mask: bool) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(7)
    ids = torch.randint(3, mb.VOCAB, (2, 7), generator=generator)
    mask = torch.ones_like(ids)
    mask[1, 4:] = 0
    ids[mask == 0] = mb.PAD
    batch = {"input_ids": ids, "attention_mask": mask,
             "decoder_input_ids": torch.randint(3, mb.VOCAB, (2, decoder_length), generator=generator)}
    if decoder_mask:
        batch["decoder_attention_mask"] = torch.ones(2, decoder_length, dtype=torch.long)
        batch["decoder_attention_mask"][0, 3:] = 0
    return batch


@pytest.mark.parametrize("decoder_length,decoder_mask", [(5, True), (7, False)])
def test_seq2seq_lm_head_uses_the_decoder_mask(decoder_length: int, decoder_mask: bool) -> None:
    model, batch = mb.build("bart-lm"), seq2seq_batch(decoder_length, decoder_mask)
    head = locate_head(model, batch)
    assert (head.module_path, head.selection) == ("lm_head", "per_position")
    samples, out = tap_once(model, head, batch, labels=batch["decoder_input_ids"])
    keep = batch["decoder_attention_mask"].bool() if decoder_mask else torch.ones(2, decoder_length, dtype=torch.bool)
    with torch.no_grad():
        hidden = model.model(**batch).last_hidden_state  # the decoder's
    assert samples.features.shape == (int(keep.sum()), 16)  # 5 + 3, or all 14 (not the encoder's 11)
    torch.testing.assert_close(samples.features, hidden[keep])
    torch.testing.assert_close(samples.outputs, hidden[keep] @ model.lm_head.weight.T)
    torch.testing.assert_close(samples.outputs, out.logits[keep])
    assert samples.labels is None
    assert head.positions.startswith("every decoder position")


def test_encoder_only_head_of_an_encoder_decoder_family_keeps_the_encoder_mask() -> None:
    torch.manual_seed(0)
    config = tf.T5Config(vocab_size=mb.VOCAB, d_model=16, d_kv=8, d_ff=20, num_layers=1, num_heads=2, num_labels=3)
    assert config.is_encoder_decoder
    model, batch = tf.T5ForTokenClassification(config).eval(), mb.text_batch()
    head = locate_head(model, batch)
    assert head.positions == "every non-padding position (attention_mask)"
    samples, out = tap_once(model, head, batch)
    mask = batch["attention_mask"].bool()
    with torch.no_grad():
        hidden = model.transformer(**batch).last_hidden_state
    torch.testing.assert_close(samples.features, hidden[mask])
    torch.testing.assert_close(samples.outputs, out.logits[mask])


def test_final_logits_bias_is_an_offset_after_the_head() -> None:
    model, batch = mb.build("bart-lm"), seq2seq_batch(5, True)
    with torch.no_grad():
        model.final_logits_bias.normal_(generator=torch.Generator().manual_seed(8))
    head = locate_head(model, batch)
    assert head.module_path == "lm_head" and any("per-class offset" in n for n in head.notices)
    samples, out = tap_once(model, head, batch)
    keep = batch["decoder_attention_mask"].bool()
    torch.testing.assert_close(samples.outputs + model.final_logits_bias[0], out.logits[keep])


# --- Whisper audio classification ---------------------------------------------------------------------
def test_whisper_audio_classification_features() -> None:
    model = mb.build("whisper-audio")
    batch = {"input_features": torch.randn(2, 80, 3000, generator=torch.Generator().manual_seed(9))}
    head = locate_head(model, batch)
    assert (head.module_path, head.selection, head.feature_dim, head.num_outputs) == ("classifier", "pooled", 12, 3)
    assert "projector (Linear) -> mean over all frames" in head.between
    samples, out = tap_once(model, head, batch)
    with torch.no_grad():
        expected = model.projector(model.encoder(**batch).last_hidden_state).mean(dim=1)
    torch.testing.assert_close(samples.features, expected)
    torch.testing.assert_close(samples.outputs, expected @ model.classifier.weight.T + model.classifier.bias)
    torch.testing.assert_close(samples.outputs, out.logits)


# --- models with no classification head --------------------------------------------------------------
def test_bare_bert_has_no_classification_head() -> None:
    model = tf.BertModel(tf.BertConfig(**mb.TEXT)).eval()
    with pytest.raises(HeadNotFoundError, match=r"^BertModel has no classification head.*AutoModelForSequenceClassification"):
        locate_head(model, mb.text_batch())


def test_clip_has_no_classification_head() -> None:
    text = dict(hidden_size=16, intermediate_size=20, num_hidden_layers=1, num_attention_heads=2, vocab_size=mb.VOCAB,
                bos_token_id=1, eos_token_id=2, pad_token_id=mb.PAD)
    vision = dict(hidden_size=16, intermediate_size=20, num_hidden_layers=1, num_attention_heads=2, image_size=16, patch_size=8)
    model = tf.CLIPModel(tf.CLIPConfig(text_config=text, vision_config=vision, projection_dim=8)).eval()
    with pytest.raises(HeadNotFoundError, match=r"^CLIPModel has no classification head.*AutoModelForImageClassification"):
        locate_head(model, {**mb.text_batch(), **mb.image_batch()})


# --- quantized and wrapped heads ----------------------------------------------------------------------
class Linear8bitLt(nn.Linear):
    """An LLM.int8-style head: int8 weight with a per-row absmax scale `SCB`; forward dequantizes."""

    def __init__(self, dense: nn.Linear) -> None:
        super().__init__(dense.in_features, dense.out_features)
        scb = dense.weight.detach().abs().amax(dim=1)
        int8 = torch.round(dense.weight.detach() / scb[:, None] * 127).to(torch.int8)
        self.weight = nn.Parameter(int8, requires_grad=False)
        self.weight.SCB = scb
        self.bias = nn.Parameter(dense.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ (self.weight.float() * self.weight.SCB[:, None] / 127).T + self.bias


class Linear4bit(nn.Linear):
    """A 4-bit head: two weights packed per uint8 byte, unpacked by its own forward."""

    def __init__(self, dense: nn.Linear) -> None:
        super().__init__(dense.in_features, dense.out_features)
        codes = torch.randint(0, 16, (dense.out_features * dense.in_features,), generator=torch.Generator().manual_seed(3))
        self.weight = nn.Parameter((codes[0::2] * 16 + codes[1::2]).to(torch.uint8).reshape(-1, 1), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        packed = self.weight.flatten().long()
        codes = torch.stack([packed // 16, packed % 16], dim=1).flatten()
        return x @ ((codes.float() - 7.5) / 8).reshape(self.out_features, self.in_features).T + self.bias


class QuantizedHead(nn.Module):
    def __init__(self, quantize: type[nn.Linear]) -> None:
        super().__init__()
        self.body = nn.Linear(8, 8)
        self.classifier = quantize(nn.Linear(8, 3))

    def forward(self, x: torch.Tensor) -> Output:
        return Output(logits=self.classifier(torch.relu(self.body(x))))


def test_int8_head_is_dequantized_for_the_head_weight_path() -> None:
    torch.manual_seed(0)
    model, batch = QuantizedHead(Linear8bitLt).eval(), {"x": torch.randn(6, 8)}
    head = locate_head(model, batch)
    assert head.module_path == "classifier" and any("quantized (Linear8bitLt)" in n for n in head.notices)
    weight = read_head_weight(head)
    with torch.no_grad():
        expected = model.classifier.weight.float() * model.classifier.weight.SCB[:, None] / 127
        features = torch.relu(model.body(batch["x"]))
    assert weight.dtype == torch.float32
    torch.testing.assert_close(weight, expected)
    samples, out = tap_once(model, head, batch)
    torch.testing.assert_close(samples.features, features)
    torch.testing.assert_close(features @ weight.T + model.classifier.bias, out.logits)


def test_4bit_head_is_refused_clearly() -> None:
    torch.manual_seed(0)
    model, batch = QuantizedHead(Linear4bit).eval(), {"x": torch.randn(6, 8)}
    head = locate_head(model, batch)
    with pytest.raises(WeightsUnavailableError, match=r"quantized \(Linear4bit\).*llm_int8_skip_modules=\['classifier'\].*layer='classifier'"):
        read_head_weight(head)
    samples, out = tap_once(model, head, batch, layer="classifier")  # layer-wise needs no weight
    torch.testing.assert_close(samples.outputs, out.logits)


class ModulesToSaveWrapper(nn.Module):
    """PEFT's layout for a trainable copy of the head: `original_module` and `modules_to_save.default`."""

    def __init__(self, head: nn.Linear) -> None:
        super().__init__()
        self.original_module = head
        self.modules_to_save = nn.ModuleDict({"default": nn.Linear(head.in_features, head.out_features)})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.modules_to_save["default"](x)


class WrappedHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(8, 8)
        self.classifier = ModulesToSaveWrapper(nn.Linear(8, 3))

    def forward(self, x: torch.Tensor) -> Output:
        return Output(logits=self.classifier(torch.relu(self.body(x))))


def test_wrapped_head_gets_a_notice() -> None:
    torch.manual_seed(0)
    model, batch = WrappedHead().eval(), {"x": torch.randn(6, 8)}
    head = locate_head(model, batch)
    assert head.module_path == "classifier.modules_to_save.default"
    assert head.notices == (
        "the head 'classifier.modules_to_save.default' sits inside ModulesToSaveWrapper ('classifier'); D_LR reads "
        "this inner Linear's input and output, which are what the logits come from",
    )
    samples, out = tap_once(model, head, batch)
    torch.testing.assert_close(samples.outputs, out.logits)
