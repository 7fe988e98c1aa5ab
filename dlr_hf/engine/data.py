"""Datasets: load by Hub id, local path or memory; find input and label columns; batch them.

Preprocessing happens in the collate function, batch by batch, so a subsample of a large split
is never tokenised or decoded as a whole.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from datasets.packaged_modules import _PACKAGED_DATASETS_MODULES

from dlr_hf.engine.hub import not_cached_error, offline_mode, require_hub_or_cache
from dlr_hf.engine.progress import library_bars
from dlr_hf.engine.settings import looks_like_path, require_existing
from dlr_hf.errors import DatasetLoadError, InputColumnError, ModalityMismatchError
from dlr_hf.models import CONTENT_TOKENS, WORD_STARTS

TEXT_COLUMNS = ("text", "sentence", "content", "review", "document", "question", "prompt", "tweet")
TEXT_PAIRS = (
    ("sentence1", "sentence2"),
    ("premise", "hypothesis"),
    ("question1", "question2"),
    ("question", "sentence"),
    ("question", "passage"),
    ("text", "text_pair"),
)
IMAGE_COLUMNS = ("image", "img", "pixel_values")
AUDIO_COLUMNS = ("audio", "input_values", "speech")
CHOICE_LISTS = ("choices", "endings", "options", "answers", "candidates")
NUMBERED_CHOICE = re.compile(r"(?:ending|choice|option|sol)(\d+)$")
CHOICE_CONTEXTS = ("sent1", "startphrase", "goal", "question", "context", "prompt", "text", "premise", "sentence")
LABEL_COLUMNS = ("label", "labels", "ner_tags", "fine_label", "coarse_label", "target", "class")
PREFERRED_SPLITS = ("test", "validation", "valid", "eval", "train")
FILE_BUILDERS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet", ".txt": "text"}


@dataclass
class LoadedData:
    dataset: datasets.Dataset
    source: dict[str, Any]


def _pick_split(splits: list[str], split: str | None, name: str) -> str:
    if split is not None:
        if split not in splits:
            raise DatasetLoadError(f"{name} has no split {split!r}; it has {', '.join(splits)}")
        return split
    for preferred in PREFERRED_SPLITS:
        if preferred in splits:
            return preferred
    return splits[0]


def load_data(
    dataset: str | Path | datasets.Dataset | datasets.DatasetDict,
    *,
    config: str | None = None,
    split: str | None = None,
    revision: str | None = None,
    progress: bool = True,
) -> LoadedData:
    """One split of a dataset (default: test, else validation, else train).

    ``progress=False`` keeps datasets' own bars (download, preparation) off while loading.
    """
    with library_bars(progress):
        return _load_data(dataset, config, split, revision)


def _load_data(
    dataset: str | Path | datasets.Dataset | datasets.DatasetDict, config: str | None, split: str | None,
    revision: str | None,
) -> LoadedData:
    if isinstance(dataset, datasets.Dataset):
        data, name, chosen = dataset, getattr(dataset.info, "dataset_name", None) or "in-memory", split
    else:
        name = str(dataset)
        if isinstance(dataset, datasets.DatasetDict):
            loaded, name = dataset, "in-memory"
        else:
            loaded = _load(name, config, revision, split)
        if isinstance(loaded, datasets.DatasetDict):
            chosen = _pick_split(list(loaded.keys()), split, name)
            data = loaded[chosen]
        else:
            data, chosen = loaded, split
    if len(data) == 0:
        where = name if chosen is None else f"split {chosen!r} of {name}"
        raise DatasetLoadError(f"{where} is empty; pick a split with rows (--split / split=)")
    source = {
        "id": name,
        "config": config,
        "split": chosen,
        "revision": revision,
        "fingerprint": getattr(data, "_fingerprint", None),
        "num_rows": len(data),
    }
    return LoadedData(data, source)


def _first_line(error: BaseException) -> str:
    return str(error).splitlines()[0] if str(error) else type(error).__name__


def _load(
    name: str, config: str | None, revision: str | None, split: str | None = None
) -> datasets.Dataset | datasets.DatasetDict:
    """Any dataset source; every failure inside ``datasets`` becomes one DatasetLoadError line."""
    require_existing(name, "dataset path", DatasetLoadError)
    path = Path(name).expanduser()
    if _is_hub_id(name, path):
        require_hub_or_cache(name, revision, repo_type="dataset")

    def read(only_split: str | None = None) -> datasets.Dataset | datasets.DatasetDict:
        if path.is_dir() and ((path / "dataset_dict.json").exists() or (path / "state.json").exists()):
            try:
                return datasets.load_from_disk(str(path))
            except IndexError as error:  # datasets cannot reload a split saved with no rows (no arrow file)
                raise DatasetLoadError(
                    f"{name} holds an empty split, which datasets cannot reload; save it without that split"
                ) from error
        if path.is_file():
            builder = FILE_BUILDERS.get(path.suffix.lower())
            if builder is None:
                raise DatasetLoadError(f"cannot read {path.name}: use one of {', '.join(FILE_BUILDERS)}")
            return datasets.load_dataset(builder, data_files=str(path), split=only_split)
        return datasets.load_dataset(name, config, revision=revision, split=only_split)

    try:
        try:
            return read()
        except ValueError as error:
            # datasets refuses to build a DatasetDict with an empty split ('Instruction "test" corresponds
            # to no data!'); the other splits still load one at a time.
            empty = re.search(r'Instruction "(.+?)" corresponds to no data', str(error))
            if empty is None:
                raise
            if split is None or split == empty.group(1):
                raise DatasetLoadError(
                    f"split {empty.group(1)!r} of {name} is empty; pick a split with rows (--split / split=)"
                ) from error
            return read(split)
    except DatasetLoadError:
        raise
    except RuntimeError as error:
        if "scripts are no longer supported" in str(error):
            raise DatasetLoadError(
                f"{name} is defined by a loading script, which datasets no longer runs; use a version "
                "of the dataset stored as data files (e.g. its 'refs/convert/parquet' revision)"
            ) from error
        raise DatasetLoadError(f"could not load dataset {name!r}: {_first_line(error)}") from error
    except (OSError, ValueError) as error:  # ConnectionError and FileNotFoundError are OSErrors
        if isinstance(error, ConnectionError) and offline_mode("dataset") and _is_hub_id(name, path):
            raise not_cached_error(name, "dataset", "offline mode is on (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE)") from error
        raise DatasetLoadError(
            f"could not load dataset {name!r}" + (f" (config {config!r})" if config else "") + f": {_first_line(error)} "
            "— check the id, config and split (offline, the dataset must already be cached)"
        ) from error
    except Exception as error:  # anything else raised inside datasets: still one line, no traceback
        raise DatasetLoadError(f"could not load dataset {name!r}: {type(error).__name__}: {_first_line(error)}") from error


def _is_hub_id(name: str, path: Path) -> bool:
    """A name ``load_dataset`` looks up on the Hub: nothing at that path, ``NAME`` or ``ORG/NAME``, and not the name
    of one of datasets' own builders (csv, json, parquet, …)."""
    return not path.exists() and not looks_like_path(name) and name not in _PACKAGED_DATASETS_MODULES


