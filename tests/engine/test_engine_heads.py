"""Head families through ``evaluate()`` (issue #9), each against features recomputed by hand.

Token positions that do not depend on labels, Whisper with short clips, multiple choice (plain
and SWAG-style columns), DeiT's averaged heads, layer-wise D_LR without a head, encoder-decoder
LM heads, and models that have no classification head at all.
"""

from __future__ import annotations

import datasets
import numpy as np
import pytest
import torch
import transformers as tf
from PIL import Image

import engine_helpers as eh
from dlr_hf.engine import evaluate
from dlr_hf.errors import HeadNotFoundError, InputColumnError
from dlr_hf.metric import DLRAccumulator, compute_dlr
from dlr_hf.surfaces.cli import main

TOL = 1e-10
WORD_RULE = "first sub-token of each word (special tokens and padding excluded)"


def tiny_config(cls: type, **kwargs) -> tf.PretrainedConfig:
    return cls(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37, **kwargs)


# --- token classification: positions never depend on labels ---------------------------------------------
def test_token_positions_are_the_same_with_and_without_labels(tokenizer):
    model = eh.tiny_bert_tokens(num_labels=5)
    rng = np.random.default_rng(11)
    vocabulary = eh.WORDS + ["mountaineering", "xylophones", "photosynthesis"]
    words = [list(rng.choice(vocabulary, size=int(rng.integers(2, 7)))) for _ in range(10)]
    tags = [[int(t) for t in rng.integers(0, 5, size=len(row))] for row in words]
    labelled = evaluate(model, datasets.Dataset.from_dict({"tokens": words, "ner_tags": tags}), processor=tokenizer,
                        num_samples=None, batch_size=4, progress=False)
    unlabelled = evaluate(model, datasets.Dataset.from_dict({"tokens": words}), processor=tokenizer,
                          num_samples=None, batch_size=4, progress=False)

    features, split_words = [], 0
    with torch.inference_mode():
        for chunk in eh.chunks(words, 4):
            encoding = tokenizer(chunk, is_split_into_words=True, padding=True, return_tensors="pt")
            hidden = model.bert(**encoding).last_hidden_state
            for row, row_words in enumerate(chunk):
                word_ids = encoding.word_ids(row)
                for w in range(len(row_words)):
                    positions = [i for i, wid in enumerate(word_ids) if wid == w]
                    split_words += len(positions) > 1
                    features.append(hidden[row, positions[0]].double())
    assert split_words > 0
    features = torch.stack(features)
    expected = compute_dlr(features, eh.head_outputs(features, model.classifier))

    n = sum(len(row) for row in words)
    for report in (labelled, unlabelled):
        assert report.result.num_samples == n  # one per word, labels or not
        assert report.head["positions"] == WORD_RULE
        assert report.to_dict()["head"]["positions"] == WORD_RULE
        assert abs(report.dlr - expected.dlr) <= TOL
    assert labelled.result.spectrum == unlabelled.result.spectrum  # the very same features


def test_token_positions_without_word_ids_skip_special_tokens():
    """A slow tokenizer (ByT5: bytes, no word ids): every non-padding, non-special token, labels or not."""
    tokenizer = tf.ByT5Tokenizer()
    assert not tokenizer("ab", return_tensors="pt").is_fast
    torch.manual_seed(0)
    model = tf.BertForTokenClassification(tiny_config(tf.BertConfig, vocab_size=len(tokenizer), num_labels=3,
                                                      max_position_embeddings=64)).eval()
    text = eh.sentences(8, seed=12, low=2, high=5)
    tags = [[-100 if i % 4 == 0 else i % 3 for i in range(len(t.encode()))] for t in text]
    reports = [
        evaluate(model, datasets.Dataset.from_dict(columns), processor=tokenizer, num_samples=None, batch_size=3, progress=False)
        for columns in ({"text": text, "labels": tags}, {"text": text})
    ]
    features = []
    with torch.inference_mode():
        for chunk in eh.chunks(text, 3):
            encoding = tokenizer(chunk, padding=True, return_tensors="pt")
            hidden = model.bert(**encoding).last_hidden_state
            for row, sentence in enumerate(chunk):
                features.append(hidden[row, : len(sentence.encode())].double())  # bytes, then </s> (special)
    features = torch.cat(features)
    expected = compute_dlr(features, eh.head_outputs(features, model.classifier))
    for report in reports:
        assert report.result.num_samples == sum(len(t.encode()) for t in text)
        assert report.head["positions"] == "every non-padding, non-special token (the tokenizer gives no word ids)"
        assert abs(report.dlr - expected.dlr) <= TOL


