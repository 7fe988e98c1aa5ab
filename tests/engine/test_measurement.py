"""``Measurement`` driven batch by batch, against independent computations.

The features are recomputed by hand (BERT's classifier reads the pooler output) and fed to
``compute_dlr`` or to a numpy linear CKA; the engine object must agree however it is driven.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import engine_helpers as eh
from dlr_hf.engine import Measurement, MeasurementOptions, evaluate, make_accelerator
from dlr_hf.metric import compute_dlr

TOL = 1e-8  # the head-weight path drops directions below float32's rounding floor (see test_engine_evaluate)


def encoded(tokenizer, rows: list[int], texts: list[str], labels: list[int]) -> dict[str, torch.Tensor]:
    batch = dict(tokenizer([texts[i] for i in rows], padding=True, return_tensors="pt"))
    return {**batch, "labels": torch.tensor([labels[i] for i in rows])}


@pytest.fixture(scope="module")
def text_batches(tokenizer) -> list[dict[str, torch.Tensor]]:
    texts, labels = eh.sentences(30, seed=3), [i % 3 for i in range(30)]
    return [encoded(tokenizer, rows, texts, labels) for rows in eh.chunks(list(range(30)), 8)]


def model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {key: value for key, value in batch.items() if key != "labels"}


def pooler(model, batch) -> torch.Tensor:
    """What BERT's classifier reads: the pooler's tanh(dense([CLS])) (dropout is off in eval mode)."""
    return model.bert(**batch).pooler_output


def hand_dlr(model, batches) -> float:
    features, _ = eh.hand_features(model, [model_inputs(batch) for batch in batches], pooler)
    labels = torch.cat([batch["labels"] for batch in batches])
    return compute_dlr(features, eh.head_outputs(features, model.classifier), labels=labels).dlr


def linear_cka(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(axis=0), b - b.mean(axis=0)
    return float(np.linalg.norm(a.T @ b) ** 2 / (np.linalg.norm(a.T @ a) * np.linalg.norm(b.T @ b)))


def test_fed_batch_by_batch_equals_compute_dlr(text_batches):
    model = eh.tiny_bert()
    measurement = Measurement(model, make_accelerator(), MeasurementOptions())
    with measurement.tapping(), torch.inference_mode():
        for batch in text_batches:
            measurement.feed(batch)
    measurement.reduce_dlr()
    assert measurement.result().num_samples == 30
    assert measurement.result().dlr == pytest.approx(hand_dlr(model, text_batches), abs=TOL)


def test_collecting_the_callers_own_forward_equals_running_it(text_batches):
    """The path a Trainer's evaluation loop takes: the caller runs the forward, the measurement collects."""
    model = eh.tiny_bert()
    ran = Measurement(model, make_accelerator(), MeasurementOptions())
    ran.run(text_batches)
    collected = Measurement(model, make_accelerator(), MeasurementOptions(), head=ran.head)
    with collected.tapping(), torch.inference_mode():
        for batch in text_batches:
            collected.collect(batch, model(**model_inputs(batch)))
    assert collected.result().dlr == pytest.approx(ran.result().dlr, abs=1e-12)
    assert collected.result().dlr == pytest.approx(hand_dlr(model, text_batches), abs=TOL)
    assert all(not module._forward_hooks for module in model.modules())  # taps are off after tapping()


def test_s_init_against_a_reference_model_equals_linear_cka_by_hand(text_batches):
    model, initial = eh.tiny_bert(seed=0), eh.tiny_bert(seed=1)
    measurement = Measurement(model, make_accelerator(), MeasurementOptions(), reference=initial)
    measurement.run(text_batches)
    measurement.reduce_s_init()
    inputs = [model_inputs(batch) for batch in text_batches]
    current, _ = eh.hand_features(model, inputs, pooler)
    start, _ = eh.hand_features(initial, inputs, pooler)
    assert measurement.s_init() == pytest.approx(linear_cka(start.numpy(), current.numpy()), rel=1e-9)
    change = measurement.parameter_baselines()["param_change"]
    params, params0 = (torch.cat([p.detach().double().flatten() for p in m.parameters()]) for m in (model, initial))
    assert change == pytest.approx(float((params - params0).norm() / params0.norm()), rel=1e-9)