# --- columns -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ColumnPlan:
    """Which columns feed the model and which hold labels."""

    inputs: tuple[str, ...]
    labels: str | None
    kind: str  # text, text_pair, words, token_ids, image, audio, choices
    label_names: dict[str, int] | None = None  # string labels (lower-cased) → class ids, from config.label2id
    warnings: tuple[str, ...] = ()  # for the report: e.g. string labels the model does not know, skipped
    choices: tuple[str, ...] = ()  # kind "choices": one list-of-strings column, or numbered ones (ending0, …)


def _is_string(feature: Any) -> bool:
    return isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string")


def _is_class_ids(feature: Any) -> bool:
    """Integer class ids (or ClassLabel), alone or per position; regression targets are not labels."""
    inner = getattr(feature, "feature", None)
    if inner is not None and isinstance(feature, (datasets.Sequence, datasets.List)):
        return _is_class_ids(inner)
    return isinstance(feature, datasets.ClassLabel) or (
        isinstance(feature, datasets.Value) and feature.dtype.startswith(("int", "uint"))
    )


def _is_word_list(feature: Any) -> bool:
    inner = getattr(feature, "feature", None)
    return isinstance(feature, (datasets.Sequence, datasets.List)) and _is_string(inner)


def detect_columns(
    dataset: datasets.Dataset,
    modality: str,
    input_columns: tuple[str, ...] | list[str] | None = None,
    label_column: str | None = None,
    label2id: Mapping[str, int] | None = None,
    multiple_choice: bool = False,
) -> ColumnPlan:
    """Find the model's inputs (text, text pairs, words, token ids, images, audio, choices) and the labels.

    A ``multiple_choice`` model needs a context and its choices (SWAG-style ``sent1``, ``sent2``,
    ``ending0``…, or a context column and a list-of-strings column such as ``choices``).

    Labels are class ids, or strings that name the model's classes (``label2id``, any case). A
    label column named by the user that is neither is an error; a detected one is skipped with a
    warning, because D_LR itself never needs labels.
    """
    plan = _plan_inputs(dataset, modality, input_columns, label_column, multiple_choice)
    if plan.labels is None and label_column is None:
        features = dataset.features
        named = next((c for c in LABEL_COLUMNS if c in features and c not in plan.inputs and _holds_strings(features[c])), None)
        plan = replace(plan, labels=named)
    return _resolve_labels(dataset, plan, explicit=label_column is not None, label2id=label2id)


