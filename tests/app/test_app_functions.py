"""The app's functions called directly: evaluate, compare, history (with cache hits)."""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

import gradio as gr
import pandas as pd
import pytest
from app_helpers import example_args, make_app

from dlr_hf.engine import SCHEMA, evaluate

HEADLINE = re.compile(r"D_LR = ([0-9.]+)")


def shown_dlr(headline: str) -> float:
    match = HEADLINE.search(headline)
    assert match, headline
    return float(match.group(1))


def test_evaluate_shows_the_library_value(app, demo_paths):
    headline, details, baselines, figure, (report_path, png_path), markdown, history = app.evaluate_ui(
        *example_args(demo_paths, "rich", n=48, reference=str(demo_paths["initial"]))
    )
    expected = evaluate(str(demo_paths["rich"]), str(demo_paths["data"]), split="test", num_samples=48, seed=0,
                        reference_model=str(demo_paths["initial"]), progress=False)
    assert shown_dlr(headline) == pytest.approx(expected.dlr, abs=5e-5)
    assert expected.verdict.basis == "change from initialisation" and expected.verdict.text in headline
    assert "rank r** = 10" in details and "**p** = 64" in details and "**C** = 10" in details
    assert "Measured in" in details
    assert f"| D_LR | {expected.dlr:.4f} |" in markdown and expected.verdict.text in markdown
    assert list(baselines["measure"]) == ["D_LR", "accuracy", "NC1", "effective rank", "‖θ‖²", "S_init", "‖θ − θ0‖ / ‖θ0‖"]
    assert float(baselines.set_index("measure").loc["S_init", "value"]) == pytest.approx(expected.baselines["s_init"], abs=1e-4)
    # the interactive plot: spectrum, U(k), Q(k), π_k stacked, each with its axis title, the model's numbers
    assert [figure.layout[f"yaxis{i}"].title.text for i in ("", 2, 3, 4)] == ["ρ_k / ρ_1 (log)", "U(k)", "Q(k)", "π_k"]
    traces = {trace.yaxis: trace for trace in figure.data}
    assert list(traces["y2"].y) == pytest.approx(expected.result.utilisation, abs=1e-9)
    assert list(traces["y4"].y) == pytest.approx(expected.result.pi, abs=1e-9)
    assert Path(png_path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # the PNG export beside the JSON
    document = json.loads(Path(report_path).read_text())
    assert document["schema"] == SCHEMA
    assert document["dlr"] == pytest.approx(expected.dlr, abs=1e-12)
    assert document["dataset"]["id"] == str(demo_paths["data"]) and document["dataset"]["split"] == "test"
    assert document["settings"]["reference"] == str(demo_paths["initial"])
    assert len(history) == 1 and history.iloc[0]["D_LR"] == pytest.approx(expected.dlr, abs=5e-5)


def test_repeated_request_is_answered_from_history(app, demo_paths):
    first = app.evaluate_ui(*example_args(demo_paths, "lazy", n=32))
    started = time.perf_counter()
    second = app.evaluate_ui(*example_args(demo_paths, "lazy", n=32, batch_size=16))  # batch size is not in the key
    elapsed = time.perf_counter() - started
    assert "Answered from the history" in second[1]
    assert second[0] == first[0]
    assert elapsed < 1.5
    assert len(app.history) == 1
    # anything that changes the number is a new entry: seed, n, layer
    app.evaluate_ui(*example_args(demo_paths, "lazy", n=32, seed=1))
    app.evaluate_ui(*example_args(demo_paths, "lazy", n=33))
    layer = app.evaluate_ui(*example_args(demo_paths, "lazy", n=32, layer="vit.layers.1.mlp.fc2"))
    assert "vit.layers.1.mlp.fc2" in layer[1]
    assert len(app.history) == 4
    table = app.history_table()
    assert list(table.columns)[:3] == ["when (UTC)", "model", "model ref"]
    assert set(table["n"]) == {32, 33} and set(table["seed"]) == {0, 1}


def test_history_survives_a_restart_and_tracks_folder_content(app, demo_paths, tmp_path):
    copy = tmp_path / "model"
    shutil.copytree(demo_paths["lazy"], copy)
    app.evaluate_ui(*example_args(demo_paths, n=32, model=str(copy)))
    restarted = make_app(demo_paths, app.history.path)
    assert "Answered from the history" in restarted.evaluate_ui(*example_args(demo_paths, n=32, model=str(copy)))[1]
    # the same folder with other weights is another model: the content hash changes
    shutil.copy(demo_paths["rich"] / "model.safetensors", copy / "model.safetensors")
    changed = restarted.evaluate_ui(*example_args(demo_paths, n=32, model=str(copy)))
    assert "Measured in" in changed[1]
    assert len(restarted.history) == 2


@pytest.fixture
def training_run(demo_paths, tmp_path) -> Path:
    """A Trainer-style output folder: checkpoint-5 (lazy), checkpoint-10 (initial), checkpoint-20 (rich)."""
    run = tmp_path / "run"
    for step, name in ((20, "rich"), (5, "lazy"), (10, "initial")):
        shutil.copytree(demo_paths[name], run / f"checkpoint-{step}")
    (run / "trainer_state.json").write_text("{}")
    return run


def test_compare_expands_a_training_folder_in_step_order(app, demo_paths, training_run):
    summary, table, figure, spectra, path, history = app.compare_ui(str(training_run), str(demo_paths["data"]), "", "test", 32, 32, 0)
    assert summary.startswith("**3 checkpoints of 1 run**")
    assert list(table.columns[:4]) == ["run", "checkpoint", "D_LR", "accuracy"]  # the names, then the numbers
    assert list(table["run"]) == ["run"] * 3
    assert list(table["checkpoint"]) == ["checkpoint-5", "checkpoint-10", "checkpoint-20"]
    assert list(table["step"]) == [5, 10, 20]
    rich = evaluate(str(demo_paths["rich"]), str(demo_paths["data"]), split="test", num_samples=32, progress=False)
    assert table["D_LR"].iloc[-1] == pytest.approx(rich.dlr, abs=5e-5)
    assert table["accuracy"].iloc[-1] == pytest.approx(rich.baselines["accuracy"], abs=5e-5)
    assert figure.layout.xaxis2.title.text == "training step" and figure.layout.yaxis2.title.text == "accuracy"
    dlr_line, accuracy_line = figure.data
    assert (dlr_line.name, dlr_line.xaxis, accuracy_line.xaxis) == ("run", "x", "x2")
    assert list(dlr_line.x) == [5, 10, 20] and list(dlr_line.y) == list(table["D_LR"])
    assert list(accuracy_line.y) == list(table["accuracy"])
    json_path, png_path = path
    document = json.loads(Path(json_path).read_text())
    assert document["schema"] == "dlr-hf/reports/v3" and len(document["reports"]) == 3
    assert [trace.name for trace in spectra.data if trace.showlegend] == [
        f"run/checkpoint-{step} (D_LR {dlr:.3f})" for step, dlr in zip((5, 10, 20), table["D_LR"])]
    assert Path(png_path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # the PNG export
    assert len(history) == 3
    # the same checkpoints again: every one answered from the history
    again = app.compare_ui(str(training_run), str(demo_paths["data"]), "", "test", 32, 32, 0)[1]
    assert list(again["from history"]) == ["yes"] * 3
    pd.testing.assert_series_equal(again["D_LR"], table["D_LR"])


def test_compare_takes_a_list_of_checkpoints(app, demo_paths, training_run):
    entries = f"{training_run / 'checkpoint-20'}, {demo_paths['lazy']}"
    summary, table, figure, _, _, _ = app.compare_ui(entries, str(demo_paths["data"]), "", "test", 32, 32, 0)
    assert "(abs): a lone checkpoint, read on the absolute scale" in summary
    lazy = f"{demo_paths['lazy'].parent.name}/lazy"
    assert list(table["checkpoint"]) == ["checkpoint-20", lazy]
    assert list(table["run"]) == ["run", "lazy"]  # a checkpoint-* folder is named by its run
    assert figure.layout.xaxis2.title.text == "checkpoint"
    assert list(figure.layout.xaxis2.ticktext) == ["checkpoint-20", lazy]
    assert table["D_LR"].iloc[0] < table["D_LR"].iloc[1]  # rich below lazy
    # two lone checkpoints, no reference: each read on the absolute scale, and said so
    assert all(verdict.endswith("(abs)") for verdict in table["verdict"]) and table["change"].isna().all()


def test_hub_ids_are_keyed_by_commit(app, demo_paths, tmp_path, monkeypatch):
    """A model loaded by name from the Hub cache (offline): the history key carries its commit."""
    import huggingface_hub.constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--demo-org--rich-vit"
    shutil.copytree(demo_paths["rich"], repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    headline, details, *_ = app.evaluate_ui(*example_args(demo_paths, n=32, model="demo-org/rich-vit"))
    assert f"commit `{commit[:10]}`" in details
    assert app.history_table().iloc[0]["model ref"] == commit[:10]
    assert "Answered from the history" in app.evaluate_ui(*example_args(demo_paths, n=32, model="demo-org/rich-vit", revision="main"))[1]
    local = app.evaluate_ui(*example_args(demo_paths, n=32))
    assert shown_dlr(local[0]) == shown_dlr(headline)


def test_settings_come_from_the_environment(monkeypatch, tmp_path):
    from dlr_hf.surfaces.app import AppConfig

    monkeypatch.setenv("DLR_HF_MAX_SAMPLES", "500")
    monkeypatch.setenv("DLR_HF_MAX_BATCH", "8")
    monkeypatch.setenv("DLR_HF_QUEUE_SIZE", "3")
    monkeypatch.setenv("DLR_HF_HISTORY_DB", str(tmp_path / "h.sqlite"))
    monkeypatch.setenv("DLR_HF_DEMO", "0")
    monkeypatch.delenv("DLR_HF_LOCAL_ROOTS", raising=False)
    monkeypatch.delenv("SPACE_ID", raising=False)
    config = AppConfig.from_env()
    assert (config.max_samples, config.max_batch, config.queue_size, config.concurrency) == (500, 8, 3, 1)
    assert config.history_db == tmp_path / "h.sqlite" and config.demo is False
    assert config.local_roots is None  # locally: any path
    monkeypatch.setenv("SPACE_ID", "someone/dlr")
    assert AppConfig.from_env().local_roots == []  # on a Space: only the demo (added when built)
    monkeypatch.setenv("DLR_HF_LOCAL_ROOTS", f"{tmp_path}")
    assert AppConfig.from_env().local_roots == [tmp_path.resolve()]
    monkeypatch.setenv("DLR_HF_MAX_BATCH", "lots")
    with pytest.raises(ValueError, match="DLR_HF_MAX_BATCH must be an integer"):
        AppConfig.from_env()


def test_build_demo_wires_the_device_slot_and_a_bounded_queue(app):
    from dlr_hf.surfaces.app import build_demo, device_name

    demo = build_demo(app)
    assert demo._queue.max_size == app.config.queue_size
    heavy = [fn for fn in demo.fns.values()
             if getattr(fn.fn, "__name__", "") in ("evaluate_ui", "compare_ui", "layers_ui", "layer_choices")]
    assert len(heavy) == 7  # three buttons, three demo examples, the layer list
    assert {fn.concurrency_id for fn in heavy} == {f"device-{device_name()}"}
    assert {fn.concurrency_limit for fn in heavy} == {1}


def test_two_runs_are_two_lines_named_by_run(app, demo_paths, tmp_path):
    """Two training output folders: never joined into one line; x = training step; accuracy on its own panel."""
    for run, names in (("run-rich", ("initial", "rich")), ("run-lazy", ("initial", "lazy"))):
        for step, name in zip((0, 50), names):
            shutil.copytree(demo_paths[name], tmp_path / run / f"checkpoint-{step}")
    entries = f"{tmp_path / 'run-rich'}\n{tmp_path / 'run-lazy'}"
    summary, table, figure, _, _, _ = app.compare_ui(entries, str(demo_paths["data"]), "", "test", 24, 24, 0)
    assert summary.startswith("**4 checkpoints of 2 runs**")
    runs = ["run-rich", "run-lazy"]
    dlr_lines = [trace for trace in figure.data if trace.yaxis == "y"]
    accuracy_lines = [trace for trace in figure.data if trace.yaxis == "y2"]
    assert [line.name for line in dlr_lines] == runs and [line.name for line in accuracy_lines] == runs
    for line, run in zip(dlr_lines, runs):
        assert list(line.x) == [0, 50]
        assert list(line.y) == list(table[table["run"] == run]["D_LR"])
    rich_end, lazy_end = table[table["step"] == 50]["D_LR"]
    assert rich_end < lazy_end
    # calibrated: each run read against its own first checkpoint (step 0, the initial model), same examples
    initial = evaluate(str(demo_paths["initial"]), str(demo_paths["data"]), split="test", num_samples=24, progress=False)
    for run, trained, label in (("run-rich", "rich", "rich"), ("run-lazy", "lazy", "lazy")):
        rows = table[table["run"] == run]
        end = evaluate(str(demo_paths[trained]), str(demo_paths["data"]), split="test", num_samples=24, progress=False)
        assert list(rows["verdict"]) == ["run start", label]
        assert rows["change"].iloc[0] is None or pd.isna(rows["change"].iloc[0])
        assert rows["change"].iloc[1] == pytest.approx(end.dlr - initial.dlr, abs=1e-4)
        assert f"from {initial.dlr:.2f} at initialisation to {end.dlr:.2f}" in summary
    assert "verdicts against each run's first checkpoint" in summary


def test_compare_against_a_reference_reads_every_checkpoint_from_it(app, demo_paths):
    entries = f"{demo_paths['lazy']}\n{demo_paths['rich']}"
    summary, table, _, _, (json_path, _), _ = app.compare_ui(
        entries, str(demo_paths["data"]), "", "test", 24, 24, 0, str(demo_paths["initial"]))
    for row, name in zip(table.itertuples(), ("lazy", "rich")):
        expected = evaluate(str(demo_paths[name]), str(demo_paths["data"]), split="test", num_samples=24,
                            reference_model=str(demo_paths["initial"]), progress=False)
        assert row.verdict == expected.verdict.label == name
        assert row.change == pytest.approx(expected.verdict.change, abs=1e-4)
    reports = json.loads(Path(json_path).read_text())["reports"]
    assert [document["verdict"]["basis"] for document in reports] == ["change from initialisation"] * 2
    assert all("s_init" in document["baselines"] for document in reports)
    assert "verdicts against the reference" in summary


def test_the_history_tab_shows_the_columns_that_tell_rows_apart(app, demo_paths):
    from dlr_hf.surfaces.history import ALWAYS_SHOWN

    app.evaluate_ui(*example_args(demo_paths, "lazy", n=16))
    view = app.history_view()
    assert list(view.columns) == list(ALWAYS_SHOWN)  # one row: nothing to tell apart
    app.evaluate_ui(*example_args(demo_paths, "lazy", n=16, reference=str(demo_paths["initial"])))
    app.evaluate_ui(*example_args(demo_paths, "lazy", n=16, seed=4))
    view = app.history_view()
    assert "reference" in view.columns and "seed" in view.columns and "version" not in view.columns
    assert "layers" not in view.columns and "model ref" not in view.columns
    assert list(view.columns)[-1] == "id"
    # every row measured (360 test rows): the seed draws nothing, so it is not shown, nor part of the key
    whole = app.evaluate_ui(*example_args(demo_paths, "lazy", n=360, seed=1))
    again = app.evaluate_ui(*example_args(demo_paths, "lazy", n=360, seed=2))
    assert "Answered from the history" in again[1] and again[0] == whole[0]
    assert app.history_table().query("n == 360")["seed"].tolist() == [""]
    # the selection works whatever columns are shown: the id is the last one
    row_id, selection = app.history_selected(Selected(list(view.iloc[0])))
    assert row_id == view["id"].iloc[0] and row_id in selection


def test_layers_view_overlays_the_profiles_of_rich_and_lazy(app, demo_paths):
    entries = f"{demo_paths['rich']}\n{demo_paths['lazy']}"
    summary, figure, table, path, history = app.layers_ui(
        entries, str(demo_paths["data"]), "", "test", "blocks", 40, 20, 0, str(demo_paths["initial"]))
    for name in ("rich", "lazy"):
        expected = evaluate(str(demo_paths[name]), str(demo_paths["data"]), split="test", num_samples=40, seed=0,
                            layers="blocks", reference_model=str(demo_paths["initial"]), progress=False)
        rows = table[table["model"] == f"{demo_paths[name].parent.name}/{name}"]
        assert list(rows["layer"]) == [row["name"] for row in expected.layers]
        assert list(rows["D_LR"]) == pytest.approx([row["dlr"] for row in expected.layers], abs=5e-5)
        assert list(rows["S_init"]) == pytest.approx([row["s_init"] for row in expected.layers], abs=5e-5)
        assert list(rows["change"]) == pytest.approx([row["dlr"] - row["dlr_initial"] for row in expected.layers], abs=5e-5)
    assert list(table.columns[:5]) == ["model", "layer", "D_LR", "S_init", "change"]  # the first four pinned by CSS
    assert summary.startswith(f"**{len(expected.layers)} layers of 2 models** (blocks)")
    models = list(table["model"].unique())
    assert [trace.name for trace in figure.data if trace.showlegend is not False] == models
    for model in models:
        line = next(trace for trace in figure.data if trace.name == model)
        assert list(line.y) == pytest.approx(list(table[table["model"] == model]["D_LR"]), abs=5e-5)
        s_init = next(trace for trace in figure.data if trace.legendgroup == model and trace.yaxis == "y2")
        assert list(s_init.y) == pytest.approx(list(table[table["model"] == model]["S_init"]), abs=5e-5)
    assert figure.layout.yaxis2.title.text.startswith("S_init")
    json_path, png_path = path
    assert [document["checkpoint"] for document in json.loads(Path(json_path).read_text())["reports"]] == models
    assert Path(png_path).stat().st_size > 10_000
    assert len(history) == 2


def test_layer_choices_offer_blocks_and_the_linear_layers(app, demo_paths):
    choices = [value for _, value in app.layer_choices(str(demo_paths["rich"])).choices]
    assert choices[0] == "blocks"
    assert "vit.layers.*.mlp.fc2" in choices and "classifier" in choices
    # a listed pattern is measured as offered
    _, _, table, _, _ = app.layers_ui(str(demo_paths["rich"]), str(demo_paths["data"]), "", "test",
                                       "vit.layers.*.mlp.fc2", 24, 24, 0, "")
    assert len(table) == 2 and table["S_init"].isna().all() and table["change"].isna().all()


def test_a_run_saved_without_a_processor_finds_its_run_folders(app, demo_paths, tmp_path):
    """Trainer without processing_class: the checkpoint has no preprocessor_config.json, its run folder does."""
    run = tmp_path / "run"
    shutil.copytree(demo_paths["rich"], run / "checkpoint-7")
    (run / "checkpoint-7" / "preprocessor_config.json").rename(run / "preprocessor_config.json")
    headline = app.evaluate_ui(*example_args(demo_paths, model=str(run / "checkpoint-7"), n=24))[0]
    expected = evaluate(str(demo_paths["rich"]), str(demo_paths["data"]), split="test", num_samples=24, progress=False)
    assert shown_dlr(headline) == pytest.approx(expected.dlr, abs=5e-5)


def test_the_processor_field_serves_a_bare_checkpoint(app, demo_paths, tmp_path):
    bare = tmp_path / "bare"
    shutil.copytree(demo_paths["rich"], bare)
    (bare / "preprocessor_config.json").unlink()
    with pytest.raises(gr.Error, match="processor"):
        app.evaluate_ui(*example_args(demo_paths, model=str(bare), n=24))
    headline = app.evaluate_ui(*example_args(demo_paths, model=str(bare), n=24), str(demo_paths["lazy"]))[0]
    expected = evaluate(str(demo_paths["rich"]), str(demo_paths["data"]), split="test", num_samples=24, progress=False)
    assert shown_dlr(headline) == pytest.approx(expected.dlr, abs=5e-5)


def test_runs_sharing_a_folder_name_stay_apart(app, demo_paths, tmp_path):
    for owner, name in (("alice", "rich"), ("bob", "lazy")):
        shutil.copytree(demo_paths[name], tmp_path / owner / "run" / "checkpoint-1")
    entries = f"{tmp_path / 'alice' / 'run'}\n{tmp_path / 'bob' / 'run'}"
    _, table, figure, _, _, _ = app.compare_ui(entries, str(demo_paths["data"]), "", "test", 16, 16, 0)
    assert list(table["run"]) == ["alice/run", "bob/run"]
    assert [trace.name for trace in figure.data if trace.yaxis == "y"] == ["alice/run", "bob/run"]


class Selected:
    """What Gradio hands ``history_selected`` when a row of the table is clicked."""

    def __init__(self, row: list):
        self.row_value = row


def test_a_history_row_reopens_in_the_evaluate_view(app, demo_paths):
    measured = app.evaluate_ui(*example_args(demo_paths, "lazy", n=24, seed=3, reference=str(demo_paths["initial"])))
    app.evaluate_ui(*example_args(demo_paths, "rich", n=16))
    table = app.history_table()
    row = table[table["model"] == str(demo_paths["lazy"])].iloc[0]
    row_id, selection = app.history_selected(Selected(list(row)))
    assert row_id == row["id"] and "demo-v4/lazy" in selection.replace(demo_paths["lazy"].parent.name, "demo-v4")
    (tab, model, _revision, dataset, _config, split, n, _batch, _layer, seed, reference, headline, details, baselines, _figure,
     (path, _png), markdown) = app.reopen(row_id)
    assert tab.selected == "evaluate"
    assert (model, dataset, split, n, seed, reference) == (
        str(demo_paths["lazy"]), str(demo_paths["data"]), "test", 24, 3, str(demo_paths["initial"]))
    assert headline == measured[0] and markdown == measured[5] and "Answered from the history" in details
    pd.testing.assert_frame_equal(baselines, measured[2])
    assert json.loads(Path(path).read_text())["dlr"] == pytest.approx(shown_dlr(measured[0]), abs=5e-5)


def test_history_rows_are_deleted_and_downloaded(app, demo_paths):
    app.evaluate_ui(*example_args(demo_paths, "lazy", n=16))
    app.evaluate_ui(*example_args(demo_paths, "rich", n=16))
    csv_path, json_path = app.history_downloads()
    exported = pd.read_csv(csv_path)
    assert list(exported.columns) == list(app.history_table().columns) and len(exported) == 2
    documents = json.loads(Path(json_path).read_text())
    assert [document["id"] for document in documents] == list(app.history_table()["id"])
    assert documents[0]["report"]["dlr"] == pytest.approx(app.history_table()["D_LR"].iloc[0], abs=5e-5)
    doomed = app.history_table()["id"].iloc[0]
    table, selected, _ = app.delete_rows(doomed)
    assert list(table["id"]) == [documents[1]["id"]] and selected == "" and len(app.history) == 1
    with pytest.raises(gr.Error, match="select a row"):
        app.reopen(doomed)


class Visit:
    """The page request Gradio hands ``fields_from_url``."""

    def __init__(self, query: dict[str, str]):
        self.query_params = query


def test_a_shared_link_fills_the_evaluate_fields(app, demo_paths):
    from urllib.parse import parse_qsl

    from dlr_hf.surfaces.app import URL_FIELDS

    details = app.evaluate_ui(*example_args(demo_paths, "lazy", n=24, seed=7, reference=str(demo_paths["initial"])))[1]
    link = re.search(r"\[Link to this measurement\]\((\?[^)]+)\)", details).group(1)
    fields = app.fields_from_url(Visit(dict(parse_qsl(link[1:]))))
    filled = dict(zip(URL_FIELDS, fields))
    assert (filled["model"], filled["dataset"], filled["split"], filled["num_samples"], filled["seed"], filled["reference"]) == (
        str(demo_paths["lazy"]), str(demo_paths["data"]), "test", 24, 7, str(demo_paths["initial"]))
    # the same request again from the link's fields: answered from the history, the same number
    again = app.evaluate_ui(*(None if isinstance(value, dict) else value for value in fields))
    assert "Answered from the history" in again[1]
    skipped = dict(zip(URL_FIELDS, app.fields_from_url(Visit({"seed": "many"}))))
    assert all(isinstance(value, dict) for value in skipped.values())  # gr.skip(): fields keep their values
    # opened, the link also shows the result: the page load runs the request it names
    shown = app.evaluate_linked(*(None if isinstance(value, dict) else value for value in fields),
                                session=Visit(dict(parse_qsl(link[1:]))))
    assert shown[0] == again[0] and "Answered from the history" in shown[1]
    # a page without such a link leaves the result area alone
    untouched = app.evaluate_linked(*example_args(demo_paths), session=Visit({"seed": "3"}))
    assert all(isinstance(value, dict) for value in untouched)


def test_layer_choices_include_conv1d_and_lora_layers():
    """GPT-2's projections are Conv1D and a PEFT model's are LoRA layers: both are offered, each a pattern that
    measures (the LoRA layer itself, not only its base_layer)."""
    import sys

    import peft

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "models"))
    import model_builders as mb

    from dlr_hf.engine import Measurement, MeasurementOptions, make_accelerator
    from dlr_hf.surfaces.app import linear_layer_patterns

    gpt2 = mb.build("gpt2")
    assert {"transformer.h.*.attn.c_attn", "transformer.h.*.mlp.c_fc", "score"} <= set(linear_layer_patterns(gpt2))
    adapted = peft.get_peft_model(mb.build("bert"), peft.LoraConfig(r=2, target_modules=["query"]))
    patterns = linear_layer_patterns(adapted)
    assert "base_model.model.bert.encoder.layer.*.attention.self.query" in patterns
    measurement = Measurement(adapted, make_accelerator(),
                              MeasurementOptions(layers="base_model.model.bert.encoder.layer.*.attention.self.query"))
    measurement.run([mb.text_batch()])
    assert len(measurement.profile()) == 2
