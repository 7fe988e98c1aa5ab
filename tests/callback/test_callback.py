"""DLRCallback in a real Trainer: logged values, agreement with evaluate(), resume, integrations.

The references are ``dlr_hf.evaluate`` on the checkpoint the Trainer saved at the measured step, over
the same examples, with the initial model (``tiny_vit()``, seeded) as the S_init reference; D_LR at
initialisation is ``dlr_hf.evaluate`` of that initial model alone.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import pytest
from transformers import TrainerCallback

from dlr_hf import DLRCallback, evaluate
from dlr_hf.engine.demo import digits_dataset, image_processor, tiny_vit

sys.path.insert(0, str(Path(__file__).parent))
from training import EVAL_SIZE, launch_two, make_trainer, with_pixels  # noqa: E402

EVAL_BATCH = 64


def reference(checkpoint: Path, size: int | None = None, **settings):
    """evaluate() on the checkpoint over the first ``size`` test examples (all by default), S_init against θ0."""
    test = digits_dataset()["test"]
    data = test if size is None else test.select(range(size))
    settings = {"num_samples": None, "batch_size": EVAL_BATCH, "reference_model": tiny_vit(), **settings}
    return evaluate(str(checkpoint), data, progress=False, **settings)


def initial(size: int | None = None, **settings):
    """evaluate() of the model at step 0 (``tiny_vit()``: the seeded copy every run here starts from) over
    the first ``size`` test examples: D_LR at initialisation, measured independently of any callback."""
    test = digits_dataset()["test"]
    data = test if size is None else test.select(range(size))
    settings = {"num_samples": None, "batch_size": EVAL_BATCH, "baselines": False, **settings}
    return evaluate(tiny_vit(), data, processor=image_processor(), progress=False, **settings)


def callback_of(trainer) -> DLRCallback:
    (callback,) = [cb for cb in trainer.callback_handler.callbacks if isinstance(cb, DLRCallback)]
    return callback


def assert_matches(logged: dict, prefix: str, report) -> None:
    assert logged[f"{prefix}dlr"] == pytest.approx(report.dlr, abs=1e-10)
    assert logged[f"{prefix}nc1"] == pytest.approx(report.result.nc1, rel=1e-8)
    assert logged[f"{prefix}s_init"] == pytest.approx(report.baselines["s_init"], abs=1e-10)
    assert logged[f"{prefix}param_change"] == pytest.approx(report.baselines["param_change"], rel=1e-6)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    output = tmp_path_factory.mktemp("run")
    trainer = make_trainer(output, report_to=["tensorboard"])
    trainer.train()
    return trainer, output


def entries(log_history, key):
    return [row for row in log_history if key in row]


def test_dlr_is_logged_at_every_evaluation(trained):
    trainer, _ = trained
    logged = entries(trainer.state.log_history, "eval_dlr")
    assert [row["step"] for row in logged] == [10, 20, 30]
    for row in logged:
        assert 0.0 <= row["eval_dlr"] <= 1.0
        assert row["eval_dlr_rank"] == 10
        for key in ("eval_nc1", "eval_s_init", "eval_param_norm", "eval_param_change", "eval_effective_rank"):
            assert key in row, key
    assert 0.0 < logged[0]["eval_s_init"] <= 1.0
    assert logged[-1]["eval_param_change"] > logged[0]["eval_param_change"] > 0


def test_logged_value_equals_an_independent_evaluation(trained):
    trainer, output = trained
    logged = entries(trainer.state.log_history, "eval_dlr")[-1]
    report = reference(output / "checkpoint-30")
    assert report.result.num_samples == 360
    assert_matches(logged, "eval_", report)


class CountEvalForwards(TrainerCallback):
    """Counts the model's forwards in eval mode (the Trainer's evaluations and anything else)."""

    def __init__(self) -> None:
        self.forwards = 0

    def on_init_end(self, args, state, control, model=None, **kwargs):
        model.register_forward_hook(self.count)

    def count(self, module, args, output):
        self.forwards += not module.training


def test_change_from_initialisation_equals_an_independent_evaluation(trained):
    """eval_dlr_change = eval_dlr − D_LR of the step-0 model on the same 360 examples; the constant
    eval_dlr_initial is in the history (and callback.initial_dlr), not in the logs."""
    trainer, output = trained
    callback = callback_of(trainer)
    start = initial()
    assert start.result.num_samples == 360
    logged = entries(trainer.state.log_history, "eval_dlr")
    for row in logged:
        assert row["eval_dlr_change"] == pytest.approx(row["eval_dlr"] - start.dlr, abs=1e-8)
        assert "eval_dlr_initial" not in row
    assert callback.initial_dlr == {"eval_dlr": pytest.approx(start.dlr, abs=1e-8)}
    history = json.loads((output / "dlr_history.json").read_text())
    for row, published in zip(history, logged):
        assert row["eval_dlr_initial"] == pytest.approx(start.dlr, abs=1e-8)
        assert row["eval_dlr_change"] == published["eval_dlr_change"]
    # The engine's verdict on the last measurement, calibrated by that change and S_init.
    verdict = callback.verdicts["eval_dlr"]
    assert verdict.basis == "change from initialisation"
    assert (verdict.dlr, verdict.change, verdict.s_init) == (
        logged[-1]["eval_dlr"], pytest.approx(logged[-1]["eval_dlr_change"], abs=1e-12), logged[-1]["eval_s_init"]
    )


@pytest.mark.parametrize("prediction_loss_only", [False, True])
def test_rides_on_the_evaluation_and_counts_every_example_once(tmp_path, prediction_loss_only):
    """301 examples in batches of 64: a last batch of 45; no forward besides the Trainer's evaluations
    but the step-0 pass for S_init (and the two-row forward that locates the head)."""
    counter = CountEvalForwards()
    trainer = make_trainer(
        tmp_path, max_steps=10, eval_steps=5, eval_size=EVAL_SIZE, extra_callbacks=[counter],
        prediction_loss_only=prediction_loss_only,
    )
    trainer.train()
    logged = entries(trainer.state.log_history, "eval_dlr")
    assert [row["step"] for row in logged] == [5, 10]
    assert ("eval_accuracy" in entries(trainer.state.log_history, "eval_loss")[0]) is not prediction_loss_only
    for row in logged:
        assert_matches(row, "eval_", reference(tmp_path / f"checkpoint-{row['step']}", EVAL_SIZE))
    batches = -(-EVAL_SIZE // EVAL_BATCH)
    assert counter.forwards == (1 + len(logged)) * batches + 1


def test_training_mode_restored_and_hooks_freed(trained):
    trainer, _ = trained
    model = trainer.model
    assert all(not module._forward_hooks for module in model.modules())
    assert all(not module._forward_pre_hooks for module in model.modules())


def test_history_files_written_at_train_end(trained):
    _, output = trained
    history = json.loads((output / "dlr_history.json").read_text())
    assert [row["step"] for row in history] == [10, 20, 30]
    assert (output / "dlr_history.csv").read_text().splitlines()[0].startswith("step,epoch,probe")
    assert (output / "dlr_trajectory.png").stat().st_size > 10_000


def test_value_reaches_tensorboard(trained):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    trainer, output = trained
    event_file = next(output.rglob("events.out.tfevents*"))
    events = EventAccumulator(str(event_file.parent))
    events.Reload()
    assert "eval/dlr" in events.Tags()["scalars"]
    values = [event.value for event in events.Scalars("eval/dlr")]
    logged = [row["eval_dlr"] for row in entries(trainer.state.log_history, "eval_dlr")]
    assert values == pytest.approx(logged, rel=1e-6)


def test_resume_keeps_earlier_history(tmp_path):
    first_callback = DLRCallback()
    first = make_trainer(tmp_path, max_steps=20, callback=first_callback)
    first.train()
    resumed_callback = DLRCallback()
    second = make_trainer(tmp_path, max_steps=30, callback=resumed_callback)
    second.train(resume_from_checkpoint=str(tmp_path / "checkpoint-20"))
    assert [row["step"] for row in resumed_callback.history] == [10, 20, 30]
    assert [row["step"] for row in entries(second.state.log_history, "eval_dlr")] == [10, 20, 30]
    assert "eval_s_init" in resumed_callback.history[-1]
    # D_LR at step 0 comes back from the reference file: the change after the resume is still from step 0.
    assert set(first_callback.initial_dlr) == {"eval_dlr"}
    assert resumed_callback.initial_dlr == first_callback.initial_dlr
    last = entries(second.state.log_history, "eval_dlr")[-1]
    assert last["eval_dlr_change"] == pytest.approx(last["eval_dlr"] - first_callback.initial_dlr["eval_dlr"], abs=1e-12)
    assert resumed_callback.history[-1]["eval_dlr_initial"] == first_callback.initial_dlr["eval_dlr"]
    assert not resumed_callback.warnings


def test_dict_of_eval_datasets_and_step_measurements(tmp_path):
    """Each eval set measured whole at its evaluation; every_n_steps over a 64-example probe of each."""
    callback = DLRCallback(every_n_steps=5, num_samples=64)
    trainer = make_trainer(tmp_path, max_steps=10, eval_dict=True, callback=callback)
    trainer.train()
    history = trainer.state.log_history
    assert [row["step"] for row in entries(history, "eval_digits_dlr")] == [10]
    assert [row["step"] for row in entries(history, "eval_head_dlr")] == [10]
    assert [row["step"] for row in entries(history, "digits_dlr")] == [5, 10]
    assert [row["step"] for row in entries(history, "head_dlr")] == [5, 10]
    checkpoint = tmp_path / "checkpoint-10"
    assert_matches(entries(history, "eval_digits_dlr")[0], "eval_digits_", reference(checkpoint))
    assert_matches(entries(history, "eval_head_dlr")[0], "eval_head_", reference(checkpoint, EVAL_SIZE))
    probe = reference(checkpoint, num_samples=64, seed=0)
    assert probe.result.num_samples == 64
    assert_matches(entries(history, "digits_dlr")[-1], "digits_", probe)
    # D_LR at step 0 of each eval set and each probe, under the key it calibrates.
    assert set(callback.initial_dlr) == {"eval_digits_dlr", "eval_head_dlr", "digits_dlr", "head_dlr"}
    for prefix, start in [("eval_head_", initial(EVAL_SIZE)), ("digits_", initial(num_samples=64, seed=0))]:
        assert callback.initial_dlr[f"{prefix}dlr"] == pytest.approx(start.dlr, abs=1e-8)
        row = entries(history, f"{prefix}dlr")[-1]
        assert row[f"{prefix}dlr_change"] == pytest.approx(row[f"{prefix}dlr"] - start.dlr, abs=1e-8)
    assert set(callback.verdicts) == set(callback.initial_dlr)


def probe_of(size: int):
    """The first ``size`` test examples in the Trainer's format, as a probe_dataset."""
    return with_pixels(digits_dataset()["test"].select(range(size)), image_processor())


