"""Heads and hooks through PEFT's wrappers: a ``modules_to_save`` copy, LoRA layers, a LoRA on the head.

Every number is checked against an independent computation: features read straight off the base
network's modules, the effective head weight from peft's own ``merge_and_unload`` on a copy, S_init
as the n×p linear CKA formula against a separately built base model (same seed, same weights).
"""

from __future__ import annotations

import copy
import subprocess
import sys

import peft
import pytest
import torch
import transformers as tf

from dlr_hf.engine import ADAPTER_BASE, Measurement, MeasurementOptions, make_accelerator
from dlr_hf.metric import compute_dlr
from dlr_hf.models import FeatureTap, locate_head, read_head_weight
from dlr_hf.models.adapters import adapted_parameter_baselines, disabled_adapters, head_without_adapters


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def linear_cka(a: torch.Tensor, b: torch.Tensor) -> float:
    """SPEC §4 S_init from the n×p matrices: ‖A_cᵀB_c‖²_F / (‖A_cᵀA_c‖_F ‖B_cᵀB_c‖_F), float64."""
    a, b = a.double() - a.double().mean(0), b.double() - b.double().mean(0)
    return float((a.T @ b).norm() ** 2 / ((a.T @ a).norm() * (b.T @ b).norm()))


def tiny_vit(seed: int = 0) -> tf.ViTForImageClassification:
    torch.manual_seed(seed)
    config = tf.ViTConfig(
        image_size=16, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=37, num_labels=4,
    )
    return tf.ViTForImageClassification(config).eval()


def tiny_llama(seed: int = 0) -> tf.LlamaForSequenceClassification:
    torch.manual_seed(seed)
    config = tf.LlamaConfig(
        vocab_size=100, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, num_labels=3, pad_token_id=0,
    )
    return tf.LlamaForSequenceClassification(config).eval()


def trained_like(model: peft.PeftModel, seed: int = 1) -> peft.PeftModel:
    """Move the LoRA B factors (zero at init) and the trainable copies, as training would."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name or "modules_to_save" in name:
                parameter.add_(0.3 * torch.randn_like(parameter))
    return model.eval()


def merged_baselines(adapted: peft.PeftModel, base: torch.nn.Module) -> dict[str, float]:
    """‖θ‖² and ‖θ − θ0‖/‖θ0‖ with θ from peft's own merge (on a copy), θ0 the separately built base."""
    merged = dict(copy.deepcopy(adapted).merge_and_unload().named_parameters())
    change = norm = reference = 0.0
    for name, initial in base.named_parameters():
        current = merged[name].double()
        norm += float(current.pow(2).sum())
        reference += float(initial.double().pow(2).sum())
        change += float((current - initial.double()).pow(2).sum())
    return {"param_norm": norm, "param_change": (change / reference) ** 0.5}


def vit_case():
    config = peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"], modules_to_save=["classifier"])
    adapted = trained_like(peft.get_peft_model(tiny_vit(), config))
    torch.manual_seed(5)
    pixels = torch.randn(16, 3, 16, 16)
    return adapted, tiny_vit(), pixels


def test_modules_to_save_head_features_and_base_reference_vit():
    adapted, base, pixels = vit_case()
    batches = [{"pixel_values": pixels[:8]}, {"pixel_values": pixels[8:]}]
    head = locate_head(adapted, batches[0])
    assert head.module_path == "base_model.model.classifier.modules_to_save.default"
    assert any("ModulesToSaveWrapper" in notice for notice in head.notices)
    assert head_without_adapters(head, adapted).module_path == "base_model.model.classifier.original_module"

    measurement = Measurement(adapted, make_accelerator(), MeasurementOptions(), reference=ADAPTER_BASE)
    measurement.run(batches)
    measurement.reduce_s_init()
    with torch.no_grad():
        features = adapted.base_model.model.vit(pixel_values=pixels).last_hidden_state[:, 0]  # final layernorm, CLS
        base_features = base.vit(pixel_values=pixels).last_hidden_state[:, 0]
        logits = adapted(pixel_values=pixels).logits
    trained = adapted.base_model.model.classifier.modules_to_save["default"]
    with torch.no_grad():
        torch.testing.assert_close(trained(features), logits)  # those features are the effective head's input
    hand_logits = features.double() @ trained.weight.detach().double().T  # float64: no float32 round-off
    assert measurement.result().dlr == pytest.approx(compute_dlr(features.double(), hand_logits).dlr, abs=1e-9)
    assert measurement.s_init() == pytest.approx(linear_cka(base_features, features), abs=1e-9)
    assert linear_cka(base_features, features) < 0.999  # the adapter did change the features
    assert measurement.parameter_baselines() == pytest.approx(merged_baselines(adapted, base), rel=1e-9)


