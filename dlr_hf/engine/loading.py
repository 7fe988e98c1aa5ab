"""Load a model and its preprocessor from a Hub id, a local folder or memory, with typed errors.

A PEFT adapter (a repo or folder holding ``adapter_config.json``) loads as its base model, under the
same rules, with the adapter applied by peft at the adapter's own pinned commit.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import transformers
from huggingface_hub import try_to_load_from_cache
from torch import nn
from transformers.utils import cached_file, find_adapter_config_file

from dlr_hf.engine.hub import require_hub_or_cache
from dlr_hf.engine.settings import require_existing, validate_precision
from dlr_hf.errors import ModelLoadError
from dlr_hf.models.adapters import is_adapter_model

log = logging.getLogger(__name__)

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

MODALITY_OF_INPUT = {
    "input_ids": "text",
    "pixel_values": "image",
    "input_values": "audio",
    "input_features": "audio",
}


@dataclass
class LoadedModel:
    """A model ready for evaluation, with where it came from (for the report)."""

    model: nn.Module
    processor: Any | None
    modality: str
    source: dict[str, Any]
    warnings: list[str] = field(default_factory=list)


def modality_of(model: nn.Module) -> str:
    """What the model reads, from its main input: text, image or audio."""
    main_input = getattr(model, "main_input_name", "input_ids")
    return MODALITY_OF_INPUT.get(main_input, "text")


def _resolve_class(config: transformers.PretrainedConfig, name: str) -> type:
    for architecture in config.architectures or []:
        cls = getattr(transformers, architecture, None)
        if cls is not None:
            return cls
    if getattr(config, "auto_map", None):
        raise ModelLoadError(
            f"{name} uses custom model code; dlr-hf never runs remote code unless you pass "
            "--trust-remote-code (trust_remote_code=True) after reviewing it"
        )
    for auto in (
        transformers.AutoModelForSequenceClassification,
        transformers.AutoModelForImageClassification,
        transformers.AutoModelForCausalLM,
    ):
        if type(config) in auto._model_mapping:
            return auto
    raise ModelLoadError(
        f"{name} declares no architecture with a prediction head (config.architectures = "
        f"{config.architectures}); load the model yourself and pass it to evaluate()"
    )


def _commit_of(repo_id: str, revision: str | None) -> str | None:
    """The resolved commit of a Hub checkpoint, read from the local cache's snapshot folder."""
    cached = try_to_load_from_cache(repo_id, "config.json", revision=revision)
    if isinstance(cached, str):
        return Path(cached).parent.name
    return None


def load_processor(name_or_path: str, modality: str, revision: str | None, trust_remote_code: bool) -> Any:
    """The model's tokenizer / image processor / feature extractor."""
    auto = {
        "text": transformers.AutoTokenizer,
        "image": transformers.AutoImageProcessor,
        "audio": transformers.AutoFeatureExtractor,
    }[modality]
    return auto.from_pretrained(name_or_path, revision=revision, trust_remote_code=trust_remote_code)


def _first_sentence(error: BaseException) -> str:
    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    return text.split(". ")[0]


def _damaged_weights(folder: Path) -> tuple[Path, str] | None:
    """The first weights file of ``folder`` that cannot be opened, and why (truncated, not a weights file)."""
    from safetensors import safe_open

    for path in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(str(path), framework="pt"):
                pass
        except Exception as error:  # safetensors raises its own SafetensorError (an Exception)
            return path, _first_sentence(error)
    for path in sorted([*folder.glob("*.bin"), *folder.glob("*.pt"), *folder.glob("*.pth")]):
        if path.name == "training_args.bin":
            continue
        try:
            torch.load(path, map_location="meta", weights_only=True)
        except Exception as error:
            return path, _first_sentence(error)
    return None


def _weights_folder(name: str, revision: str | None, is_local: bool) -> Path | None:
    """Where the weights files of a local folder or a cached Hub snapshot lie."""
    if is_local:
        return Path(name).expanduser()
    cached = try_to_load_from_cache(name, "config.json", revision=revision)
    return Path(cached).parent if isinstance(cached, str) else None


