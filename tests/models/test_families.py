"""Head discovery and sample collection on a tiny model of every supported family.

Each check compares against an independent computation: the model's own logits, the head Linear
re-applied to the captured features, and (where the head's input is not simply a hidden state)
the features recomputed by hand from the model's internals.
"""

from __future__ import annotations

import pytest
import torch

import model_builders as mb
from dlr_hf.models import WORD_STARTS, FeatureTap, HeadInfo, Samples, locate_head, model_inputs

TEXT_ROWS = sum(mb.text_batch()["attention_mask"].flatten().tolist())  # non-padding tokens: 21

# family -> (input kind, head path, selection, p, C, samples per batch, part of `between`)
FAMILIES = {
    "bert": ("text", "classifier", "pooled", 32, 3, 4, "pooler: [CLS] -> bert.pooler.dense -> tanh -> dropout"),
    "roberta": ("text", "classifier.out_proj", "pooled", 32, 3, 4, "classifier.dense -> tanh -> dropout"),
    "distilbert": ("text", "classifier", "pooled", 32, 3, 4, "[CLS] -> pre_classifier -> ReLU -> dropout"),
    "deberta-v2": ("text", "classifier", "pooled", 32, 3, 4, "dropout -> pooler.dense -> gelu -> dropout"),
    "electra": ("text", "classifier.out_proj", "pooled", 32, 3, 4, "classifier.dense -> gelu -> dropout"),
    "bert-token": ("text", "classifier", "per_position", 32, 3, TEXT_ROWS, "dropout (Dropout) (modules only"),
    "gpt2": ("text", "score", "selected_position", 32, 3, 4, "transformer.ln_f (LayerNorm)"),
    "llama": ("text", "score", "selected_position", 32, 3, 4, "model.norm (LlamaRMSNorm)"),
    "gpt2-lm": ("text", "lm_head", "per_position", 32, mb.VOCAB, TEXT_ROWS, "transformer.ln_f (LayerNorm)"),
    "llama-lm": ("text", "lm_head", "per_position", 32, mb.VOCAB, TEXT_ROWS, "model.norm (LlamaRMSNorm)"),
    "vit": ("image", "classifier", "pooled", 32, 3, 4, "(vit.layernorm), then [CLS]"),
    "resnet": ("image", "classifier.1", "pooled", 16, 3, 4, "(resnet.pooler) -> flatten (classifier.0)"),
    "convnext": ("image", "classifier", "pooled", 16, 3, 4, "average pool over H x W -> final layernorm"),
    "wav2vec2": ("audio", "classifier", "pooled", 24, 3, 3, "projector (Linear) -> mean over non-padding frames"),
}


def batch_for(family: str, kind: str) -> dict[str, torch.Tensor]:
    if kind == "image":
        return mb.image_batch()
    if kind == "audio":
        return mb.audio_batch()
    return mb.text_batch(pad=1 if family == "roberta" else mb.PAD)


def tap_once(model: torch.nn.Module, head: HeadInfo, batch: dict, labels: torch.Tensor | None = None):
    """One forward under inference mode, as the engine runs it; returns (samples, model output)."""
    with torch.inference_mode(), FeatureTap(model, head) as tap:
        out = model(**model_inputs(batch))
        return tap.collect(batch, out, labels=labels), out


def reapply(head: HeadInfo, features: torch.Tensor) -> torch.Tensor:
    """The head's affine map W·Φ + b, computed from its parameters."""
    with torch.no_grad():
        bias = head.module.bias if head.module.bias is not None else 0
        return features @ head.module.weight.T + bias


def last_non_pad(mask: torch.Tensor) -> torch.Tensor:
    positions = torch.arange(mask.shape[1])
    return (positions * mask).argmax(dim=1)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_head_and_samples(family: str) -> None:
    kind, path, selection, p, c, n, between = FAMILIES[family]
    model, batch = mb.build(family), batch_for(family, kind)
    head = locate_head(model, batch)
    assert (head.module_path, head.selection, head.feature_dim, head.num_outputs) == (path, selection, p, c)
    assert head.module is dict(model.named_modules())[path]
    assert head.logits_key == "logits"
    assert between in head.between
    assert ("every position" in head.between) == (selection == "selected_position")

    samples, out = tap_once(model, head, batch)
    assert isinstance(samples, Samples)
    assert samples.features.shape == (n, p) and samples.outputs.shape == (n, c)
    assert samples.labels is None
    torch.testing.assert_close(samples.outputs, reapply(head, samples.features))
    logits = out.logits[batch["attention_mask"].bool()] if selection == "per_position" else out.logits
    torch.testing.assert_close(samples.outputs, logits)


