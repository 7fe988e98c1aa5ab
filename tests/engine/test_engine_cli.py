"""The CLI's default (no MODEL): the built-in rich-vs-lazy demo, offline."""

from __future__ import annotations

import json
import re

from dlr_hf.surfaces.cli import build_parser, main


def test_default_runs_the_demo(demo_cache, demo, monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("DLR_HF_CACHE", str(demo_cache))  # the demo is already built there
    output = tmp_path / "demo.json"
    assert main(["evaluate", "--quiet", "--output", str(output)]) == 0
    captured = capsys.readouterr()
    assert "running the built-in demo" in captured.err

    printed = [float(value) for value in re.findall(r"^D_LR\s+([0-9.]+)", captured.out, flags=re.M)]
    document = json.loads(output.read_text())
    assert document["schema"] == "dlr-hf/reports/v3"
    reports = document["reports"]
    assert len(printed) == len(reports) == 2  # both checkpoints, both values
    rich, lazy = reports
    # measured against the demo's initial checkpoint: a calibrated verdict, printed and in the JSON
    assert rich["settings"]["reference"] == lazy["settings"]["reference"] == str(demo["initial"])
    assert rich["verdict"]["label"] == "rich" and lazy["verdict"]["label"] == "lazy"
    assert [f"verdict  {report['verdict']['text']}" in captured.out for report in reports] == [True, True]
    assert rich["model"]["path"] == str(demo["rich"].resolve()) and lazy["model"]["path"] == str(demo["lazy"].resolve())
    assert printed == [round(rich["dlr"], 4), round(lazy["dlr"], 4)]
    assert rich["dlr"] < lazy["dlr"]
    assert rich["dataset"]["id"] == str(demo["data"]) and rich["result"]["num_samples"] == 360


def test_parser_defaults():
    args = build_parser().parse_args(["evaluate"])
    assert (args.models, args.dataset, args.num_samples, args.batch_size, args.precision) == ([], None, 1000, 32, "fp32")
    assert args.trust_remote_code is False  # remote code stays off unless asked for


def test_parser_reads_num_samples_all_and_the_safe_defaults():
    args = build_parser().parse_args(["evaluate", "--num-samples", "all", "--seed", str(2**32 - 1), "--rtol", "1e-8"])
    assert (args.num_samples, args.seed, args.rtol) == (None, 2**32 - 1, 1e-8)
    assert args.allow_pickle is False  # Hub pickle weights stay refused unless asked for


def test_argparse_errors_are_one_line(capsys):
    """Even argparse's own errors (unknown flag, bad choice) end in the CLI's one line and exit 2."""
    for argv in (["evaluate", "--no-such-flag"], ["evaluate", "--precision", "fp8"], ["evaluate", "--num-samples", "0"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("dlr-hf: error: "), err