def test_probe_dataset_is_one_probe_beside_a_dict_of_eval_datasets(tmp_path):
    """probe_dataset= with several eval sets: one probe, measured once per evaluation (not once per eval
    set, under eval_dlr …), with S_init and the change from its step-0 pass; every_n_steps reads the same
    probe (dlr …). Both equal evaluate() of the checkpoint on the probe's 100 examples."""
    size = 100
    callback = DLRCallback(probe_dataset=probe_of(size), every_n_steps=5)
    trainer = make_trainer(tmp_path, max_steps=10, eval_dict=True, callback=callback)
    trainer.train()
    history = trainer.state.log_history
    assert not callback.warnings
    assert [row["step"] for row in entries(history, "eval_digits_loss")] == [10]  # the Trainer evaluated both sets
    assert not [key for row in history for key in row if "dlr" in key and key.startswith(("eval_digits", "eval_head"))]
    assert [row["step"] for row in entries(history, "eval_dlr")] == [10]
    assert [row["step"] for row in entries(history, "dlr")] == [5, 10]
    assert [(row["step"], row["probe"]) for row in callback.history] == [(5, "eval"), (10, "eval"), (10, "eval")]
    report, start = reference(tmp_path / "checkpoint-10", size), initial(size)
    for prefix in ("eval_", ""):
        row = entries(history, f"{prefix}dlr")[-1]
        assert_matches(row, prefix, report)
        assert row[f"{prefix}dlr_change"] == pytest.approx(row[f"{prefix}dlr"] - start.dlr, abs=1e-8)
    assert callback.initial_dlr == {"eval_dlr": pytest.approx(start.dlr, abs=1e-8), "dlr": pytest.approx(start.dlr, abs=1e-8)}
    assert set(callback.verdicts) == {"eval_dlr", "dlr"}


