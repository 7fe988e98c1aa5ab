"""Every bad input gets a typed error (API) and a one-line ``dlr-hf: error: ...`` (CLI), never a traceback.

Each case runs twice: through ``evaluate()`` (the error's class is checked) and through the CLI's
``main()`` (exit status 2, exactly one error line on stderr, no traceback). One case also runs the
CLI as a real process.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import datasets
import datasets.config
import huggingface_hub.constants
import pytest
import torch
import transformers as tf
from torch import nn

import engine_helpers as eh
from dlr_hf.engine import evaluate
from dlr_hf.errors import (
    DatasetLoadError,
    DLRError,
    HeadNotFoundError,
    InputColumnError,
    LayerNotFoundError,
    ModalityMismatchError,
    ModelLoadError,
    NonFiniteError,
    TooFewSamplesError,
)
from dlr_hf.surfaces.cli import main

POISONED_WORD = "cat"
POISONED_ROWS = (1, 4, 6)


@dataclass
class Inputs:
    """Things on disk the bad-input cases point at."""

    bert: Path
    nan_bert: Path
    texts: Path
    texts_ds: datasets.Dataset
    poisoned_ds: datasets.Dataset
    poisoned: Path
    numeric: Path
    empty: Path
    empty_saved: Path
    script: Path
    single: Path
    demo: dict[str, Path]
    hub: eh.HubCaches


def poisoned_texts() -> datasets.Dataset:
    """8 sentences; only rows 1, 4 and 6 contain the word whose embedding is NaN."""
    words = [w for w in eh.WORDS if w != POISONED_WORD]
    rows = [" ".join(words[(3 * i) % len(words) : (3 * i) % len(words) + 4]) for i in range(8)]
    for row in POISONED_ROWS:
        rows[row] = f"{rows[row]} {POISONED_WORD}"
    return datasets.Dataset.from_dict({"text": rows, "label": [i % 3 for i in range(8)]})


def nan_bert(tokenizer: Any) -> tf.BertForSequenceClassification:
    model = eh.tiny_bert()
    with torch.no_grad():
        model.bert.embeddings.word_embeddings.weight[tokenizer.convert_tokens_to_ids(POISONED_WORD)] = float("nan")
    return model


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, tokenizer, demo, hub) -> Inputs:
    root = tmp_path_factory.mktemp("bad-inputs")
    model = eh.tiny_bert()
    model.save_pretrained(root / "bert")
    tokenizer.save_pretrained(root / "bert")
    nan_bert(tokenizer).save_pretrained(root / "nan-bert")
    tokenizer.save_pretrained(root / "nan-bert")
    texts = eh.text_dataset(12)
    texts.save_to_disk(str(root / "texts"))
    poisoned = poisoned_texts()
    poisoned.save_to_disk(str(root / "poisoned"))
    datasets.Dataset.from_dict({"x": [0.5, 1.5, 2.5], "label": [0, 1, 0]}).save_to_disk(str(root / "numeric"))
    datasets.DatasetDict({"test": texts.select([]), "train": texts}).save_to_disk(str(root / "empty-saved"))
    (root / "empty").mkdir()  # data files: an empty test split beside a train split
    texts.to_parquet(str(root / "empty" / "train.parquet"))
    texts.select([]).to_parquet(str(root / "empty" / "test.parquet"))
    texts.select([0]).save_to_disk(str(root / "single"))
    script = root / "my_set"
    script.mkdir()
    (script / "my_set.py").write_text("import datasets\n\nclass MySet(datasets.GeneratorBasedBuilder):\n    pass\n")
    return Inputs(root / "bert", root / "nan-bert", root / "texts", texts, poisoned, root / "poisoned",
                  root / "numeric", root / "empty", root / "empty-saved", script, root / "single", demo, hub)


@pytest.fixture(autouse=True)
def offline_caches(hub, monkeypatch):
    """Hub and datasets caches that hold only org/tiny-bert and org/texts (HF_HUB_OFFLINE=1 from conftest)."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub.hub_cache))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", hub.datasets_cache)


class TanhHead(nn.Module):
    """A model whose logits are tanh(Linear(·)): no nn.Linear produces them."""

    main_input_name = "input_ids"

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(30522, 16)
        self.proj = nn.Linear(16, 3)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **_: Any) -> dict[str, torch.Tensor]:
        return {"logits": torch.tanh(self.proj(self.embed(input_ids).mean(1)))}


# name -> (CLI arguments, API call, error class, fragment of the message)
Case = tuple[list[str], Callable[[], Any], type[DLRError], str]


