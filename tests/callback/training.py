"""A real Trainer on the digits data with the demo's tiny ViT, shared by the callback tests.

Also runnable as a script (used under ``accelerate launch`` for the two-process test).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from transformers import Trainer, TrainingArguments

from dlr_hf import DLRCallback
from dlr_hf.engine.demo import digits_dataset, image_processor, tiny_vit


def with_pixels(split, processor):
    """Trainer-format rows (pixel_values, label), preprocessed on the fly, one row at a time."""

    def transform(rows):
        pixels = [processor(images=image.convert("RGB"), return_tensors="pt")["pixel_values"][0] for image in rows["image"]]
        return {"pixel_values": pixels, "label": rows["label"]}

    return split.with_transform(transform)


def free_port() -> int:
    """A loopback port nobody listens on, for torch.distributed.run's rendezvous."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch_two(output_dir: Path, *arguments: str, timeout: int) -> None:
    """This script on two gloo processes (torch's launcher: ``accelerate launch --cpu`` starts only one).

    A failure shows the launcher's last output; a rendezvous port taken between ``free_port()`` and the
    launch (another job grabbed it) is retried once on a new port, nothing else is.
    """
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent), "OMP_NUM_THREADS": "1"}
    for attempt in range(2):
        command = [
            sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
            str(Path(__file__)), str(output_dir), *arguments,
        ]
        finished = subprocess.run(command, timeout=timeout, env=env, capture_output=True, text=True)
        if finished.returncode == 0:
            return
        output = finished.stdout[-2000:] + finished.stderr[-6000:]
        if attempt == 0 and ("EADDRINUSE" in output or "address already in use" in output.lower()):
            continue
        raise AssertionError(f"the two processes failed (exit {finished.returncode}):\n{output}")


def accuracy(prediction) -> dict[str, float]:
    return {"accuracy": float(np.mean(prediction.predictions.argmax(-1) == prediction.label_ids))}


EVAL_SIZE = 301
"""An eval set that divides by neither the eval batch size (64) nor two processes: on two, the
last step pads rank 0's batch (45 real examples of 64) and fills rank 1's with repeats only."""


def make_trainer(
    output_dir: Path, *, max_steps: int = 30, eval_steps: int = 10, report_to=(), callback=None, eval_dict=False,
    eval_size: int | None = None, with_dlr: bool = True, extra_callbacks=(), **extra,
):
    """``callback`` (default a fresh DLRCallback) unless ``with_dlr`` is False, after ``extra_callbacks``.

    The eval set: the digits test split (360), or its first ``eval_size`` examples; ``eval_dict``:
    {"digits": the whole split, "head": its first EVAL_SIZE examples}.
    """
    torch.set_num_threads(1)
    data = digits_dataset()
    processor = image_processor()
    test = data["test"] if eval_size is None else data["test"].select(range(eval_size))
    evaluation = with_pixels(test, processor)
    args = TrainingArguments(
        output_dir=str(output_dir),
        max_steps=max_steps,
        per_device_train_batch_size=32,
        per_device_eval_batch_size=64,
        learning_rate=1e-3,
        eval_strategy="steps",
        eval_steps=eval_steps,
        save_strategy="steps",
        save_steps=eval_steps,
        logging_steps=eval_steps,
        remove_unused_columns=False,
        use_cpu=True,
        report_to=list(report_to),
        seed=0,
        **extra,
    )
    return Trainer(
        model=tiny_vit(),
        args=args,
        train_dataset=with_pixels(data["train"], processor),
        eval_dataset={"digits": evaluation, "head": with_pixels(data["test"].select(range(EVAL_SIZE)), processor)}
        if eval_dict else evaluation,
        processing_class=processor,
        compute_metrics=accuracy,
        callbacks=[*extra_callbacks, *([callback or DLRCallback()] if with_dlr else [])],
    )


if __name__ == "__main__":
    # Every process writes what its callback warned and recorded; the main one the log history.
    parser = argparse.ArgumentParser()
    parser.add_argument("output", type=Path)
    parser.add_argument("--probe-size", type=int, help="probe: the first PROBE_SIZE test examples (source='probe')")
    parser.add_argument("--eval-size", type=int, help="eval set: the first EVAL_SIZE test examples")
    cli = parser.parse_args()
    probe = None
    if cli.probe_size is not None:
        probe = with_pixels(digits_dataset()["test"].select(range(cli.probe_size)), image_processor())
    callback = DLRCallback(probe_dataset=probe)
    trainer = make_trainer(cli.output, max_steps=10, eval_steps=5, callback=callback, eval_size=cli.eval_size)
    trainer.train()
    if trainer.is_world_process_zero():
        record = {"world_size": trainer.args.world_size, "log_history": trainer.state.log_history}
        (cli.output / "log_history.json").write_text(json.dumps(record))
    rank = trainer.args.process_index
    record = {"global_step": trainer.state.global_step, "warnings": callback.warnings, "history": callback.history}
    (cli.output / f"callback_rank{rank}.json").write_text(json.dumps(record))