# --- Whisper audio classification with clips shorter than its 30 s chunk ------------------------------------
def test_whisper_short_clips_are_padded_to_the_chunk():
    torch.manual_seed(0)
    config = tf.WhisperConfig(d_model=16, encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=20, decoder_layers=1,
                              decoder_attention_heads=2, decoder_ffn_dim=20, num_mel_bins=80, max_source_positions=1500,
                              classifier_proj_size=12, num_labels=3, vocab_size=100, pad_token_id=0, bos_token_id=1,
                              eos_token_id=2, decoder_start_token_id=1)
    model = tf.WhisperForAudioClassification(config).eval()
    extractor = tf.WhisperFeatureExtractor()  # 80 mel bins, 16 kHz, 30 s chunks (3000 frames)
    rng = np.random.default_rng(13)
    waves = [rng.standard_normal(int(rng.integers(4000, 12000))).astype(np.float32) for _ in range(6)]
    data = datasets.Dataset.from_dict({"audio": [{"array": w.tolist(), "sampling_rate": 16000} for w in waves],
                                       "label": [i % 3 for i in range(6)]})
    report = evaluate(model, data, processor=extractor, num_samples=None, batch_size=3, progress=False)

    features = []
    with torch.inference_mode():
        for chunk in eh.chunks(waves, 3):
            inputs = extractor(chunk, sampling_rate=16000, padding="max_length", return_tensors="pt")
            assert inputs["input_features"].shape == (3, 80, 3000)
            features.append(model.projector(model.encoder(inputs["input_features"]).last_hidden_state).mean(dim=1).double())
    features = torch.cat(features)
    expected = compute_dlr(features, eh.head_outputs(features, model.classifier), labels=torch.tensor(data["label"]))
    assert abs(report.dlr - expected.dlr) <= TOL
    assert report.result.num_samples == 6 and report.head["module_path"] == "classifier"
    assert (report.result.feature_dim, report.result.num_outputs) == (12, 3)


# --- multiple choice ----------------------------------------------------------------------------------------
def choice_model() -> tf.BertForMultipleChoice:
    torch.manual_seed(0)
    return tf.BertForMultipleChoice(tiny_config(tf.BertConfig, vocab_size=30522, max_position_embeddings=64)).eval()


def hand_choice_dlr(model, tokenizer, pairs: list[tuple[str, list[str]]], batch_size: int) -> tuple[float, int]:
    """Each (context, choice) pair encoded and pooled by hand; D_LR of the 1-wide choice scores."""
    features = []
    with torch.inference_mode():
        for chunk in eh.chunks(pairs, batch_size):
            firsts = [context for context, choices in chunk for _ in choices]
            seconds = [choice for _, choices in chunk for choice in choices]
            encoding = tokenizer(firsts, seconds, padding=True, return_tensors="pt")
            features.append(model.bert(**encoding).pooler_output.double())
    features = torch.cat(features)
    return compute_dlr(features, eh.head_outputs(features, model.classifier)).dlr, features.shape[0]


def test_multiple_choice_swag_columns(tokenizer):
    model, rng = choice_model(), np.random.default_rng(14)
    first, second = eh.sentences(10, seed=15), eh.sentences(10, seed=16, low=1, high=3)
    endings = [eh.sentences(10, seed=17 + k, low=2, high=6) for k in range(4)]
    data = datasets.Dataset.from_dict({"sent1": first, "sent2": second, **{f"ending{k}": endings[k] for k in range(4)},
                                       "label": [int(x) for x in rng.integers(0, 4, size=10)]})
    report = evaluate(model, data, processor=tokenizer, num_samples=None, batch_size=4, progress=False)
    pairs = [(first[i], [f"{second[i]} {endings[k][i]}" for k in range(4)]) for i in range(10)]
    dlr, n = hand_choice_dlr(model, tokenizer, pairs, 4)
    assert report.result.num_samples == n == 40  # each example × choice
    assert (report.head["selection"], report.result.num_outputs) == ("per_choice", 1)
    assert abs(report.dlr - dlr) <= TOL
    assert report.dataset["input_columns"] == ["sent1", "sent2"]
    assert any("each example × choice is one sample" in w for w in report.warnings)
    named = evaluate(model, data, processor=tokenizer, num_samples=None, batch_size=4, progress=False,
                     input_columns=["sent1", "sent2", "ending0", "ending1", "ending2", "ending3"])
    assert named.dlr == report.dlr and named.result.num_samples == 40


