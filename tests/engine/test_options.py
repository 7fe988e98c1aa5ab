"""Every measurement setting is declared once (``MeasurementOptions``); the surfaces derive from it."""

from __future__ import annotations

import inspect
from dataclasses import fields

import pytest

from dlr_hf.engine import APP, CALLBACK, CLI, MeasurementOptions
from dlr_hf.errors import InvalidArgumentError
from dlr_hf.surfaces.cli import build_parser


def cli_flag(name: str) -> str:
    return f"--{name.replace('_', '-')}"


def test_every_option_has_help_a_label_and_a_validator():
    for spec in fields(MeasurementOptions):
        assert spec.metadata["help"] and spec.metadata["label"] and callable(spec.metadata["validate"]), spec.name


@pytest.mark.parametrize("settings", [{"num_samples": 0}, {"seed": -1}, {"rtol": 1.0}, {"precision": "fp8"},
                                      {"max_length": 0}, {"batch_size": 0}, {"baselines": "yes"}])
def test_options_are_checked_on_construction(settings):
    with pytest.raises(InvalidArgumentError):
        MeasurementOptions(**settings)


def test_cli_has_one_flag_per_cli_option_with_the_same_defaults():
    evaluate_parser = build_parser()._subparsers._group_actions[0].choices["evaluate"]
    flags = {flag: action for action in evaluate_parser._actions for flag in action.option_strings}
    defaults = MeasurementOptions()
    for name in MeasurementOptions.on(CLI):
        default = getattr(defaults, name)
        flag = f"--no-{name.replace('_', '-')}" if isinstance(default, bool) else cli_flag(name)
        assert flag in flags and flags[flag].dest == name, name
    parsed = build_parser().parse_args(["evaluate"])
    assert MeasurementOptions.from_mapping(vars(parsed)) == defaults
    parsed = build_parser().parse_args(["evaluate", "--max-length", "64", "--no-baselines", "--layer", "a.b"])
    assert (parsed.max_length, parsed.baselines, parsed.layer) == (64, False, "a.b")


def test_app_evaluate_inputs_follow_the_app_options():
    from dlr_hf.surfaces.app import DLRApp

    parameters = list(inspect.signature(DLRApp.evaluate_ui).parameters)
    assert parameters[:6] == ["self", "model", "revision", "dataset", "dataset_config", "split"]
    options = MeasurementOptions.on(APP)
    assert parameters[6 : 6 + len(options)] == options  # then the app's own extras (processor, session, progress)
    assert not set(parameters[6 + len(options) :]) & set(MeasurementOptions.on(APP))


def test_callback_arguments_are_the_callback_options():
    from dlr_hf import DLRCallback

    callback = DLRCallback(num_samples=64, layer="x.y", rtol=1e-5, baselines=False)
    args = callback.state()["args"]
    assert set(args) == {*MeasurementOptions.on(CALLBACK), "source", "every_n_steps", "write_files"}
    restored = DLRCallback(**args)  # what the Trainer does on resume
    assert restored.options == callback.options
    assert restored.source == callback.source == "eval"
    assert (restored.options.num_samples, restored.options.layer, restored.options.baselines) == (64, "x.y", False)
    assert DLRCallback().options.num_samples == 512 and DLRCallback().options.batch_size is None
    with pytest.raises(InvalidArgumentError, match="unknown setting.*precision"):
        DLRCallback(precision="bf16")  # the Trainer's own precision applies