def test_bert_features_are_the_pooler_output() -> None:
    model, batch = mb.build("bert"), mb.text_batch()
    head = locate_head(model, batch)
    samples, _ = tap_once(model, head, batch)
    with torch.no_grad():
        hidden = model.bert(**batch).last_hidden_state
        expected = torch.tanh(model.bert.pooler.dense(hidden[:, 0]))
    torch.testing.assert_close(samples.features, expected)
    assert not torch.allclose(samples.features, hidden[:, 0])  # the pooler is not the identity
    assert "pooler" in head.between and "tanh" in head.between


def test_roberta_features_are_dense_tanh_of_cls() -> None:
    model, batch = mb.build("roberta"), mb.text_batch(pad=1)
    head = locate_head(model, batch)
    samples, _ = tap_once(model, head, batch)
    with torch.no_grad():
        hidden = model.roberta(**batch).last_hidden_state
        expected = torch.tanh(model.classifier.dense(hidden[:, 0]))
    torch.testing.assert_close(samples.features, expected)
    assert "classifier.dense -> tanh" in head.between


@pytest.mark.parametrize("left", [False, True], ids=["right-padding", "left-padding"])
@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_decoder_classification_uses_last_non_pad_token(family: str, left: bool) -> None:
    model, batch = mb.build(family), mb.text_batch(left=left)
    head = locate_head(model, batch)
    assert head.selection == "selected_position"
    samples, out = tap_once(model, head, batch)

    mask = batch["attention_mask"]
    last = last_non_pad(mask)
    expected_last = torch.full((4,), 6) if left else torch.tensor([6, 4, 2, 5])
    assert torch.equal(last, expected_last)
    base = model.transformer if family == "gpt2" else model.model
    with torch.no_grad():
        hidden = base(**batch).last_hidden_state  # after the final norm (ln_f / norm)
    rows = torch.arange(4)
    torch.testing.assert_close(samples.features, hidden[rows, last])
    torch.testing.assert_close(samples.outputs, out.logits)
    if not left:  # the last position (a pad for rows 1-3) holds other features: selection matters
        assert not torch.allclose(samples.features, hidden[:, 6])


def test_token_classification_positions_do_not_depend_on_labels() -> None:
    """SPEC §1: labels never pick the samples; -100 at a kept position is just an unlabelled row."""
    model, batch = mb.build("bert-token"), mb.text_batch()
    mask = batch["attention_mask"].bool()
    labels = torch.randint(0, 3, (4, 7), generator=torch.Generator().manual_seed(5))
    labels[~mask] = -100
    labels[:, 0] = -100  # e.g. [CLS] and sub-word continuations
    labels[1, 3] = -100
    head = locate_head(model, {**batch, "labels": labels})
    assert head.positions == "every non-padding position (attention_mask)"
    with_labels, out = tap_once(model, head, batch, labels=labels)
    without_labels, _ = tap_once(model, head, batch)

    with torch.no_grad():
        hidden = model.bert(**batch).last_hidden_state
    for samples in (with_labels, without_labels):
        torch.testing.assert_close(samples.features, hidden[mask])
        torch.testing.assert_close(samples.outputs, out.logits[mask])
    assert without_labels.labels is None
    assert with_labels.labels is not None and with_labels.labels.dtype == torch.long
    assert torch.equal(with_labels.labels, labels[mask]) and int((with_labels.labels == -100).sum()) == 5


