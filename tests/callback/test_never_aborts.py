"""DLRCallback never stops training: every failure is a warning plus missing values, and the run ends.

Missing means NaN in ``callback.history`` (with the reason under ``"warning"``) and left out of
``trainer.log``, so ``log_history`` (hence TensorBoard / W&B) never holds a NaN of ours.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import sys
from pathlib import Path

import pytest
import torch
from transformers import TrainerCallback

from dlr_hf import DLRCallback
from dlr_hf.engine.demo import digits_dataset, image_processor
from dlr_hf.errors import InvalidArgumentError, LayerNotFoundError
from dlr_hf.surfaces.callback import REFERENCE_FILE

sys.path.insert(0, str(Path(__file__).parent))
from training import launch_two, make_trainer, with_pixels  # noqa: E402

OURS = ("dlr", "dlr_rank", "effective_rank", "s_init", "param_norm", "param_change")


def warnings_of(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "dlr_hf.surfaces.callback" and r.levelno == logging.WARNING]


def row_at(callback: DLRCallback, step: int) -> dict:
    (row,) = [row for row in callback.history if row["step"] == step]
    return row


def logged_keys(trainer, step: int) -> set[str]:
    return {key for row in trainer.state.log_history if row.get("step") == step for key in row}


def assert_missing(callback: DLRCallback, trainer, step: int, keys) -> None:
    """NaN in the history row, with a reason; absent from everything the Trainer logged at that step."""
    row = row_at(callback, step)
    assert all(math.isnan(row[f"eval_{key}"]) for key in keys), row
    assert row["warning"]
    assert not {f"eval_{key}" for key in keys} & logged_keys(trainer, step)


def probe(size: int):
    return with_pixels(digits_dataset()["test"].select(range(size)), image_processor())


@pytest.mark.parametrize(
    "settings",
    [{"rtol": 1e-12}, {"rtol": 1.0}, {"rtol": float("nan")}, {"num_samples": 1}, {"num_samples": 2.5},
     {"every_n_steps": 0}, {"every_n_steps": 1.5}, {"batch_size": 0}, {"seed": -1}, {"source": "train"}],
)
def test_wrong_settings_fail_at_construction(settings):
    with pytest.raises(InvalidArgumentError):
        DLRCallback(**settings)


def test_wrong_layer_fails_before_the_first_step(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=5, callback=DLRCallback(layer="vit.no_such_layer"))
    with pytest.raises(LayerNotFoundError, match="no_such_layer"):
        trainer.train()
    assert trainer.state.global_step == 0


class Poison(TrainerCallback):
    """Makes one parameter non-finite after a given step, as a diverging run would."""

    def __init__(self, parameter: str, value: float, at_step: int) -> None:
        self.parameter, self.value, self.at_step = parameter, value, at_step

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step == self.at_step:
            with torch.no_grad():
                model.get_parameter(self.parameter).fill_(self.value)


@pytest.mark.parametrize(
    "parameter, value, missing",
    [
        ("vit.layernorm.weight", float("nan"), OURS),
        # The head's input is still finite, so S_init (a feature statistic) stays measurable.
        ("classifier.weight", float("inf"), tuple(key for key in OURS if key != "s_init")),
    ],
    ids=["nan-features", "inf-head-weight"],
)
def test_diverging_run_trains_to_the_end(tmp_path, caplog, parameter, value, missing):
    callback = DLRCallback(num_samples=64)
    trainer = make_trainer(
        tmp_path, max_steps=15, eval_steps=5, callback=callback, extra_callbacks=[Poison(parameter, value, at_step=10)]
    )
    trainer.train()
    assert trainer.state.global_step == 15
    assert all(math.isfinite(row_at(callback, 5)[f"eval_{key}"]) for key in OURS)
    for step in (10, 15):
        assert_missing(callback, trainer, step, missing)
        assert "NonFiniteError" in row_at(callback, step)["warning"]
    messages = warnings_of(caplog)
    assert [m for m in messages if "step 10" in m and "NonFiniteError" in m]
    assert [m for m in messages if "step 15" in m]
    assert callback.warnings == messages
    assert "eval_dlr" in logged_keys(trainer, 5)


@pytest.mark.parametrize("size", [0, 1])
def test_probe_smaller_than_two_trains_to_the_end(tmp_path, caplog, size):
    callback = DLRCallback(probe_dataset=probe(size))
    trainer = make_trainer(tmp_path, max_steps=10, eval_steps=10, callback=callback)
    trainer.train()
    assert trainer.state.global_step == 10
    assert_missing(callback, trainer, 10, ("dlr", "dlr_rank", "effective_rank", "s_init"))
    assert "TooFewSamplesError" in row_at(callback, 10)["warning"]
    # What does not need the probe is still measured and logged.
    assert row_at(callback, 10)["eval_param_change"] > 0
    assert {"eval_param_norm", "eval_param_change"} <= logged_keys(trainer, 10)
    assert [m for m in warnings_of(caplog) if "step 10" in m and "TooFewSamplesError" in m]
    # No D_LR at step 0 either (0: nothing to record; 1: recorded, too few to measure): no change, no crash.
    assert not callback.initial_dlr and math.isnan(row_at(callback, 10)["eval_dlr_change"])
    assert [m for m in warnings_of(caplog) if "at step 0" in m and "TooFewSamplesError" in m and "dlr_change" in m]


@pytest.fixture(scope="module")
def run_to_step_10(tmp_path_factory):
    """A finished run with checkpoints at 5 and 10 and its step-0 reference, to resume from."""
    output = tmp_path_factory.mktemp("first")
    make_trainer(output, max_steps=10, eval_steps=5, callback=DLRCallback(num_samples=64)).train()
    return output


def damage(reference: Path, how: str) -> None:
    if how == "missing":
        reference.unlink()
    elif how == "empty":
        reference.write_bytes(b"")
    elif how == "truncated":
        reference.write_bytes(reference.read_bytes()[:1000])
    else:  # a readable file that is not a reference
        torch.save(torch.zeros(3), reference)


@pytest.mark.parametrize("how", ["missing", "empty", "truncated", "not-a-reference"])
def test_lost_reference_stays_missing_after_resume(run_to_step_10, tmp_path, caplog, how):
    output = tmp_path / "run"
    shutil.copytree(run_to_step_10, output)
    reference = output / REFERENCE_FILE.format(rank=0)
    damage(reference, how)
    damaged = reference.read_bytes() if reference.exists() else None
    callback = DLRCallback(num_samples=64)
    trainer = make_trainer(output, max_steps=20, eval_steps=5, callback=callback)
    trainer.train(resume_from_checkpoint=str(output / "checkpoint-10"))
    assert trainer.state.global_step == 20
    assert [row["step"] for row in callback.history] == [5, 10, 15, 20]
    assert row_at(callback, 10)["eval_param_change"] > 0  # from before the resume
    for step in (15, 20):
        # Not re-based on the resumed checkpoint (param_change would be small, S_init near 1): missing.
        assert_missing(callback, trainer, step, ("s_init", "param_change"))
        assert "initial parameters are lost" in row_at(callback, step)["warning"]
        assert 0 <= row_at(callback, step)["eval_dlr"] <= 1
        assert {"eval_dlr", "eval_param_norm"} <= logged_keys(trainer, step)
    assert (reference.read_bytes() if reference.exists() else None) == damaged  # no new θ0 written
    assert [m for m in warnings_of(caplog) if str(reference) in m and "rest of this run" in m]


def test_resume_with_callbacks_restored_by_the_trainer(run_to_step_10, tmp_path, caplog):
    """restore_callback_states_from_checkpoint: the Trainer swaps in a new DLRCallback that it never introduced."""
    output = tmp_path / "run"
    shutil.copytree(run_to_step_10, output)
    trainer = make_trainer(output, max_steps=15, eval_steps=5, restore_callback_states_from_checkpoint=True)
    trainer.train(resume_from_checkpoint=str(output / "checkpoint-10"))
    assert trainer.state.global_step == 15
    (callback,) = [cb for cb in trainer.callback_handler.callbacks if isinstance(cb, DLRCallback)]
    assert [row["step"] for row in callback.history] == [5, 10, 15]
    assert 0 < row_at(callback, 15)["eval_s_init"] <= 1  # the intact step-0 reference is used
    assert row_at(callback, 15)["eval_param_change"] > 0
    assert "eval_dlr_change" in logged_keys(trainer, 15)  # D_LR at step 0 read back from the reference
    assert row_at(callback, 15)["eval_dlr_initial"] == row_at(callback, 5)["eval_dlr_initial"]
    assert not warnings_of(caplog)


def test_reference_without_initial_dlr_leaves_the_change_missing(run_to_step_10, tmp_path, caplog):
    """A step-0 reference written before D_LR at initialisation was kept: S_init and param_change as
    before, dlr_change missing with a warning, and the run trains to the end."""
    output = tmp_path / "run"
    shutil.copytree(run_to_step_10, output)
    reference = output / REFERENCE_FILE.format(rank=0)
    saved = torch.load(reference, weights_only=True)
    assert set(saved.pop("evaluation_dlr")) == {"eval"}
    del saved["probe_dlr"]
    torch.save(saved, reference)
    callback = DLRCallback(num_samples=64)
    trainer = make_trainer(output, max_steps=15, eval_steps=5, callback=callback)
    trainer.train(resume_from_checkpoint=str(output / "checkpoint-10"))
    assert trainer.state.global_step == 15
    assert math.isfinite(row_at(callback, 10)["eval_dlr_change"])  # from before the resume
    assert_missing(callback, trainer, 15, ("dlr_change", "dlr_initial"))
    assert "dlr_change: no D_LR at step 0 of 'eval'" in row_at(callback, 15)["warning"]
    assert 0 < row_at(callback, 15)["eval_s_init"] <= 1 and row_at(callback, 15)["eval_param_change"] > 0
    assert {"eval_dlr", "eval_s_init"} <= logged_keys(trainer, 15)
    assert not callback.initial_dlr and not callback.verdicts
    assert [m for m in warnings_of(caplog) if str(reference) in m and "holds no D_LR at step 0" in m]


def test_resume_of_a_run_without_the_callback(tmp_path, caplog):
    make_trainer(tmp_path, max_steps=10, eval_steps=5, with_dlr=False).train()
    callback = DLRCallback(num_samples=64)
    trainer = make_trainer(tmp_path, max_steps=15, eval_steps=5, callback=callback)
    trainer.train(resume_from_checkpoint=str(tmp_path / "checkpoint-10"))  # saving checkpoint-15 raised KeyError
    assert trainer.state.global_step == 15
    saved = json.loads((tmp_path / "checkpoint-15" / "trainer_state.json").read_text())["stateful_callbacks"]
    assert [row["step"] for row in saved["DLRCallback"]["attributes"]["history"]] == [15]
    assert_missing(callback, trainer, 15, ("s_init", "param_change"))
    assert 0 <= row_at(callback, 15)["eval_dlr"] <= 1
    messages = warnings_of(caplog)
    assert [m for m in messages if "no DLRCallback state" in m]
    assert [m for m in messages if "does not exist" in m and "rest of this run" in m]
    assert not (tmp_path / REFERENCE_FILE.format(rank=0)).exists()


@pytest.mark.multiprocess
def test_one_rank_failing_alone_skips_on_every_rank(tmp_path):
    """A 1-example probe on 2 processes: rank 1 has no example, rank 0 could go on alone and would hang."""
    launch_two(tmp_path, "--probe-size", "1", timeout=300)
    assert json.loads((tmp_path / "log_history.json").read_text())["world_size"] == 2
    ranks = [json.loads((tmp_path / f"callback_rank{rank}.json").read_text()) for rank in (0, 1)]
    for record in ranks:
        assert record["global_step"] == 10
        assert [row["step"] for row in record["history"]] == [5, 10]
        assert all(math.isnan(row["eval_dlr"]) and math.isnan(row["eval_s_init"]) for row in record["history"])
        assert all(math.isnan(row["eval_dlr_change"]) for row in record["history"])
    assert any("no example of probe" in m for m in ranks[1]["warnings"])
    assert any("another process could not measure" in m for m in ranks[0]["warnings"])
    # D_LR at step 0 too: rank 0 recorded its example, but skips the reduction rank 1 cannot join.
    assert any("another process could not record probe 'eval' at step 0" in m for m in ranks[0]["warnings"])
    logged = json.loads((tmp_path / "log_history.json").read_text())["log_history"]
    assert not [row for row in logged if "eval_dlr" in row or "eval_s_init" in row]


def test_other_examples_under_the_same_prefix_leave_s_init_missing(tmp_path, caplog):
    """evaluate(eval_dataset=other) of the same size: its batches cannot be paired with step 0's features."""
    callback = DLRCallback()
    trainer = make_trainer(tmp_path, max_steps=5, eval_steps=5, eval_size=301, callback=callback)
    trainer.train()
    trainer.evaluate(eval_dataset=with_pixels(digits_dataset()["test"].select(range(59, 360)), image_processor()))
    first, other = callback.history
    assert 0 < first["eval_s_init"] <= 1 and "warning" not in first
    assert math.isnan(other["eval_s_init"]) and "S_init: this evaluation's examples are not those 'eval'" in other["warning"]
    assert math.isfinite(first["eval_dlr_change"])
    assert math.isnan(other["eval_dlr_change"]) and "dlr_change: this evaluation's examples are not" in other["warning"]
    assert 0 <= other["eval_dlr"] <= 1
    assert "eval_s_init" not in trainer.state.log_history[-1] and "eval_dlr" in trainer.state.log_history[-1]


