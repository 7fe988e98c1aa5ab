"""The calibrated verdict: on the change from initialisation with a reference, on the absolute scale without."""

from __future__ import annotations

import json
import math

import pytest

from dlr_hf import evaluate
from dlr_hf.engine.report import CHANGE_TOLERANCE, EvaluationReport, isotropic_dlr


@pytest.fixture(scope="module")
def calibrated(demo):
    """The demo's rich and lazy checkpoints, each measured beside the initial checkpoint."""
    return {name: evaluate(demo[name], demo["data"], reference=demo["initial"], progress=False) for name in ("rich", "lazy")}


def test_rich_verdict_is_the_fall_from_initialisation(calibrated, demo):
    report = calibrated["rich"]
    alone = evaluate(demo["initial"], demo["data"], progress=False)  # the initial checkpoint measured on its own
    verdict = report.verdict
    assert verdict.basis == "change from initialisation" and verdict.label == "rich"
    assert verdict.dlr_initial == pytest.approx(alone.dlr, rel=1e-9)  # the reference's own head input and logits
    assert report.initial["dlr"] == verdict.dlr_initial and report.initial["accuracy"] == pytest.approx(alone.result.accuracy)
    assert verdict.change == pytest.approx(report.dlr - alone.dlr) and verdict.change < -CHANGE_TOLERANCE
    assert verdict.text.startswith(
        f"rich: D_LR fell from {alone.dlr:.2f} at initialisation to {report.dlr:.2f} (−{abs(verdict.change):.2f})"
    )
    assert f"S_init = {report.baselines['s_init']:.2f}" in verdict.text


def test_lazy_verdict_says_the_features_did_not_move(calibrated):
    report = calibrated["lazy"]
    verdict = report.verdict
    assert verdict.label == "lazy" and report.baselines["s_init"] == pytest.approx(1.0)
    assert "S_init = 1.00 — the features did not move" in verdict.text
    # only the head trained: D_LR moved through the head, from the same initial value as the rich run's
    assert verdict.dlr_initial == pytest.approx(calibrated["rich"].verdict.dlr_initial, rel=1e-9)
    assert f"from {verdict.dlr_initial:.2f} at initialisation to {report.dlr:.2f} (+{verdict.change:.2f})" in verdict.text


def test_without_reference_the_verdict_is_on_the_absolute_scale(demo):
    report = evaluate(demo["rich"], demo["data"], progress=False)
    verdict = report.verdict
    p, c = report.result.feature_dim, report.result.num_outputs
    assert (verdict.basis, verdict.dlr_initial, verdict.change, report.initial) == ("absolute scale", None, None, None)
    assert verdict.yardstick == pytest.approx(1 - math.sqrt(c / p))
    assert f"1 − √(C/p) = {verdict.yardstick:.2f} for p = {p}, C = {c}" in verdict.text
    assert "on the absolute scale" in verdict.text and "initial checkpoint" in verdict.text


def test_verdict_in_json_summary_and_str(calibrated):
    report = calibrated["rich"]
    document = json.loads(report.to_json())
    assert document["schema"] == "dlr-hf/report/v3"
    assert document["verdict"] == report.verdict.to_dict() and document["verdict"]["text"] == report.verdict.text
    assert document["initial"]["dlr"] == report.verdict.dlr_initial
    assert "param_norm_squared" in document["baselines"] and "param_norm" not in document["baselines"]
    summary = report.summary()
    assert f"verdict  {report.verdict.text}" in summary
    assert f"at initialisation {report.verdict.dlr_initial:.4f}" in summary
    assert str(report) == summary and "spectrum" not in str(report)
    assert "dlr=" in repr(report) and "'rich'" in repr(report) and len(repr(report)) < 300


def test_older_reports_load_with_the_squared_norm_renamed(calibrated):
    document = calibrated["rich"].to_dict()
    baselines = dict(document["baselines"])
    baselines["param_norm"] = baselines.pop("param_norm_squared")
    old = {**document, "schema": "dlr-hf/report/v2", "baselines": baselines}
    del old["verdict"], old["initial"]
    loaded = EvaluationReport.from_dict(old)
    assert loaded.baselines["param_norm_squared"] == document["baselines"]["param_norm_squared"]
    assert loaded.verdict.basis == "absolute scale"  # a v2 report has no value at initialisation
    assert EvaluationReport.from_dict(document).verdict == calibrated["rich"].verdict


def test_isotropic_yardstick_is_undefined_when_the_head_reads_every_direction():
    assert isotropic_dlr(64, 10) == pytest.approx(1 - math.sqrt(10 / 64))
    assert isotropic_dlr(10, 10) is None
