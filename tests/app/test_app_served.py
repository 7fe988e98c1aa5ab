"""End to end on loopback: the launched app driven through gradio_client, including load."""

from __future__ import annotations

import json
import re
from concurrent.futures import wait
from pathlib import Path

import pytest
from app_helpers import example_args, free_port, make_app
from gradio_client import Client
from gradio_client.exceptions import AppError

from dlr_hf.engine import evaluate


def shown(headline: str) -> float:
    return float(re.search(r"D_LR = ([0-9.]+)", headline).group(1))


def test_api_lists_the_three_endpoints(client):
    endpoints = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    assert {"/evaluate", "/compare", "/layers", "/layer_choices", "/history"} <= set(endpoints)
    assert len(endpoints["/evaluate"]["parameters"]) == 11  # the APP options, then the processor


def test_evaluate_through_the_client(client, demo_paths):
    headline, _details, baselines, plot, report, _markdown, history = client.predict(
        *example_args(demo_paths, "lazy", n=40), api_name="/evaluate"
    )
    expected = evaluate(str(demo_paths["lazy"]), str(demo_paths["data"]), split="test", num_samples=40, progress=False)
    assert shown(headline) == pytest.approx(expected.dlr, abs=5e-5)
    assert baselines["headers"] == ["measure", "value", "meaning"]
    assert plot["type"] == "plotly" and len(json.loads(plot["plot"])["data"]) == 4  # spectrum, U(k), Q(k), π_k
    report_json, report_png = report
    assert json.loads(Path(report_json).read_text())["dlr"] == pytest.approx(expected.dlr, abs=1e-12)
    assert report_png.endswith(".png")
    rows = [dict(zip(history["headers"], row)) for row in history["data"]]  # the columns that tell rows apart
    assert any(row["model"] == str(demo_paths["lazy"]) and row["n"] == 40 for row in rows)
    # asked again: from the history
    assert "Answered from the history" in client.predict(*example_args(demo_paths, "lazy", n=40), api_name="/evaluate")[1]


def test_compare_through_the_client(client, demo_paths):
    entries = "\n".join(str(demo_paths[name]) for name in ("initial", "lazy", "rich"))
    summary, table, plot, spectra, reports, _history = client.predict(
        entries, str(demo_paths["data"]), "", "test", 24, 24, 0, "", api_name="/compare")
    assert summary.startswith("**3 checkpoints of 3 runs**")
    assert [row[1].split("/")[-1] for row in table["data"]] == ["initial", "lazy", "rich"]
    assert plot["type"] == "plotly" and [trace["name"] for trace in json.loads(plot["plot"])["data"]][::2] == ["initial", "lazy", "rich"]
    json_path, png_path = reports
    assert [document["checkpoint"] for document in json.loads(Path(json_path).read_text())["reports"]] == [row[1] for row in table["data"]]
    assert spectra["type"] == "plotly" and len(json.loads(spectra["plot"])["data"]) == 3 * 4  # three checkpoints × four panels
    assert png_path.endswith(".png")
    assert client.predict(api_name="/history")["headers"][0] == "when (UTC)"


def test_bad_input_is_a_message_and_the_app_keeps_serving(client, demo_paths):
    with pytest.raises(AppError) as caught:
        client.predict(*example_args(demo_paths, model="nobody-here/no-such-model-dlr"), api_name="/evaluate")
    assert "could not load the Hub model" in str(caught.value) and "Traceback" not in str(caught.value)
    with pytest.raises(AppError, match="over this server's cap"):
        client.predict(*example_args(demo_paths, n=10_000), api_name="/evaluate")
    headline = client.predict(*example_args(demo_paths, "rich", n=20), api_name="/evaluate")[0]
    assert headline.startswith("## D_LR = ")


def test_eight_simultaneous_requests_then_a_ninth(client, demo_paths):
    """All eight are queued and answered (one at a time in the device's slot); the ninth after them."""
    jobs = [client.submit(*example_args(demo_paths, "rich", n=24, seed=100 + i), api_name="/evaluate") for i in range(8)]
    wait(jobs, timeout=240)
    headlines = [job.result(timeout=1)[0] for job in jobs]
    assert all(h.startswith("## D_LR = ") for h in headlines)
    assert len(set(headlines)) > 1  # eight distinct subsamples, really computed
    ninth = client.predict(*example_args(demo_paths, "rich", n=24, seed=100), api_name="/evaluate")
    assert ninth[0] == headlines[0] and "Answered from the history" in ninth[1]


def test_a_full_queue_turns_requests_away_clearly(demo_paths, tmp_path):
    """With room for two waiting requests, a burst gets answers or "queue is full"; the server then serves again."""
    from dlr_hf.surfaces.app import build_demo

    demo = build_demo(make_app(demo_paths, tmp_path / "history.sqlite", queue_size=2))
    port = free_port()
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        slow = "\n".join(str(demo_paths[name]) for name in ("initial", "lazy", "rich"))
        first = client.submit(slow, str(demo_paths["data"]), "", "test", 96, 32, 0, api_name="/compare")
        burst = [client.submit(*example_args(demo_paths, "lazy", n=16, seed=i), api_name="/evaluate") for i in range(7)]
        wait([first, *burst], timeout=240)
        answered, refused = 0, 0
        for job in [first, *burst]:
            try:
                job.result(timeout=1)
                answered += 1
            except Exception as error:  # gradio_client raises QueueError for a full queue
                assert "queue is full" in str(error).lower(), repr(error)
                refused += 1
        assert answered >= 1 and refused >= 1 and answered + refused == 8
        assert client.predict(*example_args(demo_paths, "lazy", n=16, seed=99), api_name="/evaluate")[0].startswith("## D_LR = ")
    finally:
        demo.close()
