"""One rank of the no-hang test: several scenarios of statistics whose shapes differ across ranks.

Run under ``torch.distributed.run``; each rank writes one JSON line per scenario saying what happened.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import torch
import torch.distributed as dist

from dlr_hf.errors import DLRError
from dlr_hf.metric import DLRAccumulator, LinearCKAAccumulator


def total(tensor: torch.Tensor) -> torch.Tensor:
    dist.all_reduce(tensor)
    return tensor


def rows(rank: int, n: int = 20, p: int = 5, c: int = 3):
    rng = np.random.default_rng(rank)
    phi = rng.normal(size=(n, p))
    return phi, phi @ rng.normal(size=(c, p)).T, rng.integers(0, c, size=n)


def label_widths_differ(rank: int) -> DLRAccumulator:
    accumulator = DLRAccumulator(num_classes=2 + rank)
    phi, logits, labels = rows(rank)
    accumulator.update(phi, logits, labels % (2 + rank))
    return accumulator


def feature_dims_differ(rank: int) -> DLRAccumulator:
    accumulator = DLRAccumulator()
    phi, logits, _ = rows(rank, p=4 + (rank == 2))
    accumulator.update(phi, logits)
    return accumulator


def one_rank_saw_no_batch(rank: int) -> DLRAccumulator:
    accumulator = DLRAccumulator()
    if rank != 1:
        phi, logits, _ = rows(rank)
        accumulator.update(phi, logits)
    return accumulator


def labels_only_on_some_ranks(rank: int) -> DLRAccumulator:
    """Legitimate: same shapes, labels on rank 0 only — must reduce, not raise."""
    accumulator = DLRAccumulator(num_classes=3)
    phi, logits, labels = rows(rank)
    accumulator.update(phi, logits, labels if rank == 0 else None)
    return accumulator


def messy_labels_on_one_rank(rank: int) -> DLRAccumulator:
    """Legitimate: ranks 0 and 2 fully labelled (one shared scatter), rank 1 with every third label −1
    (its labelled moments kept apart): every rank must hold them apart before the reduction."""
    accumulator = DLRAccumulator(num_classes=3)
    phi, logits, labels = rows(rank)
    if rank == 1:
        labels = np.where(np.arange(len(labels)) % 3 == 0, -1, labels)
    accumulator.update(phi, logits, labels)
    return accumulator


def cka_dims_differ(rank: int) -> LinearCKAAccumulator:
    cka = LinearCKAAccumulator()
    phi, _, _ = rows(rank, p=3 + rank)
    cka.update(phi, phi[:, :2])
    return cka


SCENARIOS = [
    label_widths_differ, feature_dims_differ, one_rank_saw_no_batch, labels_only_on_some_ranks, messy_labels_on_one_rank,
    cka_dims_differ,
]


def main() -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    out = open(f"{sys.argv[1]}/rank{rank}.jsonl", "w")
    for scenario in SCENARIOS:
        statistic = scenario(rank)
        try:
            statistic.all_reduce(total)
            outcome = {"scenario": scenario.__name__, "world": world, "error": None, "count": statistic.num_samples}
            if isinstance(statistic, DLRAccumulator):
                result = statistic.compute()
                outcome.update(num_labelled=result.num_labelled, nc1=result.nc1, quality=result.quality)
        except DLRError as error:
            outcome = {"scenario": scenario.__name__, "world": world, "error": type(error).__name__, "message": str(error)}
        out.write(json.dumps(outcome) + "\n")
        out.flush()
    dist.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
