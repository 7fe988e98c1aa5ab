"""Layer-wise mode: features = any linear layer's input, outputs = the model's logits."""

from __future__ import annotations

import pytest
import torch

import model_builders as mb
from dlr_hf.errors import LayerNotFoundError
from dlr_hf.models import FeatureTap, locate_head


def collect(model: torch.nn.Module, batch: dict, layer: str, labels: torch.Tensor | None = None):
    """Samples in layer-wise mode, plus the layer's raw input seen by an independent hook."""
    seen: list[torch.Tensor] = []
    module = dict(model.named_modules())[layer]
    handle = module.register_forward_hook(lambda m, args, out: seen.append(args[0].detach().clone()))
    head = locate_head(model, batch)
    seen.clear()
    try:
        with torch.inference_mode(), FeatureTap(model, head, layer=layer) as tap:
            out = model(**batch)
            samples = tap.collect(batch, out, labels=labels)
    finally:
        handle.remove()
    return samples, out, seen[-1]


def test_bert_pooler_dense_reads_cls_hidden_state() -> None:
    model, batch = mb.build("bert"), mb.text_batch()
    samples, out, _ = collect(model, batch, "bert.pooler.dense")
    with torch.no_grad():
        expected = model.bert(**batch).last_hidden_state[:, 0]
    torch.testing.assert_close(samples.features, expected)
    torch.testing.assert_close(samples.outputs, out.logits)


def test_per_token_layer_is_averaged_over_non_padding_tokens() -> None:
    model, batch = mb.build("bert"), mb.text_batch()
    labels = torch.tensor([0, 1, 2, 0])
    samples, out, raw = collect(model, batch, "bert.encoder.layer.1.output.dense", labels=labels)
    assert raw.shape == (4, 7, 37)  # the intermediate (FFN) activations
    mask = batch["attention_mask"]
    expected = torch.stack([raw[i, : int(mask[i].sum())].mean(dim=0) for i in range(4)])
    torch.testing.assert_close(samples.features, expected)
    torch.testing.assert_close(samples.outputs, out.logits)
    assert torch.equal(samples.labels, labels)


def test_layer_equal_to_head_gives_head_features() -> None:
    model, batch = mb.build("roberta"), mb.text_batch(pad=1)
    head = locate_head(model, batch)
    with torch.inference_mode(), FeatureTap(model, head) as tap:
        in_head_mode = tap.collect(batch, model(**batch))
    samples, out, _ = collect(model, batch, "classifier.out_proj")
    torch.testing.assert_close(samples.features, in_head_mode.features)
    torch.testing.assert_close(samples.outputs, out.logits)


@pytest.mark.parametrize(
    ("family", "layer", "dim"),
    [("gpt2", "transformer.h.1.mlp.c_fc", 32), ("llama", "model.layers.1.mlp.down_proj", 37)],
)
def test_selected_position_head_takes_layer_features_at_that_position(family: str, layer: str, dim: int) -> None:
    model, batch = mb.build(family), mb.text_batch()
    samples, out, raw = collect(model, batch, layer)
    last = torch.tensor([6, 4, 2, 5])  # last non-pad token of each row (right padding)
    assert samples.features.shape == (4, dim)
    torch.testing.assert_close(samples.features, raw[torch.arange(4), last])
    torch.testing.assert_close(samples.outputs, out.logits)


def test_causal_lm_layer_keeps_every_non_padding_token() -> None:
    model, batch = mb.build("gpt2-lm"), mb.text_batch()
    samples, out, raw = collect(model, batch, "transformer.h.0.mlp.c_proj", labels=batch["input_ids"])
    mask = batch["attention_mask"].bool()
    assert samples.features.shape == (int(mask.sum()), 128)
    torch.testing.assert_close(samples.features, raw[mask])
    torch.testing.assert_close(samples.outputs, out.logits[mask])
    assert samples.labels is None


def test_image_layer_input_is_averaged_over_space() -> None:
    model, batch = mb.build("convnext"), mb.image_batch()
    samples, out, raw = collect(model, batch, "convnext.encoder.stages.1.layers.0.pwconv1")
    assert raw.ndim == 4  # channels-last (B, H, W, C)
    torch.testing.assert_close(samples.features, raw.mean(dim=(1, 2)))
    torch.testing.assert_close(samples.outputs, out.logits)


@pytest.mark.parametrize(
    ("layer", "hint"),
    [("bert.pooler.dens", "'bert.pooler.dense'"), ("bert.pooler", "is a BertPooler"), ("nope", "does not exist")],
)
def test_bad_layer_path_names_valid_layers(layer: str, hint: str) -> None:
    model, batch = mb.build("bert"), mb.text_batch()
    head = locate_head(model, batch)
    with pytest.raises(LayerNotFoundError, match=hint) as info:
        FeatureTap(model, head, layer=layer)
    assert "classifier" in str(info.value) or "bert.pooler.dense" in str(info.value)