def load_model(
    model: str | Path | nn.Module,
    *,
    revision: str | None = None,
    processor: Any = None,
    precision: str = "fp32",
    device_map: str | dict | None = None,
    trust_remote_code: bool = False,
    safetensors_only: bool = False,
) -> LoadedModel:
    """Load ``model`` (Hub id, local folder, or an in-memory module) in eval mode.

    Hub weights are read as safetensors when the repo has them; ``safetensors_only`` refuses a Hub
    checkpoint that ships only pickle weights (which can run code when loaded). Local folders are
    the user's own: their pickle weights load with ``weights_only``. Remote code runs only with
    ``trust_remote_code``. A PEFT adapter loads its base (``base_model_name_or_path``) by the same
    rules and applies the adapter; the report's ``model`` then has ``adapter`` and ``base`` sections.
    """
    precision = validate_precision(precision)
    warnings: list[str] = []
    locations: list[tuple[str, str | None]] = []  # (where, revision) a preprocessor may be; first found wins
    if isinstance(model, nn.Module):
        name = getattr(model, "name_or_path", "") or type(model).__name__
        source = {"id": name, "revision": None, "commit": None, "path": None, "class": type(model).__name__}
        if is_adapter_model(model):
            source.update(_in_memory_adapter_source(model))
        loaded = model
        locations.append((name, revision))
    else:
        name = str(model)
        require_existing(name, "model folder", ModelLoadError)
        if not Path(name).expanduser().is_dir():
            require_hub_or_cache(name, revision)
        rules = {"precision": precision, "device_map": device_map, "trust_remote_code": trust_remote_code,
                 "safetensors_only": safetensors_only}
        adapter_config = find_adapter_config_file(name, revision=revision)
        if adapter_config is not None:
            loaded, source = _load_adapter(name, revision, Path(adapter_config), rules)
            base = source["base"]
            locations += [(source["path"] or name, source["commit"]), (base["path"] or base["id"], base["revision"])]
        else:
            loaded, source = _load_checkpoint(name, revision, rules)
            locations.append((source["path"] or source["id"], revision))
    loaded.eval()
    modality = modality_of(loaded)
    if processor is None:
        processor = _first_processor(locations, modality, trust_remote_code, warnings)
    source["dtype"] = str(next(loaded.parameters()).dtype).replace("torch.", "")
    return LoadedModel(loaded, processor, modality, source, warnings)


def _first_processor(
    locations: list[tuple[str, str | None]], modality: str, trust_remote_code: bool, warnings: list[str]
) -> Any:
    """The preprocessor of the first location that has one (an adapter's folder, then its base's)."""
    problems = []
    for location, revision in locations:
        try:
            return load_processor(location, modality, revision, trust_remote_code)
        except (OSError, ValueError, KeyError, TypeError) as error:
            problems.append(f"{location} ({str(error).splitlines()[0]})")
    warnings.append(f"no {modality} preprocessor found for {' nor '.join(problems)}")
    return None


def _load_checkpoint(name: str, revision: str | None, rules: dict[str, Any]) -> tuple[nn.Module, dict[str, Any]]:
    """A full checkpoint (Hub id or local folder) with a prediction head, and where it came from."""
    precision, safetensors_only = rules["precision"], rules["safetensors_only"]
    is_local = Path(name).expanduser().is_dir()
    where = f"folder {name}" if is_local else f"Hub model {name!r}" + (f" at revision {revision!r}" if revision else "")
    try:
        config = transformers.AutoConfig.from_pretrained(
            name, revision=revision, trust_remote_code=rules["trust_remote_code"]
        )
        cls = _resolve_class(config, name)
        loaded = cls.from_pretrained(
            name,
            revision=revision,
            dtype=PRECISIONS[precision],
            device_map=rules["device_map"],
            trust_remote_code=rules["trust_remote_code"],
            use_safetensors=True if safetensors_only and not is_local else None,
        )
    except ModelLoadError:
        raise
    except OSError as error:
        if safetensors_only and not is_local and "safetensors" in str(error):
            raise ModelLoadError(
                f"the {where} has no safetensors weights, only pickle files, which can run code when "
                "loaded; refused. If you trust the repository, allow it with --allow-pickle "
                "(API: safetensors_only=False)"
            ) from error
        raise _load_error(where, name, revision, is_local, error) from error
    except Exception as error:  # safetensors' SafetensorError, torch's RuntimeError on a damaged file, …
        raise _load_error(where, name, revision, is_local, error) from error
    source = {
        "id": name,
        "revision": revision,
        "commit": None if is_local else _commit_of(name, revision),
        "path": str(Path(name).expanduser().resolve()) if is_local else None,
        "class": type(loaded).__name__,
    }
    return loaded, source


