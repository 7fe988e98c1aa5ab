"""One data path per input family through ``evaluate()``, each against features recomputed by hand.

The hand computation re-batches the same rows with the same batch size, so the model sees exactly
the same tensors and the only difference left is the statistics (≤ 1e-10 on D_LR).
"""

from __future__ import annotations

import json

import datasets
import numpy as np
import pytest
import torch
import transformers as tf
from PIL import Image

import engine_helpers as eh
from dlr_hf.engine import evaluate
from dlr_hf.metric import compute_dlr
from dlr_hf.surfaces.cli import main

# The engine's head-weight path drops feature directions below the float32 rounding floor, which
# the streamed-logits reference keeps: they may move D_LR by ~1e-9, far below any reading.
TOL = 1e-8
LONG_WORDS = ["mountaineering", "xylophones", "zebras", "unbelievably", "photosynthesis"]


def batches_of(rows: list, size: int, encode) -> list[dict[str, torch.Tensor]]:
    return [dict(encode(chunk)) for chunk in eh.chunks(rows, size)]


def test_text_pairs(tokenizer):
    model = eh.tiny_bert()
    first, second = eh.sentences(20, seed=3), eh.sentences(20, seed=4)
    data = datasets.Dataset.from_dict({"sentence1": first, "sentence2": second, "label": [i % 3 for i in range(20)]})
    report = evaluate(model, data, processor=tokenizer, num_samples=None, batch_size=8, progress=False)

    pairs = list(zip(first, second))
    batches = batches_of(pairs, 8, lambda chunk: tokenizer([a for a, _ in chunk], [b for _, b in chunk], padding=True, return_tensors="pt"))
    assert all(batch["token_type_ids"].any() for batch in batches)  # really encoded as pairs
    features, _ = eh.hand_features(model, batches, lambda m, b: m.bert(**b).pooler_output)
    expected = compute_dlr(features, eh.head_outputs(features, model.classifier))
    assert abs(report.dlr - expected.dlr) <= TOL
    assert report.dataset["input_columns"] == ["sentence1", "sentence2"]


def test_token_classification_labels_first_sub_token(tokenizer):
    model = eh.tiny_bert_tokens(num_labels=5)
    rng = np.random.default_rng(5)
    vocabulary = eh.WORDS + LONG_WORDS
    words = [list(rng.choice(vocabulary, size=int(rng.integers(2, 8)))) for _ in range(14)]
    tags = [[int(t) for t in rng.integers(0, 5, size=len(row))] for row in words]
    data = datasets.Dataset.from_dict({"tokens": words, "ner_tags": tags})
    report = evaluate(model, data, processor=tokenizer, num_samples=None, batch_size=4, progress=False)

    features, labels, split_words = [], [], 0
    with torch.inference_mode():
        for chunk in eh.chunks(list(zip(words, tags)), 4):
            encoding = tokenizer([w for w, _ in chunk], is_split_into_words=True, padding=True, return_tensors="pt")
            hidden = model.bert(**encoding).last_hidden_state
            for row, (row_words, row_tags) in enumerate(chunk):
                word_ids = encoding.word_ids(row)
                for w, tag in enumerate(row_tags):
                    positions = [i for i, wid in enumerate(word_ids) if wid == w]
                    split_words += len(positions) > 1
                    features.append(hidden[row, positions[0]].double())  # the first sub-token only
                    labels.append(tag)
    assert split_words > 0  # some words really span several sub-tokens
    features, labels = torch.stack(features), torch.tensor(labels)
    expected = compute_dlr(features, eh.head_outputs(features, model.classifier), labels=labels)

    assert report.result.num_samples == sum(len(row) for row in words)  # one sample per word
    assert report.head["selection"] == "per_position"
    assert abs(report.dlr - expected.dlr) <= TOL
    assert report.baselines["accuracy"] == pytest.approx(expected.accuracy, abs=1e-12)
    assert report.dataset["input_columns"] == ["tokens"] and report.dataset["label_column"] == "ner_tags"


def test_pre_tokenised_input_ids():
    model = eh.tiny_bert()
    rng = np.random.default_rng(6)
    ids = [[101, *map(int, rng.integers(1000, 5000, size=int(rng.integers(2, 9)))), 102] for _ in range(18)]
    data = datasets.Dataset.from_dict({"input_ids": ids, "label": [i % 3 for i in range(18)]})
    report = evaluate(model, data, num_samples=None, batch_size=5, progress=False)

    def pad(chunk: list[list[int]]) -> dict[str, torch.Tensor]:
        width = max(map(len, chunk))
        return {
            "input_ids": torch.tensor([row + [0] * (width - len(row)) for row in chunk]),
            "attention_mask": torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in chunk]),
        }

    features, _ = eh.hand_features(model, batches_of(ids, 5, pad), lambda m, b: m.bert(**b).pooler_output)
    expected = compute_dlr(features, eh.head_outputs(features, model.classifier))
    assert abs(report.dlr - expected.dlr) <= TOL
    assert report.result.num_samples == 18 and report.dataset["input_columns"] == ["input_ids"]