def cases(i: Inputs, tokenizer: Any) -> dict[str, Case]:
    texts, bert = str(i.texts), str(i.bert)
    return {
        "unknown model id": (
            ["org/no-such-model", "--dataset", texts],
            lambda: evaluate("org/no-such-model", i.texts_ds),
            ModelLoadError, "'org/no-such-model'",
        ),
        "unknown revision": (
            [i.hub.model_id, "--revision", "v9.9", "--dataset", texts],
            lambda: evaluate(i.hub.model_id, i.texts_ds, revision="v9.9"),
            ModelLoadError, "revision 'v9.9'",
        ),
        "unknown dataset": (
            [bert, "--dataset", "org/no-such-data"],
            lambda: evaluate(bert, "org/no-such-data"),
            DatasetLoadError, "'org/no-such-data'",
        ),
        "unknown config": (
            [bert, "--dataset", i.hub.dataset_id, "--dataset-config", "nope"],
            lambda: evaluate(bert, i.hub.dataset_id, dataset_config="nope"),
            DatasetLoadError, "config 'nope'",
        ),
        "unknown split": (
            [bert, "--dataset", str(i.demo["data"]), "--split", "nope"],
            lambda: evaluate(bert, str(i.demo["data"]), split="nope"),
            DatasetLoadError, "no split 'nope'; it has train, test",
        ),
        "loading script": (
            [bert, "--dataset", str(i.script)],
            lambda: evaluate(bert, str(i.script)),
            DatasetLoadError, "loading script",
        ),
        "no usable input column": (
            [bert, "--dataset", str(i.numeric)],
            lambda: evaluate(bert, str(i.numeric)),
            InputColumnError, "no text input column found among x, label",
        ),
        "named input column missing": (
            [bert, "--dataset", texts, "--input-column", "body"],
            lambda: evaluate(bert, texts, input_columns=["body"]),
            InputColumnError, "no column 'body'",
        ),
        "no linear head (base model)": (
            [eh.minilm_path(), "--dataset", texts],
            lambda: evaluate(eh.minilm_path(), texts),
            HeadNotFoundError, "no tensor 'logits'",
        ),
        "no linear head (tanh after the Linear)": (
            None,
            lambda: evaluate(TanhHead().eval(), i.texts_ds, processor=tokenizer),
            HeadNotFoundError, "No nn.Linear of TanhHead produces its 'logits'",
        ),
        "layer that is not a Linear": (
            [bert, "--dataset", texts, "--layer", "bert.pooler"],
            lambda: evaluate(bert, texts, layer="bert.pooler"),
            LayerNotFoundError, "is a BertPooler, not a linear layer",
        ),
        "image model, text dataset": (
            [str(i.demo["rich"]), "--dataset", texts],
            lambda: evaluate(str(i.demo["rich"]), texts),
            ModalityMismatchError, "image model was given a dataset of text",
        ),
        "empty split": (
            [bert, "--dataset", str(i.empty)],
            lambda: evaluate(bert, i.texts_ds.select([])),
            DatasetLoadError, "is empty; pick a split with rows",
        ),
        "empty split saved to disk": (
            [bert, "--dataset", str(i.empty_saved)],
            lambda: evaluate(bert, str(i.empty_saved)),
            DatasetLoadError, "holds an empty split",
        ),
        "one example in the dataset": (
            [bert, "--dataset", str(i.single)],
            lambda: evaluate(bert, str(i.single)),
            TooFewSamplesError, "at least 2 examples; the dataset gives 1",
        ),
        "one example drawn": (
            [bert, "--dataset", texts, "--num-samples", "1"],
            lambda: evaluate(bert, texts, num_samples=1),
            TooFewSamplesError, "at least 2 examples; the dataset gives 1",
        ),
        "non-finite activations": (
            [str(i.nan_bert), "--dataset", str(i.poisoned), "--batch-size", "8"],
            lambda: evaluate(nan_bert(tokenizer), i.poisoned_ds, processor=tokenizer, batch_size=8),
            NonFiniteError, f"{len(POISONED_ROWS)} of 8 samples in this batch have non-finite",
        ),
        "model without --dataset": (
            [bert],
            None,
            DLRError, "--dataset is required",
        ),
    }


CASE_NAMES = [
    "unknown model id", "unknown revision", "unknown dataset", "unknown config", "unknown split", "loading script",
    "no usable input column", "named input column missing", "no linear head (base model)",
    "no linear head (tanh after the Linear)", "layer that is not a Linear", "image model, text dataset",
    "empty split", "empty split saved to disk", "one example in the dataset", "one example drawn", "non-finite activations",
    "model without --dataset",
]


def test_case_list_is_complete(inputs, tokenizer):
    table = cases(inputs, tokenizer)
    assert sorted(table) == sorted(CASE_NAMES)
    assert {name for name, case in table.items() if case[1] is None} == CLI_ONLY
    assert {name for name, case in table.items() if case[0] is None} == API_ONLY


CLI_ONLY = {"model without --dataset"}
API_ONLY = {"no linear head (tanh after the Linear)"}  # an in-memory model cannot be named on a command line


@pytest.mark.parametrize("name", [name for name in CASE_NAMES if name not in CLI_ONLY])
def test_api_raises_typed_error(name, inputs, tokenizer):
    _, call, error, fragment = cases(inputs, tokenizer)[name]
    with pytest.raises(error) as raised:
        call()
    message = str(raised.value)
    assert fragment in message
    assert "\n" not in message  # one line


@pytest.mark.parametrize("name", [name for name in CASE_NAMES if name not in API_ONLY])
def test_cli_exits_with_one_line(name, inputs, tokenizer, capsys):
    argv, _, _, fragment = cases(inputs, tokenizer)[name]
    status = main(["evaluate", *argv, "--quiet"])
    err = capsys.readouterr().err
    assert status == 2
    lines = eh.error_lines(err)
    assert len(lines) == 1 and fragment in lines[0], err
    assert "Traceback" not in err


def test_cli_process_reports_error_without_traceback(hub, inputs):
    """The real process: exit status 2, the error line on stderr, nothing on stdout."""
    done = eh.run_cli(["evaluate", "org/no-such-model", "--dataset", str(inputs.texts), "--quiet"], env=hub.env())
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    lines = eh.error_lines(done.stderr)
    assert len(lines) == 1 and "'org/no-such-model'" in lines[0]
    assert done.stdout == ""


def test_other_split_of_a_dataset_with_an_empty_split(inputs):
    """datasets cannot build the whole DatasetDict, but the non-empty split named by --split loads."""
    report = evaluate(str(inputs.bert), str(inputs.empty), split="train", progress=False)
    assert report.dataset["split"] == "train" and report.result.num_samples == 12
