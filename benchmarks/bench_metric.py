"""Streaming accumulator vs the n×n brute force, and the accumulator's memory, in one run.

    python benchmarks/bench_metric.py            # writes benchmarks/results/metric.md

Time: D_LR of the same (n×768 features, n×10 logits) by the brute-force kernel formula of SPEC §2
(K = Φ_cΦ_cᵀ, L = P_Y, both n×n) and by DLRAccumulator (batches of 512, then compute()).
Memory: peak resident memory of a fresh process streaming n = 1k vs 100k samples (features are
generated batch by batch, so only the accumulator's own state could grow with n).
"""

from __future__ import annotations

import argparse
import platform
import time
import resource
import subprocess
import sys
from pathlib import Path

import torch

from dlr_hf.metric import DLRAccumulator

P, C, BATCH = 768, 10, 512


def problem(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(n, P, generator=generator) @ torch.randn(P, P, generator=generator) / P**0.5
    logits = features @ torch.randn(P, C, generator=generator)
    return features, logits


def brute_force(features: torch.Tensor, logits: torch.Tensor) -> float:
    phi = (features - features.mean(0)).double()
    y = (logits - logits.mean(0)).double()
    kernel = phi @ phi.T
    u, s, _ = torch.linalg.svd(y, full_matrices=False)
    r = int((s > 1e-6 * s[0]).sum())
    projector = u[:, :r] @ u[:, :r].T
    return 1 - float((kernel * projector).sum() / (torch.linalg.matrix_norm(kernel) * r**0.5))


def streamed(features: torch.Tensor, logits: torch.Tensor) -> float:
    accumulator = DLRAccumulator()
    for start in range(0, features.shape[0], BATCH):
        accumulator.update(features[start : start + BATCH], logits[start : start + BATCH])
    return accumulator.compute().dlr


def timed(fn, *args) -> tuple[float, float]:
    start = time.perf_counter()
    value = fn(*args)
    return value, time.perf_counter() - start


def stream_only(n: int) -> None:
    """Child process: stream n samples, print peak RSS after imports and at the end (KiB)."""
    generator = torch.Generator().manual_seed(1)
    weight = torch.randn(P, C, generator=generator)
    accumulator = DLRAccumulator()
    features = torch.randn(BATCH, P, generator=generator)
    accumulator.update(features, features @ weight)  # warm-up: allocator and kernels in place
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for start in range(BATCH, n, BATCH):
        features = torch.randn(min(BATCH, n - start), P, generator=generator)
        accumulator.update(features, features @ weight)
    accumulator.compute()
    print(baseline, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def peak_rss_kib(n: int) -> tuple[int, int]:
    output = subprocess.run(
        [sys.executable, __file__, "--stream-only", str(n)], check=True, capture_output=True, text=True
    ).stdout.split()
    return int(output[0]), int(output[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 5000, 20000])
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results" / "metric.md")
    parser.add_argument("--stream-only", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stream_only:
        stream_only(args.stream_only)
        return
    # Memory first: a child's peak RSS starts from its parent's at fork time.
    memory = {n: peak_rss_kib(n) for n in (1_000, 100_000)}
    rows = []
    for n in args.sizes:
        features, logits = problem(n)
        reference, brute_seconds = timed(brute_force, features, logits)
        value, stream_seconds = timed(streamed, features, logits)
        rows.append((n, brute_seconds, stream_seconds, brute_seconds / stream_seconds, abs(reference - value)))
        print(f"n={n}: brute {brute_seconds:.2f}s, streamed {stream_seconds:.3f}s, ratio {brute_seconds / stream_seconds:.1f}x")
    growth_total = memory[100_000][1] / memory[1_000][1] - 1
    growth_streaming = (memory[100_000][1] - memory[100_000][0]) - (memory[1_000][1] - memory[1_000][0])
    lines = [
        "# Metric benchmark: streaming accumulator vs n×n brute force",
        "",
        f"Command: `python benchmarks/bench_metric.py` · p = {P}, C = {C}, batch {BATCH} · "
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        "",
        "| n | brute force n×n (s) | streaming (s) | speed-up | abs. difference of D_LR |",
        "|---|---|---|---|---|",
        *[f"| {n:,} | {b:.3f} | {s:.3f} | **{r:.1f}×** | {d:.1e} |" for n, b, s, r, d in rows],
        "",
        "| streamed n | peak RSS after warm-up (KiB) | peak RSS at the end (KiB) |",
        "|---|---|---|",
        *[f"| {n:,} | {base:,} | {peak:,} |" for n, (base, peak) in memory.items()],
        "",
        f"Peak memory growth from n = 1k to 100k: {100 * growth_total:+.2f} % of the process "
        f"({growth_streaming:+,} KiB more while streaming). Targets: ≥ 20× at n = 20k; growth < 5 %.",
    ]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