def word_level_tokenizer() -> tf.PreTrainedTokenizerFast:
    """A tiny word-level tokenizer with no pad token (like GPT-2's): the engine pads with EOS."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<unk>": 0, "<eos>": 1, **{word: i + 2 for i, word in enumerate(eh.WORDS)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return tf.PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="<eos>")


def tiny_gpt2(vocab_size: int) -> tf.GPT2LMHeadModel:
    torch.manual_seed(0)
    config = tf.GPT2Config(vocab_size=vocab_size, n_embd=32, n_layer=2, n_head=2, n_positions=32, bos_token_id=1, eos_token_id=1)
    return tf.GPT2LMHeadModel(config).eval()


def test_causal_lm_is_degenerate_and_layerwise_conv1d():
    tokenizer = word_level_tokenizer()
    model = tiny_gpt2(len(tokenizer))
    assert len(tokenizer) >= model.config.n_embd  # vocabulary ≥ hidden size
    text = eh.sentences(12, seed=7)
    data = datasets.Dataset.from_dict({"text": text})
    report = evaluate(model, data, processor=tokenizer, num_samples=None, batch_size=4, progress=False)

    batches = batches_of(text, 4, lambda chunk: tokenizer(chunk, padding=True, return_tensors="pt"))
    tokens = sum(int(b["attention_mask"].sum()) for b in batches)
    assert any((b["attention_mask"] == 0).any() for b in batches)  # padding happened (with EOS)
    with torch.inference_mode():
        hidden = [model.transformer(**b).last_hidden_state[b["attention_mask"].bool()].double() for b in batches]
    features = torch.cat(hidden)
    expected = compute_dlr(features, features @ model.lm_head.weight.double().T)

    assert report.result.num_samples == tokens  # one sample per non-padding token
    assert report.head["module_path"] == "lm_head" and report.head["selection"] == "per_position"
    assert report.degenerate is True and expected.degenerate is True
    assert report.to_dict()["degenerate"] is True
    assert any(w.startswith("degenerate: ") for w in report.warnings)
    assert abs(report.dlr - expected.dlr) <= TOL
    assert report.baselines["accuracy"] is None  # next tokens are not class labels

    # Layer-wise on GPT-2's Conv1D: features = the MLP output projection's input, outputs = the logits.
    layer = "transformer.h.1.mlp.c_proj"
    layered = evaluate(model, data, processor=tokenizer, num_samples=None, batch_size=4, layer=layer, progress=False)
    captured: list[torch.Tensor] = []
    handle = model.get_submodule(layer).register_forward_hook(lambda m, args, out: captured.append(args[0].detach().clone()))
    try:
        features, logits = [], []
        with torch.inference_mode():
            for batch in batches:
                out = model(**batch).logits
                mask = batch["attention_mask"].bool()
                features.append(captured.pop()[mask].double())
                logits.append(out[mask].double())
    finally:
        handle.remove()
    expected_layer = compute_dlr(torch.cat(features), torch.cat(logits))
    assert layered.result.feature_dim == 4 * 32 and layered.head["layer"] == layer
    assert abs(layered.dlr - expected_layer.dlr) <= TOL


def test_layerwise_vit_through_the_cli(demo, tmp_path, capsys):
    layer = "vit.layers.1.mlp.fc2"
    output = tmp_path / "layer.json"
    assert main(["evaluate", str(demo["rich"]), "--dataset", str(demo["data"]), "--layer", layer,
                 "--num-samples", "96", "--batch-size", "32", "--output", str(output), "--quiet"]) == 0
    report = json.loads(output.read_text())

    model = tf.ViTForImageClassification.from_pretrained(demo["rich"]).eval()
    processor = tf.AutoImageProcessor.from_pretrained(demo["rich"])
    test = datasets.load_from_disk(str(demo["data"]))["test"]
    from dlr_hf.engine.data import subsample_indices

    rows = subsample_indices(len(test), 96, 0)
    captured: list[torch.Tensor] = []
    handle = model.get_submodule(layer).register_forward_hook(lambda m, args, out: captured.append(args[0].detach().clone()))
    features, logits = [], []
    try:
        with torch.inference_mode():
            for chunk in eh.chunks(rows, 32):
                pixels = processor(images=[test[i]["image"].convert("RGB") for i in chunk], return_tensors="pt")["pixel_values"]
                logits.append(model(pixel_values=pixels).logits.double())
                features.append(captured.pop().mean(dim=1).double())  # (B, tokens, 128): mean over tokens
    finally:
        handle.remove()
    expected = compute_dlr(torch.cat(features), torch.cat(logits))
    assert report["head"]["layer"] == layer and report["result"]["feature_dim"] == 128
    assert report["result"]["num_samples"] == 96
    assert abs(report["dlr"] - expected.dlr) <= TOL


def test_reference_model(demo, tmp_path, capsys):
    """--reference: the model itself gives S_init = 1 and no parameter change; the initial checkpoint doesn't."""
    output = tmp_path / "self.json"
    assert main(["evaluate", str(demo["rich"]), "--dataset", str(demo["data"]), "--reference", str(demo["rich"]),
                 "--num-samples", "80", "--output", str(output), "--quiet"]) == 0
    baselines = json.loads(output.read_text())["baselines"]
    assert abs(baselines["s_init"] - 1.0) <= TOL
    assert baselines["param_change"] == 0.0

    report = evaluate(str(demo["rich"]), str(demo["data"]), reference_model=str(demo["initial"]), num_samples=80, progress=False)
    rich = tf.ViTForImageClassification.from_pretrained(demo["rich"]).eval()
    initial = tf.ViTForImageClassification.from_pretrained(demo["initial"]).eval()
    processor = tf.AutoImageProcessor.from_pretrained(demo["rich"])
    test = datasets.load_from_disk(str(demo["data"]))["test"]
    from dlr_hf.engine.data import subsample_indices

    rows = subsample_indices(len(test), 80, 0)
    pixels = processor(images=[test[i]["image"].convert("RGB") for i in rows], return_tensors="pt")["pixel_values"]
    with torch.inference_mode():
        phi = rich.vit.layernorm(rich.vit(pixels, output_hidden_states=True).hidden_states[-1])[:, 0].double()
        phi0 = initial.vit.layernorm(initial.vit(pixels, output_hidden_states=True).hidden_states[-1])[:, 0].double()
    phi, phi0 = phi - phi.mean(0), phi0 - phi0.mean(0)
    s_init = (phi0.T @ phi).norm() ** 2 / ((phi0.T @ phi0).norm() * (phi.T @ phi).norm())
    theta = {k: v.detach() for k, v in rich.named_parameters()}
    theta0 = {k: v.detach() for k, v in initial.named_parameters()}
    change = torch.sqrt(sum(((theta[k] - theta0[k]).double() ** 2).sum() for k in theta)) / torch.sqrt(
        sum((p.double() ** 2).sum() for p in theta0.values())
    )
    assert report.baselines["s_init"] == pytest.approx(float(s_init), rel=1e-6)
    assert 0 < report.baselines["s_init"] < 0.99
    assert report.baselines["param_change"] == pytest.approx(float(change), rel=1e-6)


