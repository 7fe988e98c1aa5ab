"""The CLI's surface: JSON shape, --reference first, --layer naming, --quiet, help texts, the bare command,
the 1-of-N processes warning, plot titles."""

from __future__ import annotations

import argparse
import json
import logging

import pytest

from dlr_hf.surfaces import cli
from dlr_hf.surfaces.cli import build_parser, main


def test_one_model_is_one_report_with_top_level_dlr(demo, capsys, tmp_path):
    output = tmp_path / "one.json"
    assert main(["evaluate", str(demo["rich"]), "--dataset", str(demo["data"]), "--quiet", "--output", str(output)]) == 0
    document = json.loads(output.read_text())
    assert document["schema"] == "dlr-hf/report/v3" and isinstance(document["dlr"], float)
    assert document["verdict"]["basis"] == "absolute scale" and document["initial"] is None
    assert f"verdict  {document['verdict']['text']}" in capsys.readouterr().out


def test_reference_first_measures_later_checkpoints_against_the_first(demo, capsys, tmp_path):
    output = tmp_path / "run.json"
    argv = ["evaluate", str(demo["initial"]), str(demo["rich"]), "--dataset", str(demo["data"]), "--reference", "first",
            "--quiet", "--output", str(output)]
    assert main(argv) == 0
    initial, rich = json.loads(output.read_text())["reports"]
    assert "reference" not in initial["settings"] and initial["verdict"]["basis"] == "absolute scale"
    assert rich["settings"]["reference"] == str(demo["initial"])
    verdict = rich["verdict"]
    assert verdict["basis"] == "change from initialisation" and verdict["label"] == "rich"
    assert verdict["dlr_initial"] == pytest.approx(initial["dlr"], rel=1e-9)  # the first checkpoint's own D_LR
    assert verdict["change"] == pytest.approx(rich["dlr"] - initial["dlr"])
    assert main(["evaluate", str(demo["rich"]), "--dataset", str(demo["data"]), "--reference", "first"]) == 2
    assert "at least two MODELs" in capsys.readouterr().err


def test_layer_is_named_in_summary_json_and_plot_title(demo, capsys, tmp_path):
    layer = "vit.layers.1.mlp.fc2"
    output, plot = tmp_path / "layer.json", tmp_path / "layer.png"
    argv = ["evaluate", str(demo["rich"]), "--dataset", str(demo["data"]), "--layer", layer, "--quiet",
            "--output", str(output), "--plot", str(plot)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert f"layer    {layer} (its input against the final logits" in out and "head     classifier" not in out
    document = json.loads(output.read_text())
    assert document["measured"] == document["head"]["layer"] == layer
    assert cli.plot_title([_report(document)]) == f"rich · data [test] · layer {layer} (n = 360)"
    assert plot.stat().st_size > 0


def _report(document):
    from dlr_hf.engine.report import EvaluationReport

    return EvaluationReport.from_dict(document)


def test_visualisation_has_a_title_and_every_panel_a_y_label(demo):
    from dlr_hf import evaluate
    from dlr_hf.surfaces.plots import visualisation_figure

    report = evaluate(demo["rich"], demo["data"], progress=False)
    figure = visualisation_figure([report.result], ["rich"], cli.plot_title([report]))
    assert figure._suptitle.get_text() == "rich · data [test] · head classifier (n = 360)"
    assert all(axis.get_ylabel() for axis in figure.axes)
    assert figure.axes[0].get_legend() is not None  # names each line with its D_LR, and k = C


def test_quiet_silences_every_progress_bar(demo, capfd):
    assert main(["evaluate", str(demo["rich"]), str(demo["lazy"]), "--dataset", str(demo["data"]), "--quiet"]) == 0
    err = capfd.readouterr().err
    assert "Loading weights" not in err and "forward" not in err and "%|" not in err, err
    import datasets
    import transformers

    assert transformers.utils.logging.is_progress_bar_enabled() and datasets.is_progress_bar_enabled()  # restored


def test_without_quiet_the_bars_show(demo, capfd):
    assert main(["evaluate", str(demo["rich"]), "--dataset", str(demo["data"])]) == 0
    assert "Loading weights" in capfd.readouterr().err


def test_every_flag_has_help_and_is_in_the_readme():
    from pathlib import Path

    readme = (Path(__file__).parents[2] / "README.md").read_text()
    evaluate = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices["evaluate"]
    flags = [option for action in evaluate._actions for option in action.option_strings if option.startswith("--")]
    assert len(flags) > 15
    for action in evaluate._actions:
        assert action.help, action.option_strings
    missing = [flag for flag in flags if flag not in readme]
    assert missing == [], missing


def test_bare_command_names_evaluate(capsys):
    assert main([]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "dlr-hf evaluate" in err


@pytest.mark.parametrize("environment", [
    {"ACCELERATE_NUM_PROCESSES": "2"},
    {"ACCELERATE_MIXED_PRECISION": "no", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"},  # accelerate launch --cpu --num_processes 2
])
def test_warns_when_asked_for_several_processes_but_alone(environment, monkeypatch, caplog):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    for key, value in environment.items():
        monkeypatch.setenv(key, value)
    with caplog.at_level(logging.WARNING):
        cli.warn_if_fewer_processes(cli.make_accelerator("fp32"))
    assert "this is the only one" in caplog.text and "--multi_gpu --cpu" in caplog.text
    assert "torch.distributed.run --nproc_per_node" in caplog.text


def test_no_warning_for_a_plain_single_process_run(monkeypatch, caplog):
    for key in ("ACCELERATE_NUM_PROCESSES", "MASTER_ADDR", "ACCELERATE_MIXED_PRECISION"):
        monkeypatch.delenv(key, raising=False)
    with caplog.at_level(logging.WARNING):
        cli.warn_if_fewer_processes(cli.make_accelerator("fp32"))
    assert caplog.text == ""