def test_evaluate_before_training_has_no_reference_and_no_warning(tmp_path, caplog):
    """Without a training run there is no θ0: S_init and param_change are simply not part of the row."""
    callback = DLRCallback(num_samples=64)
    trainer = make_trainer(tmp_path, callback=callback)
    trainer.evaluate()
    (row,) = callback.history
    assert 0 <= row["eval_dlr"] <= 1 and row["eval_param_norm"] > 0
    assert "eval_s_init" not in row and "eval_param_change" not in row and "warning" not in row
    assert "eval_dlr_change" not in row and "eval_dlr_initial" not in row
    assert not warnings_of(caplog) and not callback.warnings


def test_an_eval_set_without_a_probe_is_a_warning_not_a_crash(tmp_path):
    """Per-set probes over a dict of eval datasets, then evaluate() on a set the Trainer never held: that
    measurement is missing with the reason, the Trainer's evaluation itself completes."""
    callback = DLRCallback(source="probe", num_samples=64)
    trainer = make_trainer(tmp_path, max_steps=5, eval_steps=5, eval_dict=True, callback=callback)
    trainer.train()
    new = with_pixels(digits_dataset()["test"].select(range(40)), image_processor())
    metrics = trainer.evaluate(eval_dataset={"new": new})
    assert "eval_new_loss" in metrics
    (row,) = [row for row in callback.history if row["probe"] == "new"]
    assert math.isnan(row["eval_new_dlr"]) and "no probe for 'new'" in row["warning"]
    assert "eval_new_dlr" not in {key for entry in trainer.state.log_history for key in entry}
    assert any("no probe for 'new'" in warning for warning in callback.warnings)
