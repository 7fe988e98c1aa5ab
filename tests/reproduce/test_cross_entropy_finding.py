"""Pins the finding of experiment 8 (benchmarks/reproduce/exp8_cross_entropy.py, issue #14).

The experiment-1 MLP (64-256-256-10 on digits), rich (Adam lr 1e-3 on every parameter) vs lazy (Adam
lr 1e-2 on the head only), with cross-entropy (CE) and with squared loss (MSE), 300 steps, seed 0 —
the very code of the script, through the public API (DLRAccumulator, compute_dlr, LinearCKAAccumulator).
What it pins, with the values observed when it was written:

* MSE separates rich from lazy (D_LR 0.164 vs 0.442); CE does not (0.294 vs 0.254 — the lazy model
  even reads slightly *lower*); the full script shows the same at 20,000 steps (training loss 4e-9).
* Cause 1, the dynamics: the CE-trained network really is less rich — its features are far from
  collapse (NC1 0.48 vs 0.064 with MSE) although both moved as far from initialisation (S_init ≈ 0.69).
* Cause 2, the head: the two lazy models have *identical* frozen features (S_init = 1, and a
  least-squares probe of the labels reads exactly the same D_LR for both), yet D_LR differs by 0.19
  (CE 0.254, MSE 0.442) — D_LR reads the features through the trained head, and the CE head reads
  the high-variance feature directions only.
* Why, in D_LR's own terms: CKA = a·c exactly (SPEC's eigen form split in two), with the alignment
  a = Σρ_kπ_k / Σ_{k≤r}ρ_k (does the head read the top-r feature directions?) and the ceiling
  c = Σ_{k≤r}ρ_k / (√r‖ρ‖) (are the features low-rank *and* isotropic?). The CE-rich head reads its
  features' top directions perfectly (a 0.999, lazy 0.850), but those directions have very unequal
  variance (c 0.707 vs 0.877 for the random features), and D_LR = 0 requires isotropy.
* The rank of the centred CE logits is the full C = 10 (not a rank effect); removing the all-ones
  direction that softmax ignores (r = 9) lowers every value a little but restores no separation.
* The remedy documented in REPRODUCTION.md — D_LR with the trained head replaced by a least-squares
  probe of the labels (``DLRAccumulator.compute(head_weight=…)``) — separates for CE too
  (0.383 vs 0.457) and more strongly for MSE (0.134 vs 0.457).

A change to the measure that moves any of these is a change of a documented finding: update the
experiment, REPRODUCTION.md §8 and this test together.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

REPRODUCE = Path(__file__).resolve().parents[2] / "benchmarks" / "reproduce"


def _load(name: str):
    if str(REPRODUCE) not in sys.path:
        sys.path.insert(0, str(REPRODUCE))
    spec = importlib.util.spec_from_file_location(f"reproduce_{name}", REPRODUCE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def arms():
    import torch

    threads = torch.get_num_threads()
    exp8 = _load("exp8_cross_entropy")
    try:
        out = {(loss, regime): exp8.run_arm(loss, regime, 0, (300,), log=lambda *a, **k: None)["trajectory"][-1]["train"]
               for loss in ("ce", "mse") for regime in ("rich", "lazy")}
    finally:
        torch.set_num_threads(threads)
    return out


def test_squared_loss_separates_rich_from_lazy_cross_entropy_does_not(arms):
    ce_rich, ce_lazy = arms["ce", "rich"]["dlr"], arms["ce", "lazy"]["dlr"]
    mse_rich, mse_lazy = arms["mse", "rich"]["dlr"], arms["mse", "lazy"]["dlr"]
    assert mse_lazy - mse_rich > 0.2, (mse_rich, mse_lazy)  # observed 0.164 vs 0.442
    assert ce_lazy - ce_rich < 0.05, (ce_rich, ce_lazy)  # observed 0.294 vs 0.254: no separation
    assert abs(ce_lazy - ce_rich) < 0.1, (ce_rich, ce_lazy)
    assert all(arms[key]["accuracy"] > 0.95 for key in arms)  # every arm fitted the training digits


def test_cross_entropy_features_are_less_collapsed(arms):
    ce, mse = arms["ce", "rich"], arms["mse", "rich"]
    assert ce["nc1"] > 0.3 and ce["nc1"] > 4 * mse["nc1"], (ce["nc1"], mse["nc1"])  # observed 0.48 vs 0.064
    assert ce["s_init"] < 0.8 and mse["s_init"] < 0.8  # both moved away from initialisation (0.69, 0.70)


def test_lazy_reading_depends_on_the_head_not_the_features(arms):
    ce, mse = arms["ce", "lazy"], arms["mse", "lazy"]
    assert ce["s_init"] == pytest.approx(1.0, abs=1e-9) and mse["s_init"] == pytest.approx(1.0, abs=1e-9)
    assert ce["dlr_probe"] == pytest.approx(mse["dlr_probe"], abs=1e-9)  # same frozen features: same probe reading
    assert ce["dlr"] < mse["dlr"] - 0.1, (ce["dlr"], mse["dlr"])  # observed 0.254 vs 0.442: the head differs


def test_alignment_separates_and_anisotropy_explains_the_cross_entropy_reading(arms):
    for key, row in arms.items():  # D_LR = 1 − a·c exactly
        assert 1 - row["alignment"] * row["ceiling"] == pytest.approx(row["dlr"], abs=1e-9), key
    ce_rich, ce_lazy, mse_rich, mse_lazy = (arms[k] for k in (("ce", "rich"), ("ce", "lazy"), ("mse", "rich"), ("mse", "lazy")))
    assert ce_rich["alignment"] > 0.9 and mse_rich["alignment"] > 0.9  # observed 0.999, 0.947
    assert ce_rich["alignment"] > ce_lazy["alignment"] + 0.1  # observed 0.999 vs 0.850
    assert mse_rich["alignment"] > mse_lazy["alignment"] + 0.2  # observed 0.947 vs 0.636
    assert ce_lazy["ceiling"] == pytest.approx(mse_lazy["ceiling"], abs=1e-9)  # same frozen features
    assert ce_rich["ceiling"] < 0.8 and ce_rich["ceiling"] < ce_lazy["ceiling"] - 0.1  # observed 0.707 vs 0.877
    assert mse_rich["ceiling"] > ce_rich["ceiling"] + 0.1  # observed 0.883 vs 0.707


def test_rank_is_full_and_the_ones_direction_is_not_the_cause(arms):
    for key, row in arms.items():
        assert row["rank"] == 10, key
        assert row["rank_sum_zero"] == 9, key
    assert arms["ce", "lazy"]["dlr_sum_zero"] - arms["ce", "rich"]["dlr_sum_zero"] < 0.05  # observed 0.231 vs 0.259


def test_least_squares_probe_readout_separates_both_losses(arms):
    assert arms["ce", "lazy"]["dlr_probe"] - arms["ce", "rich"]["dlr_probe"] > 0.05  # observed 0.457 vs 0.383
    assert arms["mse", "lazy"]["dlr_probe"] - arms["mse", "rich"]["dlr_probe"] > 0.25  # observed 0.457 vs 0.134


def test_probe_readout_through_the_streamed_statistics():
    """The documented remedy uses only the public API: ``DLRAccumulator.compute(head_weight=B.T)`` on the
    statistics already streamed equals ``compute_dlr`` on the probe's outputs."""
    import torch

    from dlr_hf.metric import compute_dlr

    exp8 = _load("exp8_cross_entropy")
    common = sys.modules["common"]
    threads = torch.get_num_threads()
    try:
        common.setup(0)
        data = common.digits()
        model = common.MLP([64, 256, 256])
        measured = common.measure(model, model.head, data.train_flat, data.train_labels)
    finally:
        torch.set_num_threads(threads)
    probe = exp8.probe_head(measured.features, data.train_labels)
    streamed = measured.accumulator.compute(head_weight=probe.T)
    assert streamed.dlr == pytest.approx(compute_dlr(measured.features, measured.features @ probe).dlr, abs=1e-12)
    assert streamed.rank == 9  # centred one-hot targets have rank C − 1
