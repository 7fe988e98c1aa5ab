"""Data parallel on CPU: two processes must give the one-process D_LR, with no duplicated sample.

accelerate 1.15's ``launch --cpu --num_processes 2`` starts ONE process (it spawns several only with
an MPI hostfile), so the two processes come from ``--multi_gpu`` (torchrun); on a machine without
an accelerator the engine then asks Accelerate for a CPU (gloo) process group.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import datasets
import pytest

import engine_helpers as eh
from dlr_hf.engine import evaluate


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.multiprocess
def test_two_processes_equal_one(demo, tmp_path):
    data_dir = tmp_path / "digits101"
    datasets.load_from_disk(str(demo["data"]))["test"].select(range(101)).save_to_disk(str(data_dir))
    output = tmp_path / "report.json"
    # CPU only even on a GPU machine: the point is the gloo process group the engine asks for on CPUs.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "CUDA_VISIBLE_DEVICES": ""}
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
        "-m", "dlr_hf", "evaluate", str(demo["rich"]), "--dataset", str(data_dir),
        "--batch-size", "8", "--num-samples", "all", "--output", str(output), "--quiet",
    ]
    done = subprocess.run(command, cwd=eh.REPO, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(output.read_text())

    single = evaluate(str(demo["rich"]), str(data_dir), num_samples=None, batch_size=8, progress=False)
    assert report["settings"]["num_processes"] == 2 and single.settings["num_processes"] == 1
    # 101 = 12 full batches of 8 + 5: shards of 7 and 6 batches, nothing padded or repeated.
    assert report["result"]["num_samples"] == report["dataset"]["num_examples"] == 101
    assert abs(report["dlr"] - single.dlr) <= 1e-10
    assert report["baselines"]["accuracy"] == pytest.approx(single.baselines["accuracy"], abs=1e-12)
    assert report["result"]["class_counts"] == single.result.class_counts
    # Only the main process prints.
    assert done.stdout.count("\ndataset ") + done.stdout.startswith("dataset ") == 1
    assert done.stdout.count("report written to") == 1
