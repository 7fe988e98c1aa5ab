"""DLRCallback in a real Trainer: logged values, agreement with evaluate(), resume, integrations."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dlr_hf import DLRCallback, evaluate
from dlr_hf.engine.demo import digits_dataset

sys.path.insert(0, str(Path(__file__).parent))
from training import make_trainer  # noqa: E402


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
    checkpoint = output / "checkpoint-30"
    report = evaluate(str(checkpoint), digits_dataset()["test"], num_samples=512, seed=0, batch_size=64, progress=False)
    assert report.result.num_samples == 360
    assert logged["eval_dlr"] == pytest.approx(report.dlr, abs=1e-10)
    assert logged["eval_nc1"] == pytest.approx(report.result.nc1, rel=1e-8)


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
    first = make_trainer(tmp_path, max_steps=20)
    first.train()
    resumed_callback = DLRCallback()
    second = make_trainer(tmp_path, max_steps=30, callback=resumed_callback)
    second.train(resume_from_checkpoint=str(tmp_path / "checkpoint-20"))
    assert [row["step"] for row in resumed_callback.history] == [10, 20, 30]
    assert [row["step"] for row in entries(second.state.log_history, "eval_dlr")] == [10, 20, 30]
    assert "eval_s_init" in resumed_callback.history[-1]


def test_dict_of_eval_datasets_and_step_measurements(tmp_path):
    callback = DLRCallback(every_n_steps=5, num_samples=64)
    trainer = make_trainer(tmp_path, max_steps=10, eval_dict=True, callback=callback)
    trainer.train()
    history = trainer.state.log_history
    assert [row["step"] for row in entries(history, "eval_digits_dlr")] == [10]
    assert [row["step"] for row in entries(history, "eval_again_dlr")] == [10]
    assert [row["step"] for row in entries(history, "digits_dlr")] == [5, 10]
    assert entries(history, "eval_digits_dlr")[0]["eval_digits_dlr"] == pytest.approx(
        entries(history, "eval_again_dlr")[0]["eval_again_dlr"], abs=1e-12
    )


@pytest.mark.multiprocess
def test_two_processes_log_once_without_hanging(tmp_path):
    script = Path(__file__).parent / "training.py"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent), "OMP_NUM_THREADS": "1"}
    # torch's launcher: two gloo processes on loopback (`accelerate launch --cpu` starts only one).
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
        str(script), str(tmp_path),
    ]
    subprocess.run(command, check=True, timeout=600, env=env, capture_output=True)
    record = json.loads((tmp_path / "log_history.json").read_text())
    assert record["world_size"] == 2
    history = record["log_history"]
    logged = entries(history, "eval_dlr")
    assert [row["step"] for row in logged] == [5, 10]
    assert all(0 <= row["eval_dlr"] <= 1 for row in logged)
    files = json.loads((tmp_path / "dlr_history.json").read_text())
    assert len(files) == 2
