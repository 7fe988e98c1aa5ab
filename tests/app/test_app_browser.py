"""In a real browser: Debian chromium driven by Python playwright clicks the demo example.

CI installs the browser with ``bash scripts/install_browser.sh``. Set DLR_HF_UPDATE_SCREENSHOT=1
to refresh ``docs/app.png`` from this run.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

from dlr_hf.engine import evaluate

CHROMIUM = Path("/usr/bin/chromium")
DOCS_SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "app.png"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium is absent: run `bash scripts/install_browser.sh`"),
]


@pytest.fixture
def page(served):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"],
        )
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(30_000)
            yield page
        finally:
            browser.close()


def test_demo_example_runs_in_the_browser(served, page, demo_paths, tmp_path):
    app, _, url = served
    page.goto(url)
    example = page.get_by_text("rich ViT on digits (full back-propagation)")
    example.wait_for(state="visible", timeout=60_000)
    example.click()
    page.locator("#dlr-plot img").wait_for(state="visible", timeout=180_000)
    headline = page.locator("#dlr-headline")
    headline.get_by_text(re.compile(r"D_LR = \d")).wait_for(timeout=30_000)
    shown = float(re.search(r"D_LR = ([0-9.]+)", headline.inner_text()).group(1))
    page.locator("#dlr-report").get_by_text(re.compile(r"dlr-report-.*\.json")).wait_for(timeout=30_000)
    screenshot = tmp_path / "app.png"
    page.screenshot(path=str(screenshot), full_page=True)
    assert screenshot.stat().st_size > 20_000
    if os.environ.get("DLR_HF_UPDATE_SCREENSHOT"):
        DOCS_SCREENSHOT.parent.mkdir(exist_ok=True)
        shutil.copy(screenshot, DOCS_SCREENSHOT)

    # the example's settings: the whole test split (360), batch 32, seed 0, the initial checkpoint as reference
    example_row = app.demo_examples()[0]
    expected = evaluate(
        str(demo_paths["rich"]), str(demo_paths["data"]), split="test", num_samples=example_row[5], seed=0,
        reference_model=str(demo_paths["initial"]), progress=False,
    )
    assert shown == pytest.approx(expected.dlr, abs=5e-5)
    assert "rich" in headline.inner_text()
    details = page.locator("#dlr-details").inner_text()
    assert "n = 360 samples" in details
