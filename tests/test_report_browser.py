"""The HTML report in a real browser: Debian's Chromium, driven by Playwright for Python.

The page must load with no console error and no request leaving it (it is one
self-contained file), and the headline figures it shows must be the JSON report's. A
screenshot is written for people to look at (``SOP_WORKER_REPORT_SCREENSHOT``, else
var/report-screenshot.png). Without Chromium the test skips, unless
``SOP_WORKER_REQUIRE_BROWSER=1`` (CI, which installs it), where that is a failure.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from .conftest import ROOT
from .test_report import demo_store, invoke, org_args

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def _require_chromium() -> None:
    if CHROMIUM.exists():
        return
    if os.environ.get("SOP_WORKER_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{CHROMIUM} is missing and the browser test is required here")
    pytest.skip(f"browser test skipped: no {CHROMIUM} (apt-get install chromium)")


def test_the_report_page_shows_the_json_reports_figures_in_a_browser(
    demo_copy: Path, tmp_path: Path
) -> None:
    _require_chromium()
    from playwright.sync_api import sync_playwright

    db = demo_store(demo_copy, tmp_path)
    page_file = tmp_path / "report.html"
    args = [*org_args(demo_copy, db), "--simulate-days", "5"]
    result = invoke("report", *args, "--out", str(page_file))
    assert result.exit_code == 0, result.output
    result = invoke("report", *args, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    shot = Path(
        os.environ.get("SOP_WORKER_REPORT_SCREENSHOT", ROOT / "var" / "report-screenshot.png")
    )
    shot.parent.mkdir(parents=True, exist_ok=True)

    problems: list[str] = []
    requests: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on(
                "console",
                lambda msg: problems.append(msg.text) if msg.type == "error" else None,
            )
            page.on("pageerror", lambda exc: problems.append(str(exc)))
            page.on("request", lambda req: requests.append(req.url))
            page.goto(page_file.as_uri(), wait_until="load")
            shown = {
                figure["id"]: page.locator(f"[data-figure='{figure['id']}'] .value").inner_text()
                for figure in report["figures"]
            }
            totals = {
                name: page.locator(f"[data-total='{name}'] .value").inner_text()
                for name in report["headline"]
            }
            charts = page.locator("svg.pygal-chart").count()
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()

    assert problems == []
    assert requests == [page_file.as_uri()]  # nothing but the page itself
    assert shown == {f["id"]: f["shown"] for f in report["figures"]}
    assert totals == {name: str(value) for name, value in report["headline"].items()}
    assert charts == 3  # actions per day, API calls per run, the simulation
    assert report["headline"]["actions_done"] > 0
    assert shot.stat().st_size > 10_000
    print(f"report screenshot: {shot}")
