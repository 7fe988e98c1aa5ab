"""Three CPU processes whose statistics differ in shape: every rank raises the same typed error and
none hangs in a collective (issue #9). Time-boxed: a hang fails the test instead of blocking CI."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.multiprocess
def test_three_processes_with_different_shapes_all_raise_and_none_hangs(tmp_path):
    worker = Path(__file__).with_name("shape_agreement_worker.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "3", "--master_port", str(_free_port()),
        str(worker), str(tmp_path),
    ]
    try:
        finished = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    except subprocess.TimeoutExpired as timeout:
        pytest.fail(f"the processes hung: {timeout}")
    assert finished.returncode == 0, finished.stderr[-3000:]
    outcomes = [[json.loads(line) for line in (tmp_path / f"rank{r}.jsonl").read_text().splitlines()] for r in range(3)]
    by_scenario = {row["scenario"]: [ranks[i] for ranks in outcomes] for i, row in enumerate(outcomes[0])}
    assert all(row["world"] == 3 for ranks in by_scenario.values() for row in ranks)
    for scenario in ("label_widths_differ", "feature_dims_differ", "one_rank_saw_no_batch", "cka_dims_differ"):
        assert [row["error"] for row in by_scenario[scenario]] == ["ShapeMismatchError"] * 3, scenario
    assert "label_classes" in by_scenario["label_widths_differ"][0]["message"]
    legit = by_scenario["labels_only_on_some_ranks"]
    assert [row["error"] for row in legit] == [None] * 3
    assert [row["count"] for row in legit] == [60] * 3
    assert [row["num_labelled"] for row in legit] == [20] * 3
