"""One test per class of bad input: each is a readable gr.Error (the DLRError's message), never a traceback."""

from __future__ import annotations

import html
import json
import shutil

import datasets
import gradio as gr
import pytest
import torch
from app_helpers import example_args


def error_of(call, *args) -> str:
    with pytest.raises(gr.Error) as caught:
        call(*args)
    message = html.unescape(caught.value.message)  # shown as HTML: user text is escaped
    assert "Traceback" not in message and 'File "' not in message
    return message


def test_empty_model(app, demo_paths):
    assert "enter a model" in error_of(app.evaluate_ui, *example_args(demo_paths, model=""))


def test_unknown_hub_model(app, demo_paths):
    message = error_of(app.evaluate_ui, *example_args(demo_paths, model="nobody-here/no-such-model-dlr"))
    assert "could not load the Hub model 'nobody-here/no-such-model-dlr'" in message


def test_missing_local_folder(app, demo_paths, tmp_path):
    message = error_of(app.evaluate_ui, *example_args(demo_paths, model=str(tmp_path / "nothing")))
    assert message == (
        f"the model {tmp_path / 'nothing'} is not available here: it does not exist or is outside the allowed "
        "folders of this server (DLR_HF_LOCAL_ROOTS); use a Hub id (ORG/NAME)"
    )
    assert len(app.history) == 0


def test_missing_and_forbidden_paths_read_the_same(demo_paths, tmp_path):
    """The server reveals nothing about its file system: a missing path inside the allowed folders and
    an existing one outside them get the same message (up to the name the user typed)."""
    from app_helpers import make_app

    allowed = tmp_path / "allowed"
    allowed.mkdir()
    restricted = make_app(demo_paths, tmp_path / "h.sqlite", local_roots=[allowed])
    outside = tmp_path / "elsewhere"
    shutil.copytree(demo_paths["rich"], outside)
    missing = allowed / "nothing"
    forbidden = error_of(restricted.evaluate_ui, *example_args(demo_paths, model=str(outside)))
    absent = error_of(restricted.evaluate_ui, *example_args(demo_paths, model=str(missing)))
    assert forbidden.replace(str(outside), "PATH") == absent.replace(str(missing), "PATH")
    for kind in ("dataset", "reference"):
        forbidden = error_of(restricted.evaluate_ui, *example_args(demo_paths, **{kind: str(outside / "x.csv")}))
        absent = error_of(restricted.evaluate_ui, *example_args(demo_paths, **{kind: str(missing / "x.csv")}))
        assert forbidden.replace(str(outside), "PATH") == absent.replace(str(missing), "PATH")


@pytest.mark.parametrize("seed", [2**63, 2**32, -1])
def test_seed_outside_the_storable_range_is_refused_before_running(app, demo_paths, seed):
    """Today's bug: a 2**63 seed computed, then failed to store in the history, and the result was lost."""
    message = error_of(app.evaluate_ui, *example_args(demo_paths, seed=seed))
    assert message == f"seed must be a whole number from 0 to 4294967295 (2**32 - 1), got {seed}"
    assert len(app.history) == 0


def test_largest_seed_is_stored(app, demo_paths):
    app.evaluate_ui(*example_args(demo_paths, n=16, seed=2**32 - 1))
    assert list(app.history_table()["seed"]) == [2**32 - 1]


@pytest.mark.parametrize("field", ["model", "revision", "dataset", "dataset_config", "split", "layer", "reference"])
def test_a_huge_text_input_gets_a_clear_message(app, demo_paths, field):
    message = error_of(app.evaluate_ui, *example_args(demo_paths, **{field: "x" * 100_000}))
    assert message.endswith("field holds 100000 characters; this server accepts at most 1000")
    assert len(message) < 200


def test_a_huge_number_is_not_echoed(app, demo_paths):
    for value in ("9" * 100_000, 10**400):
        message = error_of(app.evaluate_ui, *example_args(demo_paths, n=value))
        assert len(message) < 200