def _holds_strings(feature: Any) -> bool:
    return _is_string(feature) or _is_word_list(feature)


def _resolve_labels(
    dataset: datasets.Dataset, plan: ColumnPlan, *, explicit: bool, label2id: Mapping[str, int] | None
) -> ColumnPlan:
    """Keep class-id labels, map class names through ``label2id``, refuse or skip anything else."""
    column = plan.labels
    if column is None or _is_class_ids(dataset.features[column]):
        return plan
    advice = "labels must be class ids or the model's class names; name another --label-column (label_column=) or leave it out"
    if column in plan.inputs:
        raise InputColumnError(f"column {column!r} is the model's input, so it cannot also be the labels; {advice}")
    feature = dataset.features[column]
    if not _holds_strings(feature):
        raise InputColumnError(f"label column {column!r} holds {type(feature).__name__} values, not class ids; {advice}")
    names = _label_names(dataset, column, label2id)
    if names is not None:
        return replace(plan, label_names=names)
    known = ", ".join(list(label2id or {})[:8]) + (", …" if len(label2id or {}) > 8 else "")
    reason = f"label column {column!r} holds strings that are not the model's class names " + (
        f"(config.label2id: {known})" if label2id else "(the model's config has no label2id)"
    )
    if explicit:
        raise InputColumnError(f"{reason}; {advice}")
    return replace(plan, labels=None, warnings=(*plan.warnings, f"{reason}: labels not used, so accuracy, NC1 and Q(k) are skipped"))


def _label_names(dataset: datasets.Dataset, column: str, label2id: Mapping[str, int] | None) -> dict[str, int] | None:
    """Lower-cased class name → id for every string of ``column``, or None when one is not a class of the model."""
    if not label2id:
        return None
    lookup = {str(name).lower(): int(index) for name, index in label2id.items()}
    values = dataset.unique(column) if _is_string(dataset.features[column]) else {v for row in dataset[column] for v in row}
    wanted = {str(value).lower() for value in values if value is not None}
    if not wanted or not wanted <= lookup.keys():
        return None
    return {name: lookup[name] for name in wanted}


