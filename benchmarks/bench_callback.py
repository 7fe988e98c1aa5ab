"""Training time with and without DLRCallback at its defaults, as a ratio measured in one run.

    python benchmarks/bench_callback.py          # writes benchmarks/results/callback.md

The same Trainer run (a ViT built from config on the digits data, evaluation every 100 steps,
both runs evaluating) is timed with and without ``DLRCallback()`` (probe 512, baselines on),
alternating the two arms over several repeats; the report gives medians and their ratio.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from transformers import Trainer, TrainingArguments, ViTConfig, ViTForImageClassification

from dlr_hf import DLRCallback
from dlr_hf.engine.demo import digits_dataset, trainer_rows


def model() -> ViTForImageClassification:
    torch.manual_seed(0)
    config = ViTConfig(image_size=8, patch_size=2, num_channels=3, hidden_size=128, num_hidden_layers=4,
                       num_attention_heads=4, intermediate_size=256, num_labels=10)
    return ViTForImageClassification(config)


class TimedCallback(DLRCallback):
    """DLRCallback that also records the seconds spent in its one-off and per-evaluation work."""

    def __init__(self) -> None:
        super().__init__()
        self.seconds = {"one-off": 0.0, "per evaluation": []}

    def on_train_begin(self, *args, **kwargs):
        start = time.perf_counter()
        super().on_train_begin(*args, **kwargs)
        self.seconds["one-off"] += time.perf_counter() - start

    def on_evaluate(self, *args, **kwargs):
        start = time.perf_counter()
        super().on_evaluate(*args, **kwargs)
        self.seconds["per evaluation"].append(time.perf_counter() - start)

    def on_train_end(self, *args, **kwargs):
        start = time.perf_counter()
        super().on_train_end(*args, **kwargs)
        self.seconds["one-off"] += time.perf_counter() - start


SPENT: list[dict] = []


def timed_run(train_rows, eval_rows, steps: int, with_callback: bool) -> float:
    with tempfile.TemporaryDirectory() as output:
        args = TrainingArguments(
            output_dir=output, max_steps=steps, per_device_train_batch_size=32, per_device_eval_batch_size=64,
            eval_strategy="steps", eval_steps=100, save_strategy="no", logging_steps=100, use_cpu=True,
            report_to=[], seed=0, disable_tqdm=True,
        )
        callbacks = [TimedCallback()] if with_callback else []
        trainer = Trainer(model=model(), args=args, train_dataset=train_rows, eval_dataset=eval_rows, callbacks=callbacks)
        start = time.perf_counter()
        trainer.train()
        elapsed = time.perf_counter() - start
        if with_callback:
            SPENT.append(callbacks[0].seconds)
        return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steadier on a shared machine)")
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results" / "callback.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = digits_dataset()
    train_rows, eval_rows = trainer_rows(data["train"]), trainer_rows(data["test"])
    # The probe draws 512 examples: give it an eval set at least that large.
    eval_rows = (eval_rows * 2)[:720]
    timed_run(train_rows, eval_rows, 20, True)  # warm-up
    times = {False: [], True: []}
    for _ in range(args.repeats):
        for arm in (False, True):
            times[arm].append(timed_run(train_rows, eval_rows, args.steps, arm))
            print(f"callback={arm}: {times[arm][-1]:.2f}s")
    base, with_cb = statistics.median(times[False]), statistics.median(times[True])
    SPENT.pop(0)  # the warm-up run
    one_off = statistics.median(spent["one-off"] for spent in SPENT)
    per_eval = statistics.median(t for spent in SPENT for t in spent["per evaluation"])
    evaluations = args.steps // 100
    interval = base / evaluations  # Trainer-alone seconds per 100 steps, its evaluation included
    lines = [
        "# DLRCallback overhead",
        "",
        f"Command: `python benchmarks/bench_callback.py --steps {args.steps} --repeats {args.repeats} --threads {args.threads}` · "
        f"ViT (hidden 128, 4 layers) on digits, batch 32, evaluation every 100 steps in both arms, "
        f"callback defaults (probe 512, baselines on) · {torch.get_num_threads()} threads, torch {torch.__version__}",
        "",
        "| arm | runs (s) | median (s) |",
        "|---|---|---|",
        f"| Trainer alone | {', '.join(f'{t:.2f}' for t in times[False])} | {base:.2f} |",
        f"| Trainer + DLRCallback() | {', '.join(f'{t:.2f}' for t in times[True])} | {with_cb:.2f} |",
        "",
        f"**Ratio: {with_cb / base:.3f}×** (overhead {100 * (with_cb / base - 1):+.1f} %). Target ≤ 3 %.",
        "",
        "Where the callback's time goes (medians over the timed runs):",
        "",
        f"* one-off: {one_off:.2f} s (initial probe pass for S_init, parameter snapshot, history files and plot at the end)",
        f"* per evaluation: {per_eval:.2f} s (one forward pass over the 512-example probe, baselines), against "
        f"{interval:.2f} s of training and evaluation per 100 steps: **{100 * per_eval / interval:.1f} %** in steady state",
    ]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
