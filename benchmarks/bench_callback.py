"""Training time with and without DLRCallback at its defaults, as a ratio of interleaved runs.

    python benchmarks/bench_callback.py          # writes benchmarks/results/callback.md

The same Trainer run (a ViT built from config on the digits data, evaluation every ``--eval-steps``
steps in both arms) is timed with and without ``DLRCallback()`` — its defaults: it rides on the
Trainer's own evaluation (no forward pass of its own), baselines on (S_init, ‖θ‖², ‖θ − θ0‖/‖θ0‖).
The arms alternate (A B A B …) so that drifts of this shared machine hit both alike. Each run is
timed in CPU seconds of this process (``time.process_time``, one torch thread), which other jobs
on a shared machine barely disturb, and in wall seconds; the report gives the median of the
per-pair ratios and where the callback's time goes: once per run (θ0
snapshot and the initial model's pass over the eval set for S_init at train begin, history files
and plot at train end) and per evaluation (collecting from the Trainer's forwards, the reduction,
D_LR, S_init and the parameter baselines).
"""

from __future__ import annotations

import argparse
import functools
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch
from transformers import Trainer, TrainingArguments, ViTConfig, ViTForImageClassification

from dlr_hf import DLRCallback
from dlr_hf.engine.demo import digits_dataset, trainer_rows
from dlr_hf.surfaces import callback as callback_module


def model() -> ViTForImageClassification:
    torch.manual_seed(0)
    config = ViTConfig(image_size=8, patch_size=2, num_channels=3, hidden_size=128, num_hidden_layers=4,
                       num_attention_heads=4, intermediate_size=256, num_labels=10)
    return ViTForImageClassification(config)


class Stopwatch:
    """Seconds spent in the callback, by kind: wraps its entry points and its forward hooks.

    Hook time inside a one-off entry point (the train-begin pass) is part of that one-off time.
    """

    def __init__(self) -> None:
        self.seconds = {"one-off": 0.0, "hooks": 0.0, "on_evaluate": []}
        self._in_one_off = False

    def timed(self, function: Callable[..., Any], kind: str) -> Callable[..., Any]:
        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if kind == "hooks" and self._in_one_off:
                return function(*args, **kwargs)
            self._in_one_off = kind == "one-off"
            start = time.process_time()
            try:
                return function(*args, **kwargs)
            finally:
                elapsed = time.process_time() - start
                self._in_one_off = False
                if kind == "on_evaluate":
                    self.seconds[kind].append(elapsed)
                else:
                    self.seconds[kind] += elapsed

        return wrapper


def timed_callback(watch: Stopwatch) -> DLRCallback:
    callback = DLRCallback()
    for name in ("on_train_begin", "on_train_end"):
        setattr(callback, name, watch.timed(getattr(callback, name), "one-off"))
    callback.on_evaluate = watch.timed(callback.on_evaluate, "on_evaluate")
    return callback


