"""Richness profile across depth: every block's D_LR, in one forward, against features recomputed by hand.

The reference reads ``output_hidden_states`` at the positions each head reads (CLS, the last non-pad
token, every kept token, the global average of a stage), takes the model's own logits, and calls
``compute_dlr`` per layer; the profile must equal it to 1e-8 while running the model once per batch.

What "where the head reads" means, family by family, where it is not plain:

* every block is read BEFORE any final norm the model applies after the stack (GPT-2's ``ln_f``,
  Llama's ``norm``, ViT / DeiT ``layernorm``, the stable-layer-norm wav2vec2's ``encoder.layer_norm``)
  and before any learned layer between the stack and the head (BERT's pooler, wav2vec2's
  ``projector``, BART's ``classification_head.dense``): only the parameter-free selection or pooling
  of the head's input is applied.
* DeiT with teacher: the logits average a CLS head (token 0) and a distillation head (token 1), so a
  block's features are its tokens 0 and 1 side by side (p = 2d), as the head's (W = ½[W_cls W_dist]).
* wav2vec2 sequence classification: the mean over the frames made from non-padding samples (the
  first ``L_out(sum(attention_mask))`` frames, L_out from the conv kernels and strides), over every
  frame when no ``attention_mask`` is given, as the head pools the projector's output.
* BART / T5 sequence classification: the profiled stack is the decoder's (the encoder's blocks are
  not in the profile); each decoder block is read at the LAST EOS token of ``input_ids`` in each row
  (pairs carry three EOS tokens), which is where the head reads the decoder's final state (T5's after
  the decoder's ``final_layer_norm``, which the blocks are read before).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import pytest
import torch

import model_builders as mb
from dlr_hf.engine import Measurement, MeasurementOptions, make_accelerator
from dlr_hf.errors import LayerNotFoundError, OutputsTooWideError
from dlr_hf.metric import compute_dlr
from dlr_hf.models import find_blocks, locate_head, profile_layers

TOL = 1e-8


def text_batches(count: int = 3, rows: int = 6) -> list[dict[str, torch.Tensor]]:
    """Right-padded token batches of varied lengths (pad id 0 never occurs inside a row)."""
    generator = torch.Generator().manual_seed(5)
    batches = []
    for _ in range(count):
        ids = torch.randint(2, mb.VOCAB, (rows, 7), generator=generator)
        lengths = torch.randint(2, 8, (rows,), generator=generator)
        mask = (torch.arange(7)[None, :] < lengths[:, None]).long()
        batches.append({"input_ids": ids * mask, "attention_mask": mask})
    return batches


def image_batches(count: int = 3, rows: int = 6) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(6)
    return [{"pixel_values": torch.randn(rows, 3, 16, 16, generator=generator)} for _ in range(count)]


def audio_batches(count: int = 3, rows: int = 6) -> list[dict[str, torch.Tensor]]:
    """Right-padded waveforms of 300-480 samples with their attention mask; the last batch has no mask."""
    generator = torch.Generator().manual_seed(7)
    batches = []
    for index in range(count):
        waves = torch.randn(rows, 480, generator=generator)
        if index == count - 1:
            batches.append({"input_values": waves})
            continue
        lengths = torch.randint(300, 481, (rows,), generator=generator)
        lengths[0] = 480  # the batch is as long as its longest row
        mask = (torch.arange(480)[None, :] < lengths[:, None]).long()
        batches.append({"input_values": waves * mask, "attention_mask": mask})
    return batches


def spectrogram_batches(count: int = 3, rows: int = 6) -> list[dict[str, torch.Tensor]]:
    """Mel spectrograms (24 frames × 16 bins) for the tiny Audio Spectrogram Transformer."""
    generator = torch.Generator().manual_seed(9)
    return [{"input_values": torch.randn(rows, 24, 16, generator=generator)} for _ in range(count)]


def pair_batches(count: int = 3, rows: int = 6) -> list[dict[str, torch.Tensor]]:
    """Sentence pairs ``<s> A </s></s> B </s>`` (three EOS per row, as BART's tokenizer makes them), right-padded."""
    generator = torch.Generator().manual_seed(8)
    batches = []
    for _ in range(count):
        encoded = []
        for first, second in torch.randint(1, 5, (rows, 2), generator=generator).tolist():
            a, b = (torch.randint(3, mb.VOCAB, (n,), generator=generator).tolist() for n in (first, second))
            encoded.append([1, *a, mb.EOS, mb.EOS, *b, mb.EOS])
        width = max(len(row) for row in encoded)
        ids = torch.tensor([row + [mb.PAD] * (width - len(row)) for row in encoded])
        batches.append({"input_ids": ids, "attention_mask": (ids != mb.PAD).long()})
    return batches


def cls(hidden: torch.Tensor, batch: dict) -> torch.Tensor:
    return hidden[:, 0]


def last_token(hidden: torch.Tensor, batch: dict) -> torch.Tensor:
    return hidden[torch.arange(hidden.shape[0]), batch["attention_mask"].sum(dim=1) - 1]


def every_token(hidden: torch.Tensor, batch: dict) -> torch.Tensor:
    return hidden[batch["attention_mask"].bool()]


def stage_mean(hidden: torch.Tensor, batch: dict) -> torch.Tensor:
    return hidden.mean(dim=(2, 3))


def cls_and_distillation(hidden: torch.Tensor, batch: dict) -> torch.Tensor:
    return torch.cat([hidden[:, 0], hidden[:, 1]], dim=1)


def first_two_averaged(hidden: torch.Tensor, batch: dict) -> torch.Tensor:
    """AST's pooled output: the average of its CLS and distillation tokens."""
    return (hidden[:, 0] + hidden[:, 1]) / 2


def frame_mean(hidden: torch.Tensor, batch: dict) -> torch.Tensor:
    """Mean over the frames the conv feature encoder makes from each row's non-padding samples."""
    if "attention_mask" not in batch:
        return hidden.mean(dim=1)
    rows = []
    for row, samples in enumerate(batch["attention_mask"].sum(dim=1).tolist()):
        for kernel, stride in zip(mb.CONV_KERNEL, mb.CONV_STRIDE):
            samples = (samples - kernel) // stride + 1
        rows.append(hidden[row, :samples].mean(dim=0))
    return torch.stack(rows)


def last_eos(hidden: torch.Tensor, batch: dict) -> torch.Tensor:
    rows = batch["input_ids"].tolist()
    return torch.stack([hidden[r, max(i for i, token in enumerate(ids) if token == mb.EOS)] for r, ids in enumerate(rows)])


class Family(NamedTuple):
    """Batches, the positions the head reads, the block stack's path, the final norm whose input is the
    last block's output (GPT-2 and Llama report hidden_states[-1] after that norm), the output field
    holding the stack's hidden states; the logits rows are taken like the positions."""

    batches: Callable
    read: Callable
    stack: str
    final_norm: str | None = None
    states: str = "hidden_states"


FAMILIES: dict[str, Family] = {
    "bert": Family(text_batches, cls, "bert.encoder.layer"),
    "bert-token": Family(text_batches, every_token, "bert.encoder.layer"),
    "gpt2": Family(text_batches, last_token, "transformer.h", "transformer.ln_f"),
    "llama": Family(text_batches, last_token, "model.layers", "model.norm"),
    "vit": Family(image_batches, cls, "vit.layers"),
    "resnet": Family(image_batches, stage_mean, "resnet.encoder.stages"),
    "convnext": Family(image_batches, stage_mean, "convnext.encoder.stages"),
    "distilbert": Family(text_batches, cls, "distilbert.transformer.layer"),
    "deit-teacher": Family(image_batches, cls_and_distillation, "deit.layers"),
    "deit": Family(image_batches, cls, "deit.layers"),
    "wav2vec2": Family(audio_batches, frame_mean, "wav2vec2.encoder.layers"),
    "ast": Family(spectrogram_batches, first_two_averaged, "audio_spectrogram_transformer.layers"),
    "wav2vec2-stable": Family(audio_batches, frame_mean, "wav2vec2.encoder.layers", "wav2vec2.encoder.layer_norm"),
    "bart": Family(pair_batches, last_eos, "model.decoder.layers", states="decoder_hidden_states"),
    "t5": Family(pair_batches, last_eos, "transformer.decoder.block", "transformer.decoder.final_layer_norm",
                 "decoder_hidden_states"),
}


@torch.inference_mode()
def by_hand(
    model, batches, read: Callable, final_norm: str | None, states: str = "hidden_states"
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Per block, the features at the head's positions (float64), and the logits at the same rows."""
    pre_norm: list[torch.Tensor] = []
    handle = None
    if final_norm is not None:
        handle = model.get_submodule(final_norm).register_forward_hook(lambda m, args, out: pre_norm.append(args[0]))
    layers, logits = None, []
    try:
        for batch in batches:
            out = model(**batch, output_hidden_states=True)
            hidden = list(getattr(out, states)[1:])  # [0] is the stack's input (the embeddings)
            if final_norm is not None:
                hidden[-1] = pre_norm.pop()
            rows = [read(h, batch).double() for h in hidden]
            layers = [[r] for r in rows] if layers is None else [acc + [r] for acc, r in zip(layers, rows)]
            logits.append((every_token(out.logits, batch) if read is every_token else out.logits).double())
    finally:
        if handle is not None:
            handle.remove()
    return [torch.cat(rows) for rows in layers], torch.cat(logits)


def profiled(model, batches, options: MeasurementOptions, reference=None):
    """The profile from one Measurement, and how often the model's forward ran (the head located first)."""
    head = locate_head(model, batches[0])
    calls = []
    handle = model.register_forward_hook(lambda m, args, out: calls.append(1))
    try:
        measurement = Measurement(model, make_accelerator(), options, head=head, reference=reference)
        measurement.run(batches)
    finally:
        handle.remove()
    return measurement, len(calls)


@pytest.mark.parametrize("family", FAMILIES)
def test_block_profile_equals_hidden_states_read_by_hand(family):
    spec = FAMILIES[family]
    model, batches = mb.build(family), spec.batches()
    measurement, forwards = profiled(model, batches, MeasurementOptions(layers="blocks"))
    assert forwards == len(batches)  # one forward per batch for the head and every block
    features, logits = by_hand(model, batches, spec.read, spec.final_norm, spec.states)
    profile = measurement.profile()
    path, stack = find_blocks(model)
    assert path == spec.stack and len(stack) == 2
    assert [(r.name, r.depth, r.module_path) for r in profile] == [
        (f"block_{i:02d}", i + 1, f"{path}.{i}") for i in range(len(stack))
    ]
    assert len(features) == len(profile)
    for reading, phi in zip(profile, features):
        expected = compute_dlr(phi, logits)
        assert reading.result.num_samples == phi.shape[0] and reading.result.feature_dim == phi.shape[1]
        assert abs(reading.result.dlr - expected.dlr) <= TOL, reading.name
        assert (reading.result.rank, reading.result.feature_rank) == (expected.rank, expected.feature_rank)
        assert reading.s_init is None
    head = measurement.result()  # the final-head D_LR, as without a profile
    alone = Measurement(model, make_accelerator(), MeasurementOptions(), head=measurement.head)
    alone.run(batches)
    assert head.dlr == pytest.approx(alone.result().dlr, abs=1e-12)


def test_linear_patterns_read_the_inputs_of_the_matched_layers():
    model, batches = mb.build("bert"), text_batches()
    pattern = "bert.encoder.layer.*.output.dense"
    measurement, forwards = profiled(model, batches, MeasurementOptions(layers=f"{pattern}, classifier"))
    assert forwards == len(batches)
    seen: dict[str, list[torch.Tensor]] = {}
    paths = ["bert.encoder.layer.0.output.dense", "bert.encoder.layer.1.output.dense", "classifier"]
    handles = [
        model.get_submodule(p).register_forward_hook(lambda m, args, out, p=p: seen.setdefault(p, []).append(args[0]))
        for p in paths
    ]
    with torch.inference_mode():
        logits = torch.cat([model(**batch).logits for batch in batches]).double()
    for handle in handles:
        handle.remove()
    masks = [batch["attention_mask"] for batch in batches]
    profile = measurement.profile()
    assert [r.name for r in profile] == paths and [r.depth for r in profile] == [1, 2, 3]
    for reading, path in zip(profile, paths):
        rows = [x if x.ndim == 2 else (x * m[..., None]).sum(1) / m.sum(1, keepdim=True) for x, m in zip(seen[path], masks)]
        expected = compute_dlr(torch.cat(rows).double(), logits)
        assert abs(reading.result.dlr - expected.dlr) <= TOL, path


def test_speech_layers_average_the_frames_of_non_padding_samples():
    """Layer-wise, wav2vec2's projector (whose input is the last block's output) is read as its head pools
    it: averaged over the frames made from non-padding samples, not over every frame of the padded batch."""
    model, batches = mb.build("wav2vec2"), audio_batches()
    measurement, forwards = profiled(model, batches, MeasurementOptions(layers="projector"))
    assert forwards == len(batches)
    features, logits = by_hand(model, batches, frame_mean, None)
    (reading,) = measurement.profile()
    assert reading.name == "projector" and reading.result.feature_dim == 32
    assert abs(reading.result.dlr - compute_dlr(features[-1], logits).dlr) <= TOL


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    x, y = x - x.mean(0), y - y.mean(0)
    return float((x.T @ y).norm() ** 2 / ((x.T @ x).norm() * (y.T @ y).norm()))


def test_profile_s_init_is_cka_to_the_reference_models_same_block():
    model, batches = mb.build("vit"), image_batches()
    torch.manual_seed(1)
    reference = mb._BUILDERS["vit"]().eval()
    measurement, forwards = profiled(model, batches, MeasurementOptions(layers="blocks"), reference=reference)
    assert forwards == len(batches)
    features, _ = by_hand(model, batches, cls, None)
    initial, _ = by_hand(reference, batches, cls, None)
    for reading, phi, phi0 in zip(measurement.profile(), features, initial):
        assert reading.s_init == pytest.approx(linear_cka(phi0, phi), abs=1e-10)


@pytest.mark.parametrize("layers", ["blocks", "vit.layers.*.mlp.fc2, classifier"])
def test_profile_dlr_initial_is_the_reference_models_own_profile(layers):
    """Each layer's D_LR at initialisation is the reference's profile measured alone (its features against
    its own logits, pinned by hand above), from the same single forward of each model per batch."""
    model, batches = mb.build("vit"), image_batches()
    torch.manual_seed(1)
    reference = mb._BUILDERS["vit"]().eval()
    reference_calls = []
    handle = reference.register_forward_hook(lambda m, args, out: reference_calls.append(1))
    try:
        measurement, forwards = profiled(model, batches, MeasurementOptions(layers=layers), reference=reference)
    finally:
        handle.remove()
    assert forwards == len(batches) and len(reference_calls) == len(batches)
    alone, _ = profiled(reference, batches, MeasurementOptions(layers=layers))
    profile, expected = measurement.profile(), alone.profile()
    assert [r.name for r in profile] == [r.name for r in expected] and len(profile) >= 2
    for reading, initial in zip(profile, expected):
        assert reading.initial is not None and reading.initial.num_samples == initial.result.num_samples
        assert reading.dlr_initial == pytest.approx(initial.result.dlr, abs=1e-10), reading.name
        assert (reading.initial.rank, reading.initial.feature_rank) == (initial.result.rank, initial.result.feature_rank)
        row = reading.to_dict()
        assert row["dlr_initial"] == reading.dlr_initial
        assert row["dlr_change"] == pytest.approx(reading.result.dlr - reading.dlr_initial, abs=1e-15)
        assert "dlr_initial" not in initial.to_dict() and "dlr_change" not in initial.to_dict() and initial.initial is None
    if layers == "blocks":  # the blocks' reference values, by hand: its CLS features against its own logits
        phi0, logits0 = by_hand(reference, batches, cls, None)
        for reading, features in zip(profile, phi0):
            assert abs(reading.dlr_initial - compute_dlr(features, logits0).dlr) <= TOL, reading.name


def test_wide_outputs_are_refused_for_a_profile():
    import transformers as tf

    model = tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=5000, n_embd=8, n_layer=1, n_head=2, n_positions=16)).eval()
    batch = {"input_ids": torch.randint(0, 5000, (2, 5))}
    measurement = Measurement(model, make_accelerator(), MeasurementOptions(layers="blocks"))
    with pytest.raises(OutputsTooWideError, match="moderate width.*C = 5000"):
        measurement.run([batch])


def test_layers_that_name_nothing_are_refused_with_what_exists():
    model = mb.build("bert")
    with pytest.raises(LayerNotFoundError, match="matches no linear layer.*one part"):
        profile_layers(model, "bert.encoder.*.dense")  # `*` is one path part: layer.N.output needs three
    with pytest.raises(LayerNotFoundError, match="not a linear layer"):
        profile_layers(model, "bert.encoder")
    with pytest.raises(LayerNotFoundError, match="no stack of repeated blocks"):
        profile_layers(torch.nn.Sequential(torch.nn.Linear(2, 2)), "blocks")
