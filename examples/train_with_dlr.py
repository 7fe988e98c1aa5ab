"""Train the same network rich and lazy on digits with ``DLRCallback`` and plot both trajectories.

    python examples/train_with_dlr.py --output runs/rich-vs-lazy

"rich": full back-propagation. "lazy": only the final linear layer trains (features frozen at
initialisation). D_LR separates the two whatever their accuracies — the paper's central point.
Writes ``rich_vs_lazy.png`` (D_LR and eval accuracy against step, both regimes) into --output.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from transformers import Trainer, TrainingArguments

from dlr_hf import DLRCallback
from dlr_hf.engine.demo import digits_dataset, tiny_vit, trainer_rows
from dlr_hf.surfaces.plots import save_figure, trajectory_figure


def accuracy(prediction) -> dict[str, float]:
    return {"accuracy": float(np.mean(prediction.predictions.argmax(-1) == prediction.label_ids))}


def train(regime: str, train_rows, eval_rows, output: Path, steps: int) -> tuple[list[dict], str]:
    """The run's logged evaluations, and the callback's calibrated verdict on its last one."""
    model = tiny_vit()
    if regime == "lazy":
        for name, param in model.named_parameters():
            param.requires_grad = name.startswith("classifier.")
    args = TrainingArguments(
        output_dir=str(output / regime), max_steps=steps, per_device_train_batch_size=32,
        learning_rate=1e-2 if regime == "lazy" else 1e-3, eval_strategy="steps", eval_steps=max(steps // 10, 1),
        logging_steps=max(steps // 10, 1), save_strategy="no", use_cpu=True, report_to=[], seed=0, disable_tqdm=True,
    )
    callback = DLRCallback(num_samples=360)
    trainer = Trainer(
        model=model, args=args, train_dataset=train_rows, eval_dataset=eval_rows,
        compute_metrics=accuracy, callbacks=[callback],
    )
    trainer.train()
    verdict = callback.verdicts.get("eval_dlr")
    rows = [row for row in trainer.state.log_history if "eval_dlr" in row or "eval_accuracy" in row]
    return rows, verdict.text if verdict is not None else "no verdict (D_LR at step 0 unknown)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path("runs/rich-vs-lazy"))
    parser.add_argument("--steps", type=int, default=400)
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = digits_dataset()
    train_rows, eval_rows = trainer_rows(data["train"]), trainer_rows(data["test"])
    series: dict[str, list] = {}
    steps: list[int] = []
    for regime in ("rich", "lazy"):
        logged, verdict = train(regime, train_rows, eval_rows, args.output, args.steps)
        rows = {row["step"]: row for row in logged if "eval_dlr" in row}
        steps = sorted(rows)
        series[f"{regime} D_LR"] = [rows[s]["eval_dlr"] for s in steps]
        series[f"{regime} accuracy"] = [rows[s].get("eval_probe_accuracy") for s in steps]
        print(f"{regime}: final D_LR {series[f'{regime} D_LR'][-1]:.3f}, accuracy {series[f'{regime} accuracy'][-1]:.3f} — {verdict}")
    figure = trajectory_figure(steps, series)
    figure.axes[0].set_title("Rich vs lazy training on digits: D_LR separates them, accuracy does not")
    path = save_figure(figure, args.output / "rich_vs_lazy.png")
    print(f"plot written to {path}")


if __name__ == "__main__":
    main()