def test_a_huge_checkpoint_list_gets_a_clear_message(app, demo_paths):
    message = error_of(app.compare_ui, "x" * 100_000, str(demo_paths["data"]), "", "test", 32, 32, 0)
    assert "the checkpoints field holds 100000 characters; this server accepts at most 12000" in message


def test_unknown_dataset(app, demo_paths):
    message = error_of(app.evaluate_ui, *example_args(demo_paths, dataset="nobody-here/no-such-dataset-dlr"))
    assert "could not load dataset 'nobody-here/no-such-dataset-dlr'" in message


def test_bad_split(app, demo_paths):
    message = error_of(app.evaluate_ui, *example_args(demo_paths, split="validation"))
    assert "has no split 'validation'" in message and "test" in message and "train" in message


def test_modality_mismatch(app, demo_paths, tmp_path):
    text = datasets.Dataset.from_dict({"text": ["a digit", "another digit"] * 4, "label": [0, 1] * 4})
    text.save_to_disk(str(tmp_path / "text"))
    message = error_of(app.evaluate_ui, *example_args(demo_paths, dataset=str(tmp_path / "text"), split=""))
    assert "image model was given a dataset of text" in message


def test_samples_over_the_cap(app, demo_paths):
    message = error_of(app.evaluate_ui, *example_args(demo_paths, n=401))
    assert "over this server's cap of 400 (DLR_HF_MAX_SAMPLES)" in message


def test_batch_over_the_cap(app, demo_paths):
    message = error_of(app.evaluate_ui, *example_args(demo_paths, batch_size=65))
    assert "cap of 64 (DLR_HF_MAX_BATCH)" in message


@pytest.mark.parametrize("n, expected", [(1, "at least 2 samples"), ("many", "whole number"), (2.5, "whole number")])
def test_bad_sample_count(app, demo_paths, n, expected):
    assert expected in error_of(app.evaluate_ui, *example_args(demo_paths, n=n))


@pytest.mark.parametrize("batch_size", [0, -4])
def test_bad_batch_size(app, demo_paths, batch_size):
    message = error_of(app.evaluate_ui, *example_args(demo_paths, batch_size=batch_size))
    assert message == f"batch_size must be at least 1, got {batch_size}"


def test_unknown_layer(app, demo_paths):
    message = error_of(app.evaluate_ui, *example_args(demo_paths, layer="vit.encoder.layer.1.output.dense"))
    assert "Layer 'vit.encoder.layer.1.output.dense' does not exist" in message
    assert "vit.layers." in message  # suggests real linear layers


def test_layer_that_is_not_linear(app, demo_paths):
    message = error_of(app.evaluate_ui, *example_args(demo_paths, layer="vit.layers.1.mlp"))
    assert "not a linear layer" in message


def test_remote_code_is_never_run(app, demo_paths, tmp_path):
    custom = tmp_path / "custom"
    shutil.copytree(demo_paths["rich"], custom)
    config = json.loads((custom / "config.json").read_text())
    config["architectures"] = ["CustomViTForImageClassification"]
    config["auto_map"] = {"AutoModelForImageClassification": "modeling_custom.CustomViTForImageClassification"}
    (custom / "config.json").write_text(json.dumps(config))
    (custom / "modeling_custom.py").write_text("raise SystemExit('remote code ran')\n")
    message = error_of(app.evaluate_ui, *example_args(demo_paths, model=str(custom)))
    assert "never runs remote code" in message