def test_disabled_adapter_features_are_the_base_models():
    adapted, base, pixels = vit_case()
    batch = {"pixel_values": pixels}
    head = locate_head(adapted, batch)
    with FeatureTap(adapted, head_without_adapters(head, adapted)) as tap, disabled_adapters(adapted), torch.inference_mode():
        disabled = tap.collect(batch, adapted(**batch))
    with FeatureTap(base, locate_head(base, batch)) as tap, torch.inference_mode():
        alone = tap.collect(batch, base(**batch))
    torch.testing.assert_close(disabled.features, alone.features, rtol=0, atol=1e-6)
    torch.testing.assert_close(disabled.outputs, alone.outputs, rtol=0, atol=1e-6)


def test_lora_on_the_head_itself_llama():
    config = peft.LoraConfig(r=2, target_modules=["q_proj", "v_proj", "score"])  # no task type: score gets a LoRA
    adapted = trained_like(peft.get_peft_model(tiny_llama(), config))
    torch.manual_seed(3)
    ids = torch.randint(1, 100, (12, 7))
    ids[:4, -3:] = 0  # right padding: the logits come from the last non-pad token
    batch = {"input_ids": ids, "attention_mask": (ids != 0).long()}

    head = locate_head(adapted, batch)
    assert (head.module_path, head.selection) == ("base_model.model.score", "selected_position")
    assert any("LoRA" in notice for notice in head.notices)
    merged = copy.deepcopy(adapted).merge_and_unload()
    torch.testing.assert_close(read_head_weight(head), merged.score.weight, rtol=0, atol=1e-6)
    assert not torch.allclose(merged.score.weight, adapted.base_model.model.score.base_layer.weight, atol=1e-3)

    measurement = Measurement(adapted, make_accelerator(), MeasurementOptions(), reference=ADAPTER_BASE)
    measurement.run([batch])
    measurement.reduce_s_init()
    rows, last = torch.arange(12), (ids != 0).sum(1) - 1
    with torch.no_grad():
        features = adapted.base_model.model.model(**batch).last_hidden_state[rows, last]
        base_features = tiny_llama().model(**batch).last_hidden_state[rows, last]
        logits = adapted(**batch).logits
    torch.testing.assert_close(features @ merged.score.weight.T, logits)
    hand_logits = features.double() @ merged.score.weight.detach().double().T
    assert measurement.result().dlr == pytest.approx(compute_dlr(features.double(), hand_logits).dlr, abs=1e-9)
    assert measurement.s_init() == pytest.approx(linear_cka(base_features, features), abs=1e-9)
    assert adapted_parameter_baselines(adapted) == pytest.approx(merged_baselines(adapted, tiny_llama()), rel=1e-9)


def test_disabling_adapters_leaves_trainable_flags_alone():
    adapted, _, pixels = vit_case()
    adapted.requires_grad_(False)  # as loaded for inference
    with disabled_adapters(adapted), torch.inference_mode():
        adapted(pixel_values=pixels[:2])
    assert not any(p.requires_grad for p in adapted.parameters())
    with adapted.disable_adapter():  # peft's own context marks the adapters trainable on the way out
        pass
    assert any(p.requires_grad for p in adapted.parameters())


def test_dlr_hf_imports_and_measures_without_peft():
    """peft is optional: with it unimportable, dlr_hf imports and a plain model is no adapter model."""
    code = (
        "import sys; sys.modules['peft'] = None\n"
        "import torch, dlr_hf, dlr_hf.engine, dlr_hf.models\n"
        "from dlr_hf.models.adapters import is_adapter_model, is_lora_layer\n"
        "assert not is_adapter_model(torch.nn.Linear(2, 2)) and not is_lora_layer(torch.nn.Linear(2, 2))\n"
        "import dlr_hf.metric; assert 'peft' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_lora_layer_can_be_named_for_layer_wise_dlr():
    """layer= on a LoRA-wrapped projection reads its input (what its base layer reads), computed here by
    hand from the block's layernorm; patterns reach the LoRA layers too."""
    adapted, _, pixels = vit_case()
    path = "base_model.model.vit.layers.1.attention.v_proj"
    assert type(adapted.get_submodule(path)).__name__ == "Linear" and hasattr(adapted.get_submodule(path), "lora_A")
    batches = [{"pixel_values": pixels[:8]}, {"pixel_values": pixels[8:]}]
    measurement = Measurement(adapted, make_accelerator(), MeasurementOptions(layer=path))
    measurement.run(batches)
    captured = []
    norm = adapted.get_submodule("base_model.model.vit.layers.1.layernorm_before")
    handle = norm.register_forward_hook(lambda module, args, out: captured.append(out.detach()))
    try:
        with torch.no_grad():
            logits = adapted(pixel_values=pixels).logits
    finally:
        handle.remove()
    tokens = captured[0]  # (16, tokens, 32): every token is a sample of a per-token projection, pooled per image
    expected = compute_dlr(tokens.double().mean(dim=1), logits.double())
    assert measurement.result().dlr == pytest.approx(expected.dlr, abs=1e-8)
    profile = Measurement(adapted, make_accelerator(), MeasurementOptions(layers="base_model.model.vit.layers.*.attention.v_proj"))
    profile.run(batches)
    assert [reading.module_path for reading in profile.profile()] == [
        "base_model.model.vit.layers.0.attention.v_proj", path]