def _class_ids(values: list[Any], names: dict[str, int]) -> list[Any]:
    """String labels → class ids (−100, "unlabelled", for a missing one), per example or per position."""
    def one(value: Any) -> int:
        return -100 if value is None else names.get(str(value).lower(), -100)

    return [[one(v) for v in value] if isinstance(value, (list, tuple)) else one(value) for value in values]


def _plan_inputs(
    dataset: datasets.Dataset,
    modality: str,
    input_columns: tuple[str, ...] | list[str] | None,
    label_column: str | None,
    multiple_choice: bool = False,
) -> ColumnPlan:
    """The input columns and kind; labels here are the named column or a detected class-id column."""
    features = dataset.features
    for column in list(input_columns or []) + ([label_column] if label_column else []):
        if column not in features:
            raise InputColumnError(f"the dataset has no column {column!r}; it has {', '.join(features)}")
    labels = label_column or next((c for c in LABEL_COLUMNS if c in features and _is_class_ids(features[c])), None)
    if multiple_choice:
        return _choice_plan(features, input_columns, labels)
    if input_columns:
        kind = _kind_of(features, tuple(input_columns), modality)
        return ColumnPlan(tuple(input_columns), labels, kind)
    if modality == "image":
        column = next((c for c in features if isinstance(features[c], datasets.Image)), None)
        column = column or next((c for c in IMAGE_COLUMNS if c in features), None)
        if column is None:
            _raise_mismatch(features, modality)
        return ColumnPlan((column,), labels, "image")
    if modality == "audio":
        column = next((c for c in features if isinstance(features[c], datasets.Audio)), None)
        column = column or next((c for c in AUDIO_COLUMNS if c in features), None)
        if column is None:
            _raise_mismatch(features, modality)
        return ColumnPlan((column,), labels, "audio")
    if "input_ids" in features:
        return ColumnPlan(("input_ids",), labels, "token_ids")
    if "tokens" in features and _is_word_list(features["tokens"]):
        return ColumnPlan(("tokens",), labels, "words")
    for first, second in TEXT_PAIRS:
        if first in features and second in features and _is_string(features[first]) and _is_string(features[second]):
            return ColumnPlan((first, second), labels, "text_pair")
    column = next((c for c in TEXT_COLUMNS if c in features and _is_string(features[c])), None)
    column = column or next((c for c in features if _is_string(features[c]) and c != labels and c not in LABEL_COLUMNS), None)
    if column is None:
        _raise_mismatch(features, modality)
    return ColumnPlan((column,), labels, "text")


def _choice_plan(features: Any, input_columns: tuple[str, ...] | list[str] | None, labels: str | None) -> ColumnPlan:
    """Context and choice columns for a multiple-choice model (each example × choice is one sample)."""
    columns = list(input_columns or features)
    numbered = sorted((c for c in columns if NUMBERED_CHOICE.match(c) and _is_string(features[c])),
                      key=lambda c: int(NUMBERED_CHOICE.match(c).group(1)))
    listed = [c for c in columns if _is_word_list(features[c]) and (input_columns or c in CHOICE_LISTS)]
    choices = tuple(numbered) if len(numbered) >= 2 else tuple(listed[:1])
    if input_columns:
        context = [c for c in columns if c not in choices and _is_string(features[c])]
    else:
        first = next((c for c in CHOICE_CONTEXTS if c in features and _is_string(features[c])), None)
        # SWAG: the choices continue sent2 ("header"), so it goes before each ending.
        context = [first, "sent2"] if first == "sent1" and "sent2" in features else [first]
    if not choices or None in context or not context:
        raise InputColumnError(
            "this multiple-choice model needs examples with choices: SWAG-style columns (sent1, sent2, ending0, "
            "ending1, …) or a context column (question, prompt, text, …) and a column holding a list of choice "
            f"strings (choices, endings, options); the dataset has {', '.join(features)}. Name them with "
            "input_columns= (--input-column): the context first, then the choice columns"
        )
    return ColumnPlan(tuple(context), labels, "choices", choices=choices)