def test_eval_source_with_a_probe_for_step_measurements_over_a_dict_of_eval_datasets(tmp_path):
    """source="eval" beside probe_dataset= (for every_n_steps) and several eval sets: each eval set is
    recorded at step 0 under its own name, the probe under its own (training starts; nothing missing)."""
    size = 64
    callback = DLRCallback(probe_dataset=probe_of(size), source="eval", every_n_steps=5)
    trainer = make_trainer(tmp_path, max_steps=5, eval_steps=5, eval_dict=True, callback=callback)
    trainer.train()
    history = trainer.state.log_history
    assert not callback.warnings
    checkpoint = tmp_path / "checkpoint-5"
    for prefix, examples in [("eval_head_", EVAL_SIZE), ("", size)]:
        (row,) = entries(history, f"{prefix}dlr")
        assert_matches(row, prefix, reference(checkpoint, examples))
        start = initial(examples)
        assert row[f"{prefix}dlr_change"] == pytest.approx(row[f"{prefix}dlr"] - start.dlr, abs=1e-8)
    assert set(callback.initial_dlr) == {"eval_digits_dlr", "eval_head_dlr", "dlr"}
    assert set(callback.verdicts) == set(callback.initial_dlr)


def test_profile_across_depth_at_every_evaluation(tmp_path):
    """layers="blocks": eval_dlr/block_NN per block, equal to evaluate(layers="blocks") on the same examples."""
    trainer = make_trainer(tmp_path, max_steps=5, eval_steps=5, eval_size=EVAL_SIZE, callback=DLRCallback(layers="blocks"))
    trainer.train()
    (logged,) = entries(trainer.state.log_history, "eval_dlr")
    report = reference(tmp_path / "checkpoint-5", EVAL_SIZE, layers="blocks")
    assert [row["name"] for row in report.layers] == ["block_00", "block_01"]
    for row in report.layers:
        assert logged[f"eval_dlr/{row['name']}"] == pytest.approx(row["dlr"], abs=1e-10)
    assert_matches(logged, "eval_", report)


