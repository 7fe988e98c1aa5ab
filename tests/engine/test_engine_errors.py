"""Every bad input gets a typed error (API) and a one-line ``dlr-hf: error: ...`` (CLI), never a traceback.

Each case runs twice: through ``evaluate()`` (the error's class is checked) and through the CLI's
``main()`` (exit status 2, exactly one error line on stderr, no traceback). One case also runs the
CLI as a real process.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import shutil

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
    InvalidArgumentError,
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
    garbage: Path
    truncated: Path
    five_labels: Path
    moods: Path
    pickled_id: str


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
    damage_weights(root / "bert", root / "garbage", lambda data: b"not a safetensors file" * 4)
    damage_weights(root / "bert", root / "truncated", lambda data: data[: len(data) // 2])
    eh.tiny_bert(num_labels=5).save_pretrained(root / "five-labels")
    datasets.Dataset.from_dict({"text": texts["text"], "mood": ["cheerful", "gloomy"] * 6}).save_to_disk(str(root / "moods"))
    save_pickle_only_hub_model(hub.hub_cache, PICKLED_ID, tokenizer)
    script = root / "my_set"
    script.mkdir()
    (script / "my_set.py").write_text("import datasets\n\nclass MySet(datasets.GeneratorBasedBuilder):\n    pass\n")
    return Inputs(root / "bert", root / "nan-bert", root / "texts", texts, poisoned, root / "poisoned",
                  root / "numeric", root / "empty", root / "empty-saved", script, root / "single", demo, hub,
                  root / "garbage", root / "truncated", root / "five-labels", root / "moods", PICKLED_ID)


PICKLED_ID = "org/pickled-bert"


def damage_weights(source: Path, target: Path, damage: Callable[[bytes], bytes]) -> None:
    """A copy of a checkpoint folder whose model.safetensors is rewritten by ``damage``."""
    shutil.copytree(source, target)
    weights = target / "model.safetensors"
    weights.write_bytes(damage(weights.read_bytes()))


def save_pickle_only_hub_model(hub_cache: Path, repo_id: str, tokenizer: Any) -> None:
    """A cached Hub snapshot that ships pytorch_model.bin and no safetensors file."""
    model = eh.tiny_bert()
    snapshot = eh.save_hub_model(hub_cache, repo_id, "b" * 40, model, tokenizer)
    (snapshot / "model.safetensors").unlink()
    torch.save(model.state_dict(), snapshot / "pytorch_model.bin")


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
            HeadNotFoundError, "BertModel has no classification head",
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
        # settings: checked before anything is loaded (the API cases name a model that does not exist)
        "zero --num-samples": (
            [bert, "--dataset", texts, "--num-samples", "0"],
            lambda: evaluate("org/no-such-model", texts, num_samples=0),
            InvalidArgumentError, "num_samples must be at least 1, got 0; to use every example pass None (CLI: --num-samples all)",
        ),
        "negative --num-samples": (
            [bert, "--dataset", texts, "--num-samples", "-5"],
            lambda: evaluate("org/no-such-model", texts, num_samples=-5),
            InvalidArgumentError, "num_samples must be at least 1, got -5",
        ),
        "zero --batch-size": (
            [bert, "--dataset", texts, "--batch-size", "0"],
            lambda: evaluate("org/no-such-model", texts, batch_size=0),
            InvalidArgumentError, "batch_size must be at least 1, got 0",
        ),
        "negative --batch-size": (
            [bert, "--dataset", texts, "--batch-size", "-2"],
            lambda: evaluate("org/no-such-model", texts, batch_size=-2),
            InvalidArgumentError, "batch_size must be at least 1, got -2",
        ),
        "negative --seed": (
            [bert, "--dataset", texts, "--seed", "-1"],
            lambda: evaluate("org/no-such-model", texts, seed=-1),
            InvalidArgumentError, "seed must be a whole number from 0 to 4294967295 (2**32 - 1), got -1",
        ),
        "--seed over 2**32-1": (
            [bert, "--dataset", texts, "--seed", str(2**32)],
            lambda: evaluate("org/no-such-model", texts, seed=2**32),
            InvalidArgumentError, "seed must be a whole number from 0 to 4294967295 (2**32 - 1), got 4294967296",
        ),
        "--rtol below 1e-8": (
            [bert, "--dataset", texts, "--rtol", "1e-12"],
            lambda: evaluate("org/no-such-model", texts, rtol=1e-12),
            InvalidArgumentError, "rtol must be a number in [1e-08, 1), got 1e-12",
        ),
        "--rtol of 1 or more": (
            [bert, "--dataset", texts, "--rtol", "1"],
            lambda: evaluate("org/no-such-model", texts, rtol=1.0),
            InvalidArgumentError, "rtol must be a number in [1e-08, 1), got 1",
        ),
        "unknown precision": (
            [bert, "--dataset", texts, "--precision", "fp8"],
            lambda: evaluate("org/no-such-model", texts, precision="fp8"),
            InvalidArgumentError, "fp8",
        ),
        "max_length of 0": (
            [bert, "--dataset", texts, "--max-length", "0"],
            lambda: evaluate("org/no-such-model", texts, max_length=0),
            InvalidArgumentError, "max_length must be at least 1 token, got 0",
        ),
        # labels
        "text column passed as labels": (
            [bert, "--dataset", texts, "--label-column", "text"],
            lambda: evaluate(bert, texts, label_column="text"),
            InputColumnError, "column 'text' is the model's input, so it cannot also be the labels",
        ),
        "labels that are not the model's class names": (
            [bert, "--dataset", str(i.moods), "--label-column", "mood"],
            lambda: evaluate(bert, str(i.moods), label_column="mood"),
            InputColumnError, "label column 'mood' holds strings that are not the model's class names (config.label2id: LABEL_0, LABEL_1, LABEL_2)",
        ),
        # weights
        "garbage model.safetensors": (
            [str(i.garbage), "--dataset", texts],
            lambda: evaluate(str(i.garbage), texts),
            ModelLoadError, f"the weights file {i.garbage / 'model.safetensors'} of the folder {i.garbage} is damaged",
        ),
        "truncated model.safetensors": (
            [str(i.truncated), "--dataset", texts],
            lambda: evaluate(str(i.truncated), texts),
            ModelLoadError, f"the weights file {i.truncated / 'model.safetensors'} of the folder {i.truncated} is damaged",
        ),
        "Hub checkpoint with only pickle weights": (
            [i.pickled_id, "--dataset", texts],
            lambda: evaluate(i.pickled_id, texts, safetensors_only=True),
            ModelLoadError, f"the Hub model '{i.pickled_id}' has no safetensors weights, only pickle files",
        ),
        "--reference without a matching head": (
            [bert, "--dataset", texts, "--reference", str(i.five_labels)],
            lambda: evaluate(bert, texts, reference_model=str(i.five_labels)),
            HeadNotFoundError,
            f"the reference {i.five_labels} has no head matching {bert}'s: {bert} reads its logits from 'classifier' "
            "(weight shape (3, 32)), the reference has a Linear with weight shape (5, 32) there",
        ),
        # paths that do not exist
        "missing model folder": (
            [str(i.bert.parent / "no-model"), "--dataset", texts],
            lambda: evaluate(str(i.bert.parent / "no-model"), texts),
            DLRError, f"model folder {i.bert.parent / 'no-model'} does not exist",
        ),
        "missing model folder without --dataset": (
            ["./no-model-here"],
            None,
            InvalidArgumentError, "model folder ./no-model-here does not exist",
        ),
        "missing dataset folder": (
            [bert, "--dataset", str(i.bert.parent / "no-data")],
            lambda: evaluate(bert, str(i.bert.parent / "no-data")),
            DLRError, f"dataset path {i.bert.parent / 'no-data'} does not exist",
        ),
        "missing data file": (
            [bert, "--dataset", "reviews.csv"],
            lambda: evaluate(bert, "reviews.csv"),
            DatasetLoadError, "dataset path reviews.csv does not exist",
        ),
        "missing --reference folder": (
            [bert, "--dataset", texts, "--reference", str(i.bert.parent / "no-initial")],
            lambda: evaluate(bert, texts, reference_model=str(i.bert.parent / "no-initial")),
            DLRError, f"folder {i.bert.parent / 'no-initial'} does not exist",
        ),
        # output files, checked before the run (the model named here does not even exist)
        "--output is a folder": (
            ["org/no-such-model", "--dataset", texts, "--output", str(i.bert.parent)],
            None,
            InvalidArgumentError, f"--output {i.bert.parent} is a folder; give a file name",
        ),
        "--output under a file": (
            ["org/no-such-model", "--dataset", texts, "--output", str(i.bert / "config.json" / "report.json")],
            None,
            InvalidArgumentError, f"cannot create the folder of --output {i.bert / 'config.json' / 'report.json'}: "
            f"{i.bert / 'config.json'} is a file",
        ),
        "--plot with an unknown format": (
            ["org/no-such-model", "--dataset", texts, "--plot", str(i.bert.parent / "plot.xyz")],
            None,
            InvalidArgumentError, "unknown image format .xyz; end the name with one of",
        ),
        "not a number": (
            [bert, "--dataset", texts, "--batch-size", "many"],
            None,
            InvalidArgumentError, "argument --batch-size: expected a number, got 'many' (see dlr-hf evaluate --help)",
        ),
    }


CASE_NAMES = [
    "unknown model id", "unknown revision", "unknown dataset", "unknown config", "unknown split", "loading script",
    "no usable input column", "named input column missing", "no linear head (base model)",
    "no linear head (tanh after the Linear)", "layer that is not a Linear", "image model, text dataset",
    "empty split", "empty split saved to disk", "one example in the dataset", "one example drawn", "non-finite activations",
    "model without --dataset",
    "zero --num-samples", "negative --num-samples", "zero --batch-size", "negative --batch-size", "negative --seed",
    "--seed over 2**32-1", "--rtol below 1e-8", "--rtol of 1 or more", "unknown precision", "max_length of 0",
    "text column passed as labels", "labels that are not the model's class names", "garbage model.safetensors",
    "truncated model.safetensors", "Hub checkpoint with only pickle weights", "--reference without a matching head",
    "missing model folder", "missing model folder without --dataset", "missing dataset folder", "missing data file",
    "missing --reference folder", "--output is a folder", "--output under a file", "--plot with an unknown format",
    "not a number",
]


def test_case_list_is_complete(inputs, tokenizer):
    table = cases(inputs, tokenizer)
    assert sorted(table) == sorted(CASE_NAMES)
    assert {name for name, case in table.items() if case[1] is None} == CLI_ONLY
    assert {name for name, case in table.items() if case[0] is None} == API_ONLY


CLI_ONLY = {
    "model without --dataset", "missing model folder without --dataset", "--output is a folder", "--output under a file",
    "--plot with an unknown format", "not a number",
}
# an in-memory model cannot be named on a command line
API_ONLY = {"no linear head (tanh after the Linear)"}


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


def test_cli_loads_pickle_only_hub_weights_when_allowed(inputs, capsys, tmp_path):
    """--allow-pickle lifts the refusal; --output and --plot land in a folder created for them."""
    output, plot = tmp_path / "new" / "report.json", tmp_path / "new" / "plot.png"
    argv = ["evaluate", inputs.pickled_id, "--dataset", str(inputs.texts), "--allow-pickle", "--num-samples", "all",
            "--output", str(output), "--plot", str(plot), "--quiet"]
    assert main(argv) == 0, capsys.readouterr().err
    report = json.loads(output.read_text())
    assert report["model"]["id"] == inputs.pickled_id and report["dataset"]["num_examples"] == 12
    assert report["settings"]["num_samples"] is None  # 'all'
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in output.parent.iterdir()) == ["plot.png", "report.json"]  # no temporaries left


def test_local_pickle_weights_still_load(inputs, tmp_path, tokenizer):
    """Only Hub checkpoints are refused: a local folder with pytorch_model.bin loads (weights_only)."""
    local = tmp_path / "local-bin"
    model = eh.tiny_bert()
    model.save_pretrained(local)
    tokenizer.save_pretrained(local)
    (local / "model.safetensors").unlink()
    torch.save(model.state_dict(), local / "pytorch_model.bin")
    report = evaluate(str(local), inputs.texts_ds, safetensors_only=True, progress=False)
    assert report.result.num_samples == 12