def timed_run(train_rows, eval_rows, steps: int, eval_steps: int, watch: Stopwatch | None) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of one ``trainer.train()``."""
    with tempfile.TemporaryDirectory() as output:
        args = TrainingArguments(
            output_dir=output, max_steps=steps, per_device_train_batch_size=32, per_device_eval_batch_size=64,
            eval_strategy="steps", eval_steps=eval_steps, save_strategy="no", logging_steps=eval_steps, use_cpu=True,
            report_to=[], seed=0, disable_tqdm=True,
        )
        callbacks = [] if watch is None else [timed_callback(watch)]
        trainer = Trainer(model=model(), args=args, train_dataset=train_rows, eval_dataset=eval_rows, callbacks=callbacks)
        cpu, wall = time.process_time(), time.perf_counter()
        trainer.train()
        return time.process_time() - cpu, time.perf_counter() - wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--eval-steps", type=int, default=200)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steadier on a shared machine)")
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results" / "callback.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = digits_dataset()
    train_rows, eval_rows = trainer_rows(data["train"]), trainer_rows(data["test"])
    # The forward hooks are timed in every run with the callback (collect: taps → accumulators).
    watches: list[Stopwatch] = []
    ride = callback_module._Ride
    original_hooks = ride.before_forward, ride.after_forward

    def run(with_callback: bool, steps: int) -> tuple[float, float]:
        watch = Stopwatch() if with_callback else None
        if watch is not None:
            ride.before_forward = watch.timed(original_hooks[0], "hooks")
            ride.after_forward = watch.timed(original_hooks[1], "hooks")
            watches.append(watch)
        try:
            return timed_run(train_rows, eval_rows, steps, args.eval_steps, watch)
        finally:
            ride.before_forward, ride.after_forward = original_hooks

    run(True, args.eval_steps)  # warm-up: imports, allocator, first plot
    watches.clear()
    times: dict[bool, list[float]] = {False: [], True: []}
    walls: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(args.pairs):
        for arm in (False, True):
            cpu, wall = run(arm, args.steps)
            times[arm].append(cpu)
            walls[arm].append(wall)
            print(f"callback={arm}: {cpu:.2f} s CPU, {wall:.2f} s wall", flush=True)
    ratio = statistics.median(with_cb / base for base, with_cb in zip(times[False], times[True]))
    wall_ratio = statistics.median(with_cb / base for base, with_cb in zip(walls[False], walls[True]))
    evaluations = args.steps // args.eval_steps
    per_run = [
        {"one-off": w.seconds["one-off"], "per evaluation": (w.seconds["hooks"] + sum(w.seconds["on_evaluate"])) / evaluations}
        for w in watches
    ]
    one_off = statistics.median(spent["one-off"] for spent in per_run)
    per_eval = statistics.median(spent["per evaluation"] for spent in per_run)
    base = statistics.median(times[False])
    interval = base / evaluations  # Trainer-alone seconds per evaluation interval, its evaluation included
    lines = [
        "# DLRCallback overhead",
        "",
        f"Command: `python benchmarks/bench_callback.py --steps {args.steps} --eval-steps {args.eval_steps} "
        f"--pairs {args.pairs} --threads {args.threads}` · ViT (hidden 128, 4 layers) on digits (360 eval examples), "
        f"training batch 32, eval batch 64, evaluation every {args.eval_steps} steps in both arms · callback defaults "
        f"(rides on the Trainer's evaluation, baselines on) · {torch.get_num_threads()} thread(s), torch {torch.__version__}",
        "",
        "| pair | Trainer alone: CPU s (wall s) | Trainer + DLRCallback(): CPU s (wall s) | CPU ratio | wall ratio |",
        "|---|---|---|---|---|",
        *(
            f"| {i + 1} | {a:.2f} ({wa:.2f}) | {b:.2f} ({wb:.2f}) | {b / a:.4f} | {wb / wa:.4f} |"
            for i, (a, b, wa, wb) in enumerate(zip(times[False], times[True], walls[False], walls[True]))
        ),
        "",
        f"**Ratio (median of the pairs, CPU time): {ratio:.4f}×** (overhead {100 * (ratio - 1):+.2f} %); wall "
        f"time {wall_ratio:.4f}×. Target ≤ 1 %.",
        "",
        "Where the callback's time goes (CPU seconds, medians over the timed runs with the callback):",
        "",
        f"* one-off: {one_off:.3f} s per run — θ0 snapshot, the initial model's forward pass over the eval set "
        f"(S_init's step-0 features), history files and plot at the end: {100 * one_off / base:.2f} % of this "
        f"{args.steps}-step run;",
        f"* per evaluation: {per_eval:.3f} s — collecting from the Trainer's own evaluation forwards, the reduction, "
        f"D_LR, S_init and the parameter baselines — against {interval:.2f} s of training and evaluation per "
        f"{args.eval_steps} steps: **{100 * per_eval / interval:.2f} %** in steady state.",
    ]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