def test_recorded_features_pair_with_a_later_pass(text_batches):
    """The callback's S_init: the step-0 features recorded once, paired batch by batch later."""
    model, initial = eh.tiny_bert(seed=0), eh.tiny_bert(seed=1)
    recorder = Measurement(initial, make_accelerator(), MeasurementOptions(), record_features=True)
    recorder.run(text_batches)
    later = Measurement(model, make_accelerator(), MeasurementOptions(), initial_features=recorder.recorded_features())
    later.run(text_batches)
    assert later.s_init_problem is None
    inputs = [model_inputs(batch) for batch in text_batches]
    expected = linear_cka(eh.hand_features(initial, inputs, pooler)[0].numpy(), eh.hand_features(model, inputs, pooler)[0].numpy())
    assert later.s_init() == pytest.approx(expected, rel=1e-6)  # recorded in float32
    shorter = Measurement(model, make_accelerator(), MeasurementOptions(), initial_features=recorder.recorded_features())
    shorter.run(text_batches[:-1])
    assert shorter.s_init_problem == "S_init: the probe has fewer batches than when the initial features were recorded"


def test_parameter_norm_is_computed_once_and_only_when_wanted(text_batches, monkeypatch):
    import dlr_hf.engine.measurement as measurement_module

    calls = []
    real = measurement_module.parameter_norm
    monkeypatch.setattr(measurement_module, "parameter_norm", lambda model: calls.append(model) or real(model))
    model = eh.tiny_bert()
    measurement = Measurement(model, make_accelerator(), MeasurementOptions())
    first, second = measurement.parameter_baselines(), measurement.parameter_baselines()
    assert first == second and len(calls) == 1
    expected = sum(float(p.detach().double().pow(2).sum()) for p in model.parameters())
    assert first["param_norm"] == pytest.approx(expected, rel=1e-7)  # float32 norms of 256-element chunks, summed in float64
    assert Measurement(model, make_accelerator(), MeasurementOptions(baselines=False)).parameter_baselines() == {}
    assert len(calls) == 1


def test_evaluate_without_baselines_skips_the_parameter_norm(text_batches):
    data = eh.text_dataset(12)
    with_norm = evaluate(eh.tiny_bert(), data, processor=eh.minilm_tokenizer(), progress=False)
    without = evaluate(eh.tiny_bert(), data, processor=eh.minilm_tokenizer(), baselines=False, progress=False)
    assert "param_norm_squared" in with_norm.baselines and "param_norm_squared" not in without.baselines
    assert without.dlr == with_norm.dlr


def test_the_head_is_found_on_the_first_batch_without_collating_a_probe(tokenizer):
    """Issue 11: no separate probe batch is collated; the head-locating forward runs on 2 rows of the first batch."""
    texts, labels = eh.sentences(20, seed=4), [i % 3 for i in range(20)]
    collated: list[int] = []

    def collate(rows: list[int]) -> dict[str, torch.Tensor]:
        collated.append(len(rows))
        return encoded(tokenizer, rows, texts, labels)

    loader = DataLoader(list(range(20)), batch_size=8, collate_fn=collate)
    model = eh.tiny_bert()
    forwards: list[int] = []
    model.register_forward_pre_hook(lambda module, args, kwargs: forwards.append(kwargs["input_ids"].shape[0]), with_kwargs=True)
    measurement = Measurement(model, make_accelerator(), MeasurementOptions())
    measurement.run(loader)
    assert collated == [8, 8, 4]
    assert forwards == [2, 8, 8, 4]
    assert measurement.result().dlr == pytest.approx(hand_dlr(model, [collate(rows) for rows in ([*range(8)], [*range(8, 16)], [*range(16, 20)])]), abs=TOL)