def test_multiple_choice_context_and_choice_list(tokenizer):
    model = choice_model()
    questions = eh.sentences(9, seed=21)
    choices = [eh.sentences(3, seed=100 + i, low=1, high=4) for i in range(9)]
    data = datasets.Dataset.from_dict({"question": questions, "choices": choices, "label": [i % 3 for i in range(9)]})
    report = evaluate(model, data, processor=tokenizer, num_samples=None, batch_size=4, progress=False)
    dlr, n = hand_choice_dlr(model, tokenizer, list(zip(questions, choices)), 4)
    assert report.result.num_samples == n == 27
    assert abs(report.dlr - dlr) <= TOL


def test_multiple_choice_without_choices_says_what_it_needs(tokenizer):
    with pytest.raises(InputColumnError, match=r"multiple-choice model needs examples with choices.*sent1, sent2, ending0"):
        evaluate(choice_model(), eh.text_dataset(6), processor=tokenizer, num_samples=None, progress=False)


# --- DeiT: class and distillation heads averaged --------------------------------------------------------------
def deit_setup() -> tuple[tf.DeiTForImageClassificationWithTeacher, object, datasets.Dataset]:
    torch.manual_seed(0)
    config = tiny_config(tf.DeiTConfig, image_size=16, patch_size=8, num_labels=3)
    model = tf.DeiTForImageClassificationWithTeacher(config).eval()
    processor = tf.DeiTImageProcessorPil(size={"height": 16, "width": 16}, crop_size={"height": 16, "width": 16})
    rng = np.random.default_rng(18)
    images = [Image.fromarray(rng.integers(0, 256, size=(20, 20, 3), dtype=np.uint8)) for _ in range(12)]
    data = datasets.Dataset.from_dict({"image": images, "label": [i % 3 for i in range(12)]}).cast_column("image", datasets.Image())
    return model, processor, data


def test_deit_distillation_head_features_side_by_side():
    model, processor, data = deit_setup()
    report = evaluate(model, data, processor=processor, num_samples=None, batch_size=5, progress=False)
    features, logits = [], []
    with torch.inference_mode():
        for chunk in eh.chunks(list(range(12)), 5):
            pixels = processor(images=[data[i]["image"].convert("RGB") for i in chunk], return_tensors="pt")["pixel_values"]
            hidden = model.deit(pixel_values=pixels).last_hidden_state
            features.append(torch.cat([hidden[:, 0], hidden[:, 1]], dim=1).double())
            logits.append(model(pixel_values=pixels).logits.double())
    features, logits = torch.cat(features), torch.cat(logits)
    cls, dist = model.cls_classifier, model.distillation_classifier
    outputs = features @ (torch.cat([cls.weight, dist.weight], dim=1).double().T / 2) + (cls.bias + dist.bias).double() / 2
    torch.testing.assert_close(outputs, logits)  # logits = Φ·Wᵀ + b with W = ½[W_cls W_dist]
    expected = compute_dlr(features, outputs, labels=torch.tensor(data["label"]))
    assert abs(report.dlr - expected.dlr) <= TOL
    assert report.result.feature_dim == 64
    assert any("average of the outputs of 'cls_classifier' and 'distillation_classifier'" in w
               for w in report.to_dict()["warnings"])

    layered = evaluate(model, data, processor=processor, num_samples=None, batch_size=5, layer="cls_classifier", progress=False)
    expected_layer = compute_dlr(features[:, :32], logits)  # cls_classifier's input; the model's logits
    assert abs(layered.dlr - expected_layer.dlr) <= TOL


# --- layer-wise D_LR on a model whose logits come from no Linear ---------------------------------------------
class ReadoutConfig(tf.PretrainedConfig):
    model_type = "readout-test"


class ReadoutModel(tf.PreTrainedModel):
    """Logits from a matrix product; `classifier` is an auxiliary Linear of the logits' shape."""

    config_class = ReadoutConfig

    def __init__(self, config: ReadoutConfig) -> None:
        super().__init__(config)
        self.embed = torch.nn.Embedding(30522, 16)
        self.body = torch.nn.Linear(16, 16)
        self.classifier = torch.nn.Linear(16, 3)
        self.readout = torch.nn.Parameter(torch.randn(3, 16))

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        mask = attention_mask.unsqueeze(-1).float()
        hidden = torch.relu(self.body((self.embed(input_ids) * mask).sum(1) / mask.sum(1)))
        return tf.modeling_outputs.SequenceClassifierOutput(logits=hidden @ self.readout.T, hidden_states=(self.classifier(hidden),))


