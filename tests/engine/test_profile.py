"""The profile across depth through ``evaluate()``, the JSON report (v2) and the CLI (summary table, plots)."""

from __future__ import annotations

import json

import pytest
import torch

import engine_helpers as eh
from dlr_hf.engine import SCHEMA, EvaluationReport, evaluate
from dlr_hf.metric import compute_dlr
from dlr_hf.surfaces.cli import main


def test_evaluate_reports_every_block_of_the_measured_examples(tokenizer):
    model, data = eh.tiny_bert(), eh.text_dataset(24)
    report = evaluate(model, data, processor=tokenizer, num_samples=None, batch_size=8, layers="blocks", progress=False)
    batches = [dict(tokenizer(texts, padding=True, return_tensors="pt")) for texts in eh.chunks(data["text"], 8)]
    with torch.inference_mode():
        outputs = [model(**batch, output_hidden_states=True) for batch in batches]
    logits = torch.cat([out.logits for out in outputs]).double()
    assert [row["name"] for row in report.layers] == ["block_00", "block_01"]
    for index, row in enumerate(report.layers):
        cls = torch.cat([out.hidden_states[index + 1][:, 0] for out in outputs]).double()
        expected = compute_dlr(cls, logits)
        assert row["dlr"] == pytest.approx(expected.dlr, abs=1e-8)
        assert (row["depth"], row["module_path"], row["feature_dim"], row["rank"], row["feature_rank"]) == (
            index + 1, f"bert.encoder.layer.{index}", 32, expected.rank, expected.feature_rank)
        assert row["effective_rank"] == pytest.approx(expected.effective_rank, rel=1e-7)  # float32 rounding floor
        assert "s_init" not in row and "dlr_initial" not in row and "dlr_change" not in row
    document = json.loads(report.to_json())
    assert document["schema"] == SCHEMA == "dlr-hf/report/v3" and document["layers"] == report.layers
    assert EvaluationReport.from_dict(document).layers == report.layers
    version_1 = {**{key: value for key, value in document.items() if key != "layers"}, "schema": "dlr-hf/report/v1"}
    assert EvaluationReport.from_dict(version_1).layers == []  # reports stored before v2 still load
    summary = report.summary()
    assert "profile" in summary and "block_01" in summary and f"{report.layers[1]['dlr']:.4f}" in summary


def test_cli_prints_the_table_and_plots_the_profile_of_every_model(demo_cache, demo, monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("DLR_HF_CACHE", str(demo_cache))
    output, plot = tmp_path / "profile.json", tmp_path / "plots" / "report.png"
    argv = ["evaluate", str(demo["rich"]), str(demo["lazy"]), "--dataset", str(demo["data"]), "--num-samples", "64",
            "--layers", "blocks", "--reference", str(demo["initial"]), "--output", str(output), "--plot", str(plot), "--quiet"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    rich, lazy = json.loads(output.read_text())["reports"]
    expected = evaluate(str(demo["rich"]), str(demo["data"]), num_samples=64, layers="blocks",
                        reference_model=str(demo["initial"]), progress=False)
    assert [row["dlr"] for row in rich["layers"]] == pytest.approx([row["dlr"] for row in expected.layers], abs=1e-12)
    assert [row["s_init"] for row in rich["layers"]] == pytest.approx([row["s_init"] for row in expected.layers], abs=1e-12)
    assert len(rich["layers"]) == len(lazy["layers"]) == 2 and all("s_init" in row for row in rich["layers"])
    assert printed.count("S_init") >= 2 and "block_01" in printed
    for row in rich["layers"]:  # with a reference: each layer's D_LR at initialisation and the change from it
        assert row["dlr_change"] == pytest.approx(row["dlr"] - row["dlr_initial"], abs=1e-12)
        assert f"{row['dlr_change']:+.4f}" in printed
    assert [row["dlr_initial"] for row in rich["layers"]] == pytest.approx([row["dlr_initial"] for row in lazy["layers"]], abs=1e-12)
    assert printed.count("change") >= 2
    assert plot.stat().st_size > 0 and (tmp_path / "plots" / "report-layers.png").stat().st_size > 0