def _kind_of(features: Any, columns: tuple[str, ...], modality: str) -> str:
    if modality in ("image", "audio"):
        return modality
    if len(columns) == 2:
        return "text_pair"
    if columns[0] == "input_ids":
        return "token_ids"
    if _is_word_list(features[columns[0]]):
        return "words"
    return "text"


def _raise_mismatch(features: Any, modality: str) -> None:
    found = {
        "image": [c for c in features if isinstance(features[c], datasets.Image) or c in IMAGE_COLUMNS],
        "audio": [c for c in features if isinstance(features[c], datasets.Audio) or c in AUDIO_COLUMNS],
        "text": [c for c in features if _is_string(features[c])],
    }
    other = [kind for kind, columns in found.items() if columns and kind != modality]
    if other:
        raise ModalityMismatchError(
            f"this {modality} model was given a dataset of {' and '.join(other)} "
            f"(columns: {', '.join(features)}); pick a dataset with {modality} inputs"
        )
    raise InputColumnError(
        f"no {modality} input column found among {', '.join(features)}; name it with input_columns= (--input-column)"
    )


# --- batching ------------------------------------------------------------------------------------
def subsample_indices(num_rows: int, num_samples: int | None, seed: int) -> list[int]:
    """A deterministic subset (sorted, so reading stays sequential); all rows when not capped."""
    if num_samples is None or num_samples >= num_rows:
        return list(range(num_rows))
    chosen = np.random.default_rng(seed).choice(num_rows, size=num_samples, replace=False)
    return sorted(int(i) for i in chosen)


def _rgb(image: Any) -> Any:
    if hasattr(image, "convert"):
        return image.convert("RGB")
    return image


def _audio_array(value: Any) -> np.ndarray:
    if isinstance(value, dict):
        return np.asarray(value["array"], dtype=np.float32)
    if hasattr(value, "get_all_samples"):  # a torchcodec decoder
        return value.get_all_samples().data.mean(0).numpy()
    return np.asarray(value, dtype=np.float32)


def _word_labels(encoding: Any, word_labels: list[list[int]]) -> torch.Tensor:
    """Label the first sub-token of each word; −100 elsewhere (the transformers convention)."""
    rows = []
    for row, labels in enumerate(word_labels):
        previous = None
        aligned = []
        for word in encoding.word_ids(row):
            aligned.append(-100 if word is None or word == previous else int(labels[word]))
            previous = word
        rows.append(aligned)
    return torch.tensor(rows)


def _position_mask(encoding: Any) -> dict[str, torch.Tensor]:
    """The positions a per-position head predicts on, by one rule with or without labels (SPEC §1).

    With word ids (fast tokenizers): the first sub-token of each word; otherwise every token that is
    neither special nor padding. Stored under a key naming the rule; the model never sees it.
    """
    content = ~encoding.pop("special_tokens_mask").bool()
    if "attention_mask" in encoding:
        content &= encoding["attention_mask"].bool()
    if not encoding.is_fast:
        return {CONTENT_TOKENS: content}
    starts = []
    for row in range(content.shape[0]):
        flags, previous = [], None
        for word in zip(encoding.sequence_ids(row), encoding.word_ids(row)):  # (sequence, word) or (·, None)
            flags.append(word[1] is not None and word != previous)
            previous = word
        starts.append(flags)
    return {WORD_STARTS: torch.tensor(starts, dtype=torch.bool) & content}


