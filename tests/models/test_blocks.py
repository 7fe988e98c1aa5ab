"""Richness profile across depth: every block's D_LR, in one forward, against features recomputed by hand.

The reference reads ``output_hidden_states`` at the positions each head reads (CLS, the last non-pad
token, every kept token, the global average of a stage), takes the model's own logits, and calls
``compute_dlr`` per layer; the profile must equal it to 1e-8 while running the model once per batch.
"""

from __future__ import annotations

from collections.abc import Callable

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


def cls(hidden: torch.Tensor, batch: dict) -> torch.Tensor:
    return hidden[:, 0]


def last_token(hidden: torch.Tensor, batch: dict) -> torch.Tensor:
    return hidden[torch.arange(hidden.shape[0]), batch["attention_mask"].sum(dim=1) - 1]


def every_token(hidden: torch.Tensor, batch: dict) -> torch.Tensor:
    return hidden[batch["attention_mask"].bool()]


def stage_mean(hidden: torch.Tensor, batch: dict) -> torch.Tensor:
    return hidden.mean(dim=(2, 3))


# family, batches, positions the head reads, the final norm whose input is the last block's output
# (GPT-2 and Llama report hidden_states[-1] after that norm), logits rows like the positions
FAMILIES: dict[str, tuple[Callable, Callable, str | None]] = {
    "bert": (text_batches, cls, None),
    "bert-token": (text_batches, every_token, None),
    "gpt2": (text_batches, last_token, "transformer.ln_f"),
    "llama": (text_batches, last_token, "model.norm"),
    "vit": (image_batches, cls, None),
    "resnet": (image_batches, stage_mean, None),
    "convnext": (image_batches, stage_mean, None),
    "distilbert": (text_batches, cls, None),
}


@torch.inference_mode()
def by_hand(model, batches, read: Callable, final_norm: str | None) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Per block, the features at the head's positions (float64), and the logits at the same rows."""
    pre_norm: list[torch.Tensor] = []
    handle = None
    if final_norm is not None:
        handle = model.get_submodule(final_norm).register_forward_hook(lambda m, args, out: pre_norm.append(args[0]))
    layers, logits = None, []
    try:
        for batch in batches:
            out = model(**batch, output_hidden_states=True)
            hidden = list(out.hidden_states[1:])
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
    make_batches, read, final_norm = FAMILIES[family]
    model, batches = mb.build(family), make_batches()
    measurement, forwards = profiled(model, batches, MeasurementOptions(layers="blocks"))
    assert forwards == len(batches)  # one forward per batch for the head and every block
    features, logits = by_hand(model, batches, read, final_norm)
    profile = measurement.profile()
    path, stack = find_blocks(model)
    assert [(r.name, r.depth, r.module_path) for r in profile] == [
        (f"block_{i:02d}", i + 1, f"{path}.{i}") for i in range(len(stack))
    ]
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