def test_profile_change_from_initialisation_survives_a_resume(tmp_path):
    """eval_dlr_change/block_NN = eval_dlr/block_NN − that block's D_LR at step 0 (evaluate(layers="blocks")
    of the initial model on the same examples); the step-0 values come back from the reference on resume."""
    first_callback = DLRCallback(layers="blocks")
    first = make_trainer(tmp_path, max_steps=5, eval_steps=5, eval_size=EVAL_SIZE, callback=first_callback)
    first.train()
    start = initial(EVAL_SIZE, layers="blocks")
    names = [row["name"] for row in start.layers]
    assert names == ["block_00", "block_01"]
    assert first_callback.initial_dlr == pytest.approx(
        {"eval_dlr": start.dlr, **{f"eval_dlr/{row['name']}": row["dlr"] for row in start.layers}}, abs=1e-8
    )
    resumed_callback = DLRCallback(layers="blocks")
    second = make_trainer(tmp_path, max_steps=10, eval_steps=5, eval_size=EVAL_SIZE, callback=resumed_callback)
    second.train(resume_from_checkpoint=str(tmp_path / "checkpoint-5"))
    logged = entries(second.state.log_history, "eval_dlr")
    assert [row["step"] for row in logged] == [5, 10]
    for row in logged:
        for layer in start.layers:
            name = layer["name"]
            assert row[f"eval_dlr_change/{name}"] == pytest.approx(row[f"eval_dlr/{name}"] - layer["dlr"], abs=1e-8)
            assert f"eval_dlr_initial/{name}" not in row
    history = resumed_callback.history[-1]
    assert history["eval_dlr_initial/block_01"] == pytest.approx(start.layers[1]["dlr"], abs=1e-8)
    assert resumed_callback.initial_dlr == first_callback.initial_dlr
    assert not first_callback.warnings and not resumed_callback.warnings