def _load_adapter(
    name: str, revision: str | None, config_file: Path, rules: dict[str, Any]
) -> tuple[nn.Module, dict[str, Any]]:
    """The adapter's base, loaded like any checkpoint, with the adapter applied at its resolved commit."""
    is_local = Path(name).expanduser().is_dir()
    where = f"adapter folder {name}" if is_local else f"Hub adapter {name!r}"
    settings = json.loads(config_file.read_text())
    base_id, base_revision = settings.get("base_model_name_or_path"), settings.get("revision")
    if not base_id:
        raise ModelLoadError(
            f"the {where} does not name its base model (no base_model_name_or_path in adapter_config.json); "
            "load the base yourself, apply the adapter with peft.PeftModel.from_pretrained and pass the model"
        )
    if not is_local and Path(base_id).expanduser().exists():
        raise ModelLoadError(
            f"the {where} names a base on this machine ({base_id!r}), not a Hub model; a Hub adapter may only "
            "load a Hub base. Load the base yourself, apply the adapter with peft.PeftModel.from_pretrained and "
            "pass the model to evaluate()"
        )
    commit = None if is_local else config_file.parent.name  # the snapshot folder the config came from
    if rules["safetensors_only"] and not is_local and _cached(name, "adapter_model.safetensors", commit) is None:
        raise ModelLoadError(
            f"the {where} has no adapter_model.safetensors, only pickle weights, which can run code when loaded; "
            "refused. If you trust the repository, allow it with --allow-pickle (API: safetensors_only=False)"
        )
    try:
        base, base_source = _load_checkpoint(base_id, base_revision, rules)
    except ModelLoadError as error:
        raise ModelLoadError(
            f"the {where} is an adapter on the base model {base_id!r}"
            + (f" (revision {base_revision!r})" if base_revision else "")
            + f", which could not be loaded: {error}. Make the base available (offline: download it into the "
            f"Hugging Face cache first, e.g. `hf download {base_id}`), or load the base yourself, apply the "
            "adapter with peft.PeftModel.from_pretrained and pass the model to evaluate()"
        ) from error
    try:
        import peft
    except ImportError as error:
        raise ModelLoadError(
            f"the {where} is a PEFT adapter and peft is not installed; install it with `pip install peft` "
            "(or `pip install dlr-hf[peft]`)"
        ) from error
    try:
        adapted = peft.PeftModel.from_pretrained(base, name, revision=commit, is_trainable=False)
    except Exception as error:  # peft raises ValueError / KeyError / OSError / RuntimeError on a bad adapter
        raise ModelLoadError(
            f"could not apply the {where} to its base {base_id!r}: {type(error).__name__}: {_first_sentence(error)}"
            " — check that the adapter was trained on this base"
        ) from error
    adapter_source = {
        "id": name,
        "revision": revision,
        "commit": commit,
        "path": str(Path(name).expanduser().resolve()) if is_local else None,
        "peft_type": settings.get("peft_type"),
        "r": settings.get("r"),
        "target_modules": settings.get("target_modules"),
        "modules_to_save": settings.get("modules_to_save"),
    }
    source = {key: adapter_source[key] for key in ("id", "revision", "commit", "path")}
    source.update({"class": type(adapted).__name__, "adapter": adapter_source, "base": base_source})
    return adapted, source


def _in_memory_adapter_source(model: nn.Module) -> dict[str, Any]:
    """``adapter`` and ``base`` sections of an in-memory PeftModel, from its active adapter's config."""
    config = model.peft_config[model.active_adapter]
    base_model = model.get_base_model()
    return {
        "adapter": {
            "id": None, "revision": None, "commit": None, "path": None, "peft_type": str(config.peft_type.value),
            "r": getattr(config, "r", None), "target_modules": _listed(getattr(config, "target_modules", None)),
            "modules_to_save": _listed(config.modules_to_save),
        },
        "base": {
            "id": config.base_model_name_or_path, "revision": config.revision, "commit": None, "path": None,
            "class": type(base_model).__name__,
        },
    }


def _listed(value: Any) -> Any:
    """A set of module names (peft keeps some as sets) as a sorted list, for JSON."""
    return sorted(value) if isinstance(value, (set, frozenset)) else value


def _cached(repo_id: str, filename: str, revision: str | None) -> str | None:
    """The local path of a Hub file (downloaded if online), None when the repo has no such file."""
    return cached_file(
        repo_id, filename, revision=revision,
        _raise_exceptions_for_missing_entries=False, _raise_exceptions_for_connection_errors=False,
    )


def _load_error(where: str, name: str, revision: str | None, is_local: bool, error: BaseException) -> ModelLoadError:
    """One line saying why loading failed: a damaged weights file by name, else the library's first line."""
    folder = _weights_folder(name, revision, is_local)
    damaged = _damaged_weights(folder) if folder is not None and folder.is_dir() else None
    if damaged is not None:
        path, reason = damaged
        return ModelLoadError(
            f"the weights file {path} of the {where} is damaged (truncated or not a weights file: {reason}); "
            "save or download the checkpoint again"
        )
    if not isinstance(error, (OSError, ValueError, KeyError)):
        return ModelLoadError(f"could not load the {where}: {type(error).__name__}: {_first_sentence(error)}")
    return ModelLoadError(
        f"could not load the {where}: {str(error).splitlines()[0]} — check the id and revision "
        "(offline, the model must already be in the Hugging Face cache)"
    )