def test_token_classification_uses_the_position_mask_of_the_batch() -> None:
    model, batch = mb.build("bert-token"), mb.text_batch()
    starts = batch["attention_mask"].bool().clone()
    starts[:, 0] = False  # [CLS]
    starts[0, 2] = starts[3, 4] = False  # two sub-word continuations
    head = locate_head(model, {**batch, WORD_STARTS: starts})
    assert head.positions == "first sub-token of each word (special tokens and padding excluded)"
    labels = torch.randint(0, 3, (4, 7), generator=torch.Generator().manual_seed(6))
    samples, out = tap_once(model, head, {**batch, WORD_STARTS: starts}, labels=labels)
    with torch.no_grad():
        hidden = model.bert(**batch).last_hidden_state
    assert samples.features.shape == (TEXT_ROWS - 6, 32)
    torch.testing.assert_close(samples.features, hidden[starts])
    torch.testing.assert_close(samples.outputs, out.logits[starts])
    assert torch.equal(samples.labels, labels[starts])


@pytest.mark.parametrize("family", ["gpt2-lm", "llama-lm"])
def test_causal_lm_tied_head_ignores_labels(family: str) -> None:
    model, batch = mb.build(family), mb.text_batch()
    assert model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()  # tied
    head = locate_head(model, {**batch, "labels": batch["input_ids"]})
    samples, out = tap_once(model, head, batch, labels=batch["input_ids"])
    assert samples.labels is None  # next tokens are not class labels
    mask = batch["attention_mask"].bool()
    base = model.transformer if family == "gpt2-lm" else model.model
    with torch.no_grad():
        hidden = base(**batch).last_hidden_state
    torch.testing.assert_close(samples.features, hidden[mask])
    torch.testing.assert_close(samples.outputs, out.logits[mask])
    assert head.between.startswith("transformer.ln_f (LayerNorm)" if family == "gpt2-lm" else "model.norm")


def test_vit_features_are_normalised_cls() -> None:
    model, batch = mb.build("vit"), mb.image_batch()
    head = locate_head(model, batch)
    samples, _ = tap_once(model, head, batch)
    with torch.no_grad():
        last = model.vit(**batch, output_hidden_states=True).hidden_states[-1]
        expected = model.vit.layernorm(last)[:, 0]
    torch.testing.assert_close(samples.features, expected)
    assert not torch.allclose(samples.features, last[:, 0])  # hidden_states[-1] is before the norm


def test_resnet_features_are_flattened_pooler_output() -> None:
    model, batch = mb.build("resnet"), mb.image_batch()
    head = locate_head(model, batch)
    samples, _ = tap_once(model, head, batch)
    with torch.no_grad():
        expected = model.resnet(**batch).pooler_output.flatten(1)
    torch.testing.assert_close(samples.features, expected)
    assert "resnet.pooler" in head.between


def test_pooled_labels_are_returned_per_example() -> None:
    model, batch = mb.build("distilbert"), mb.text_batch()
    head = locate_head(model, batch)
    labels = torch.tensor([2, 0, 1, 2], dtype=torch.int32)
    samples, _ = tap_once(model, head, batch, labels=labels)
    assert samples.labels is not None and samples.labels.dtype == torch.long
    assert torch.equal(samples.labels, labels.long())
    samples, _ = tap_once(model, head, batch, labels=torch.rand(4))  # regression targets: no classes
    assert samples.labels is None


def test_bfloat16_keeps_dtype_and_selection() -> None:
    model, batch = mb.build("llama").to(torch.bfloat16), mb.text_batch()
    head = locate_head(model, batch)
    assert head.selection == "selected_position"
    samples, out = tap_once(model, head, batch)
    assert samples.features.dtype == samples.outputs.dtype == torch.bfloat16
    torch.testing.assert_close(samples.outputs.float(), out.logits.float())


def test_each_batch_is_collected_separately() -> None:
    model = mb.build("bert")
    first, second = mb.text_batch(), mb.text_batch(lengths=(2, 3, 4, 7))
    second["input_ids"] = (second["input_ids"] * 7) % mb.VOCAB
    head = locate_head(model, first)
    with torch.inference_mode(), FeatureTap(model, head) as tap:
        got = []
        for batch in (first, second):
            got.append(tap.collect(batch, model(**batch)))
    for batch, samples in zip((first, second), got):
        with torch.no_grad():
            expected = model.bert(**batch).pooler_output
        torch.testing.assert_close(samples.features, expected)