def test_audio_dicts_with_feature_extractor():
    torch.manual_seed(0)
    config = tf.Wav2Vec2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37, conv_dim=(8, 8),
        conv_stride=(5, 4), conv_kernel=(10, 8), num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=2,
        classifier_proj_size=24, num_labels=3,
    )
    model = tf.Wav2Vec2ForSequenceClassification(config).eval()
    extractor = tf.Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True, return_attention_mask=False)
    rng = np.random.default_rng(8)
    waves = [rng.standard_normal(int(rng.integers(400, 480))).astype(np.float32) for _ in range(14)]
    data = datasets.Dataset.from_dict({
        "audio": [{"array": wave.tolist(), "sampling_rate": 16000} for wave in waves],
        "label": [i % 3 for i in range(14)],
    })
    report = evaluate(model, data, processor=extractor, num_samples=None, batch_size=4, progress=False)

    batches = batches_of(waves, 4, lambda chunk: extractor(chunk, sampling_rate=16000, padding=True, return_tensors="pt"))
    pooled = lambda m, b: m.projector(m.wav2vec2(**b).last_hidden_state).mean(dim=1)  # noqa: E731
    features, _ = eh.hand_features(model, batches, pooled)
    expected = compute_dlr(features, eh.head_outputs(features, model.classifier), labels=torch.tensor(data["label"]))
    assert abs(report.dlr - expected.dlr) <= TOL
    assert report.result.num_samples == 14 and report.dataset["input_columns"] == ["audio"]
    assert (report.result.feature_dim, report.result.num_outputs) == (24, 3)


def test_plot_writes_a_png(demo, tmp_path, capsys):
    plot = tmp_path / "plots" / "report.png"
    assert main(["evaluate", str(demo["rich"]), "--dataset", str(demo["data"]), "--num-samples", "60", "--plot", str(plot), "--quiet"]) == 0
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(plot) as image:
        assert image.size[0] > 200 and image.size[1] > 200
    assert f"plot written to {plot}" in capsys.readouterr().out