def test_probe_source_measures_its_own_subsample(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="dlr_hf.surfaces.callback")
    callback = DLRCallback(source="probe", num_samples=100)
    trainer = make_trainer(tmp_path, max_steps=5, eval_steps=5, callback=callback)
    trainer.train()
    (logged,) = entries(trainer.state.log_history, "eval_dlr")
    report = reference(tmp_path / "checkpoint-5", num_samples=100, seed=0)
    assert report.result.num_samples == 100
    assert_matches(logged, "eval_", report)
    start = initial(num_samples=100, seed=0)
    assert logged["eval_dlr_change"] == pytest.approx(logged["eval_dlr"] - start.dlr, abs=1e-8)
    assert callback.initial_dlr == {"eval_dlr": pytest.approx(start.dlr, abs=1e-8)}
    # At train end one INFO line per key states the engine's verdict on the last measurement.
    text = callback.verdicts["eval_dlr"].text
    assert f"{start.dlr:.2f}" in text and f"{logged['eval_dlr']:.2f}" in text
    lines = [r.getMessage() for r in caplog.records if r.name == "dlr_hf.surfaces.callback" and r.levelno == logging.INFO]
    assert lines == [f"DLRCallback, eval_dlr at step 5: {text}"]


@pytest.mark.multiprocess
def test_two_processes_count_every_example_once(tmp_path):
    """301 examples, batches of 64 on 2 processes: the last step pads rank 0 (45 real of 64) and gives
    rank 1 repeats only; the logged values equal one process's evaluate() over the 301 examples."""
    launch_two(tmp_path, "--eval-size", str(EVAL_SIZE), timeout=600)
    record = json.loads((tmp_path / "log_history.json").read_text())
    assert record["world_size"] == 2
    logged = entries(record["log_history"], "eval_dlr")
    assert [row["step"] for row in logged] == [5, 10]
    for row in logged:
        assert_matches(row, "eval_", reference(tmp_path / f"checkpoint-{row['step']}", EVAL_SIZE))
    assert len(json.loads((tmp_path / "dlr_history.json").read_text())) == 2
    ranks = [json.loads((tmp_path / f"callback_rank{rank}.json").read_text()) for rank in (0, 1)]
    for record in ranks:
        assert not record["warnings"]
    # D_LR at step 0 reduced over both processes: every rank has the same change, one process's evaluate().
    start = initial(EVAL_SIZE)
    changes = [[row["eval_dlr_change"] for row in record["history"]] for record in ranks]
    assert changes[0] == changes[1] == [row["eval_dlr_change"] for row in logged]
    for row in logged:
        assert row["eval_dlr_change"] == pytest.approx(row["eval_dlr"] - start.dlr, abs=1e-8)
