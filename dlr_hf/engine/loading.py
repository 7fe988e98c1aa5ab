"""Load a model and its preprocessor from a Hub id, a local folder or memory, with typed errors."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import transformers
from huggingface_hub import try_to_load_from_cache
from torch import nn

from dlr_hf.errors import ModelLoadError

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

    Hub weights are read as safetensors when the repo has them (``safetensors_only`` refuses
    anything else); remote code runs only with ``trust_remote_code``.
    """
    if precision not in PRECISIONS:
        raise ModelLoadError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    warnings: list[str] = []
    if isinstance(model, nn.Module):
        name = getattr(model, "name_or_path", "") or type(model).__name__
        source = {"id": name, "revision": None, "commit": None, "path": None, "class": type(model).__name__}
        loaded = model
    else:
        name = str(model)
        is_local = Path(name).expanduser().is_dir()
        try:
            config = transformers.AutoConfig.from_pretrained(
                name, revision=revision, trust_remote_code=trust_remote_code
            )
            cls = _resolve_class(config, name)
            loaded = cls.from_pretrained(
                name,
                revision=revision,
                dtype=PRECISIONS[precision],
                device_map=device_map,
                trust_remote_code=trust_remote_code,
                use_safetensors=True if safetensors_only else None,
            )
        except ModelLoadError:
            raise
        except (OSError, ValueError, KeyError) as error:
            where = f"folder {name}" if is_local else f"Hub model {name!r}" + (f" at revision {revision!r}" if revision else "")
            raise ModelLoadError(
                f"could not load the {where}: {str(error).splitlines()[0]} — check the id and revision "
                "(offline, the model must already be in the Hugging Face cache)"
            ) from error
        source = {
            "id": name,
            "revision": revision,
            "commit": None if is_local else _commit_of(name, revision),
            "path": str(Path(name).expanduser().resolve()) if is_local else None,
            "class": type(loaded).__name__,
        }
    loaded.eval()
    modality = modality_of(loaded)
    if processor is None:
        location = source["path"] or source["id"]
        try:
            processor = load_processor(location, modality, revision, trust_remote_code)
        except (OSError, ValueError, KeyError, TypeError) as error:
            warnings.append(f"no {modality} preprocessor found for {location} ({str(error).splitlines()[0]})")
    source["dtype"] = str(next(loaded.parameters()).dtype).replace("torch.", "")
    return LoadedModel(loaded, processor, modality, source, warnings)