def test_layer_wise_without_a_head(tokenizer):
    torch.manual_seed(0)
    model = ReadoutModel(ReadoutConfig()).eval()
    text = eh.sentences(12, seed=19)
    data = datasets.Dataset.from_dict({"text": text})
    with pytest.raises(HeadNotFoundError, match=r"'classifier' has the logits' shape, but its output is not the logits"):
        evaluate(model, data, processor=tokenizer, num_samples=None, progress=False)
    report = evaluate(model, data, processor=tokenizer, num_samples=None, batch_size=5, layer="body",
                      reference_model=model, progress=False)
    with torch.inference_mode():
        encoding = tokenizer(text, padding=True, return_tensors="pt")
        mask = encoding["attention_mask"].unsqueeze(-1).float()
        pooled = ((model.embed(encoding["input_ids"]) * mask).sum(1) / mask.sum(1)).double()
        logits = torch.relu(model.body(pooled.float())).double() @ model.readout.double().T
    expected = compute_dlr(pooled, logits)
    assert abs(report.dlr - expected.dlr) <= 1e-8
    assert report.head["module_path"] is None and report.head["layer"] == "body"
    assert abs(report.baselines["s_init"] - 1.0) <= TOL
    assert any("layer-wise only" in w for w in report.warnings)


# --- encoder-decoder LM: the decoder's positions -------------------------------------------------------------
def test_seq2seq_lm_uses_every_decoder_position(tokenizer):
    torch.manual_seed(0)
    config = tf.BartConfig(vocab_size=30522, d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                           decoder_attention_heads=2, encoder_ffn_dim=20, decoder_ffn_dim=20, max_position_embeddings=64,
                           pad_token_id=0, bos_token_id=101, eos_token_id=102, decoder_start_token_id=102)
    model = tf.BartForConditionalGeneration(config).eval()
    text = eh.sentences(8, seed=20)
    report = evaluate(model, datasets.Dataset.from_dict({"text": text}), processor=tokenizer, num_samples=None,
                      batch_size=4, progress=False)
    features = []
    with torch.inference_mode():
        for chunk in eh.chunks(text, 4):
            encoding = tokenizer(chunk, padding=True, return_tensors="pt")
            decoder = model.model(input_ids=encoding["input_ids"], attention_mask=encoding["attention_mask"]).last_hidden_state
            features.append(decoder.flatten(0, 1).double())  # no decoder mask: every decoder position
    features = torch.cat(features)
    hand = DLRAccumulator(track_outputs=False)  # a 30522-wide head: never materialise C×C output moments
    hand.update(features)
    expected = hand.compute(head_weight=model.lm_head.weight.double())
    assert report.result.num_samples == features.shape[0]
    assert report.head["positions"] == "every decoder position (no decoder_attention_mask given)"
    assert abs(report.dlr - expected.dlr) <= TOL


# --- models with no classification head ---------------------------------------------------------------------
def test_bare_models_are_refused_with_what_to_load(tokenizer, tmp_path, capsys):
    torch.manual_seed(0)
    bert = tf.BertModel(tiny_config(tf.BertConfig, vocab_size=30522, max_position_embeddings=64)).eval()
    with pytest.raises(HeadNotFoundError, match=r"^BertModel has no classification head.*AutoModelForSequenceClassification"):
        evaluate(bert, eh.text_dataset(6), processor=tokenizer, progress=False)

    clip = tf.CLIPModel(tf.CLIPConfig(
        text_config=dict(hidden_size=16, intermediate_size=20, num_hidden_layers=1, num_attention_heads=2,
                         vocab_size=30522, bos_token_id=101, eos_token_id=102, pad_token_id=0),
        vision_config=dict(hidden_size=16, intermediate_size=20, num_hidden_layers=1, num_attention_heads=2,
                           image_size=16, patch_size=8),
        projection_dim=8,
    )).eval()
    images = datasets.Dataset.from_dict({"image": [Image.new("RGB", (16, 16), (i, 0, 0)) for i in range(4)]})
    with pytest.raises(HeadNotFoundError, match=r"^CLIPModel has no classification head.*AutoModelForImageClassification"):
        evaluate(clip, images, progress=False)  # not a modality message: the model itself is the problem

    bert.save_pretrained(tmp_path / "bare")
    tokenizer.save_pretrained(tmp_path / "bare")
    eh.text_dataset(6).save_to_disk(str(tmp_path / "data"))
    assert main(["evaluate", str(tmp_path / "bare"), "--dataset", str(tmp_path / "data"), "--quiet"]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("dlr-hf: error:")]
    assert len(lines) == 1 and "BertModel has no classification head" in lines[0]