def test_hub_weights_must_be_safetensors(app, demo_paths, tmp_path, monkeypatch):
    import huggingface_hub.constants
    from transformers import ViTForImageClassification

    commit = "fedcba9876543210fedcba9876543210fedcba98"
    repo = tmp_path / "hub" / "models--demo-org--pickled-vit"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name in ("config.json", "preprocessor_config.json"):
        shutil.copy(demo_paths["rich"] / name, snapshot / name)
    torch.save(ViTForImageClassification.from_pretrained(demo_paths["rich"]).state_dict(), snapshot / "pytorch_model.bin")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    message = error_of(app.evaluate_ui, *example_args(demo_paths, model="demo-org/pickled-vit"))
    assert "the Hub model 'demo-org/pickled-vit' has no safetensors weights, only pickle files" in message
    # the same weights from a local folder are the user's own: allowed
    local = tmp_path / "local"
    shutil.copytree(snapshot, local)
    assert "D_LR = " in app.evaluate_ui(*example_args(demo_paths, model=str(local)))[0]


def test_local_paths_outside_the_allowed_roots(demo_paths, tmp_path):
    from app_helpers import make_app

    restricted = make_app(demo_paths, tmp_path / "h.sqlite", local_roots=[tmp_path / "allowed"])
    outside = tmp_path / "elsewhere"
    shutil.copytree(demo_paths["rich"], outside)
    message = error_of(restricted.evaluate_ui, *example_args(demo_paths, model=str(outside)))
    assert "outside the allowed folders" in message
    # the demo itself stays allowed
    assert "D_LR = " in restricted.evaluate_ui(*example_args(demo_paths, n=16))[0]


def test_compare_without_checkpoints(app, demo_paths):
    assert "enter checkpoints" in error_of(app.compare_ui, " \n ", str(demo_paths["data"]), "", "test", 32, 32, 0)


def test_compare_over_the_checkpoint_cap(demo_paths, tmp_path):
    from app_helpers import make_app

    capped = make_app(demo_paths, tmp_path / "h.sqlite", max_checkpoints=2)
    entries = "\n".join(str(demo_paths[name]) for name in ("initial", "lazy", "rich"))
    message = error_of(capped.compare_ui, entries, str(demo_paths["data"]), "", "test", 32, 32, 0)
    assert "3 checkpoints is over this server's cap of 2" in message


def test_compare_names_the_failing_checkpoint(app, demo_paths):
    entries = f"{demo_paths['rich']}\nnobody-here/no-such-model-dlr"
    message = error_of(app.compare_ui, entries, str(demo_paths["data"]), "", "test", 32, 32, 0)
    assert message.startswith("nobody-here/no-such-model-dlr: could not load")


def test_unexpected_errors_are_readable(app, demo_paths, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("disk full\nsecond line")

    monkeypatch.setattr(app, "measure", broken)
    message = error_of(app.evaluate_ui, *example_args(demo_paths))
    assert message == "unexpected RuntimeError: disk full (the server log has the details)"


@pytest.mark.parametrize("view", ["evaluate", "compare", "layers"])
def test_an_error_leaves_a_message_in_place_of_the_result(app, demo_paths, view):
    """The browser's .failure step: the session's message where the result was, every stale number cleared."""
    session, other = gr.Request(session_hash="tab-1"), gr.Request(session_hash="tab-2")
    data = str(demo_paths["data"])
    call = {
        "evaluate": lambda: app.evaluate_ui(*example_args(demo_paths, model=""), session=session),
        "compare": lambda: app.compare_ui(" ", data, "", "test", 16, 16, 0, session=session),
        "layers": lambda: app.layers_ui(str(demo_paths["rich"]), data, "", "test", "", 16, 16, 0, "", session=session),
    }[view]
    expected = {"evaluate": "enter a model", "compare": "enter checkpoints", "layers": "choose the layers"}[view]
    failed = getattr(app, f"{view}_failed")
    with pytest.raises(gr.Error):
        call()
    assert failed(other)[0].startswith("## ⚠ The request failed")  # another session's message is not shown here
    message, *cleared = failed(session)
    assert message.startswith("## ⚠ Cannot measure D_LR") and expected in message and "D_LR =" not in message
    assert all(value is None or (isinstance(value, str) and value == "") or value.empty for value in cleared)
    assert failed(session)[0].startswith("## ⚠ The request failed")  # shown once
