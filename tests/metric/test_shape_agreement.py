"""Three CPU processes whose statistics differ in shape: every rank raises the same typed error and
none hangs in a collective (issue #9). Time-boxed: a hang fails the test instead of blocking CI."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import brute_force as bf
from shape_agreement_worker import rows


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
    # the label statistics are those of the labelled rows alone, whichever ranks kept them apart
    phi, labels = zip(*((phi, y) for phi, _, y in (rows(rank) for rank in range(3))))
    assert [row["nc1"] for row in legit] == pytest.approx([bf.nc1(phi[0], labels[0])] * 3, rel=1e-9)
    messy = by_scenario["messy_labels_on_one_rank"]
    keep = [np.ones(20, bool), np.arange(20) % 3 != 0, np.ones(20, bool)]
    kept_phi = np.concatenate([p[k] for p, k in zip(phi, keep)])
    kept_labels = np.concatenate([y[k] for y, k in zip(labels, keep)])
    assert [row["error"] for row in messy] == [None] * 3
    assert [row["num_labelled"] for row in messy] == [int(sum(k.sum() for k in keep))] * 3
    assert [row["nc1"] for row in messy] == pytest.approx([bf.nc1(kept_phi, kept_labels)] * 3, rel=1e-9)
    for row in messy:
        np.testing.assert_allclose(row["quality"], bf.quality(kept_phi, kept_labels, 3), atol=1e-9)