def _encode_choices(
    processor: Any, rows: list[dict[str, Any]], plan: ColumnPlan, text_kwargs: dict[str, Any]
) -> dict[str, torch.Tensor]:
    """(context, header + choice) pairs, encoded flat, then shaped (batch, choices, length) as the model reads them."""
    firsts, seconds, counts = [], [], set()
    for row in rows:
        header = " ".join(str(row[c]) for c in plan.inputs[1:])
        endings = list(row[plan.choices[0]]) if len(plan.choices) == 1 else [row[c] for c in plan.choices]
        counts.add(len(endings))
        firsts += [str(row[plan.inputs[0]])] * len(endings)
        seconds += [f"{header} {ending}".strip() for ending in endings]
    if len(counts) != 1 or 0 in counts:
        raise InputColumnError(
            f"every example of a multiple-choice batch needs the same number of choices (found {sorted(counts)}); "
            "use --batch-size 1 (batch_size=1) or a dataset with a fixed number of choices"
        )
    encoding, num_choices = processor(firsts, seconds, **text_kwargs), counts.pop()
    return {key: value.reshape(len(rows), num_choices, -1) for key, value in encoding.items()}


def make_collate(
    plan: ColumnPlan, processor: Any, modality: str, *, max_length: int = 512, pad_token_id: int = 0
) -> Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]]:
    """Turn a list of dataset rows into model inputs (plus ``labels`` when the plan has them)."""
    if processor is None and plan.kind != "token_ids":
        raise InputColumnError(
            f"the dataset holds raw {plan.kind} but the model has no preprocessor; pass processor= "
            "or use a dataset with an input_ids column"
        )

    def collate(rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        columns = [[row[c] for row in rows] for c in plan.inputs]
        label_values = [row[plan.labels] for row in rows] if plan.labels else None
        if label_values is not None and plan.label_names is not None:
            label_values = _class_ids(label_values, plan.label_names)
        batch: dict[str, Any]
        if plan.kind == "image":
            batch = dict(processor(images=[_rgb(image) for image in columns[0]], return_tensors="pt"))
        elif plan.kind == "audio":
            arrays = [_audio_array(value) for value in columns[0]]
            rate = getattr(processor, "sampling_rate", None)
            # Whisper-style extractors (n_samples: a fixed chunk, 30 s) feed encoders that read exactly
            # that many frames, so every clip is padded (or cut) to the chunk; others pad to the longest.
            chunk = getattr(processor, "n_samples", None)
            padding = {"padding": "max_length", "max_length": chunk, "truncation": True} if chunk else {"padding": True}
            batch = dict(processor(arrays, sampling_rate=rate, return_tensors="pt", **padding))
        elif plan.kind == "token_ids":
            width = max(len(ids) for ids in columns[0])
            ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for i, row_ids in enumerate(columns[0]):
                ids[i, : len(row_ids)] = torch.as_tensor(row_ids)
                mask[i, : len(row_ids)] = 1
            batch = {"input_ids": ids, "attention_mask": mask}
        else:
            limit = min(max_length, getattr(processor, "model_max_length", max_length) or max_length)
            text_kwargs = {"padding": True, "truncation": True, "max_length": limit, "return_tensors": "pt"}
            if plan.kind == "choices":
                batch = _encode_choices(processor, rows, plan, text_kwargs)
            else:
                if plan.kind == "words":
                    text_kwargs["is_split_into_words"] = True
                encoding = processor(*columns, **text_kwargs, return_special_tokens_mask=True)
                positions = _position_mask(encoding)  # first: it takes special_tokens_mask out of the encoding
                batch = {**encoding, **positions}
                if plan.kind == "words" and label_values is not None:
                    batch["labels"] = _word_labels(encoding, label_values)
                    label_values = None
        if label_values is not None:
            batch["labels"] = _pad_labels(label_values, batch)
        return batch

    return collate


def _pad_labels(values: list[Any], batch: dict[str, Any]) -> torch.Tensor:
    if isinstance(values[0], (list, tuple, np.ndarray)):  # per-position labels
        width = batch["input_ids"].shape[1] if "input_ids" in batch else max(len(v) for v in values)
        labels = torch.full((len(values), width), -100, dtype=torch.long)
        for i, row in enumerate(values):
            labels[i, : min(len(row), width)] = torch.as_tensor(row[:width])
        return labels
    return torch.as_tensor(values, dtype=torch.long)
