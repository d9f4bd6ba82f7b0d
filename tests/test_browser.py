"""End-to-end tests of the UI in headless Chromium against a real server.

The module starts ``python app.py`` in a subprocess (its own data folder, a
free port, offline), drives Debian's Chromium through Playwright's sync API
and checks what a user sees: the dataset preview, an upload whose name and
contents try to inject markup, a live training run (chart points growing on
the timer, logs, a reload mid-run, stop) and a short run to completion.

Screenshots land in ``test-artifacts/screenshots/`` (git-ignored) for a human
to look at. No browser is downloaded: without /usr/bin/chromium the tests
skip, unless FINETUNE_REQUIRE_BROWSER=1 makes that a failure (CI).

Waiting: Playwright's sync API only delivers page events (requests, page
errors) while the test is inside a Playwright call, so pauses use
``page.wait_for_timeout``, never ``time.sleep``.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parent.parent
SHOTS = ROOT / "test-artifacts" / "screenshots"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run",
]
WIDE = {"width": 1280, "height": 900}
NARROW = {"width": 420, "height": 900}

# Markup that runs script if anything renders it as HTML instead of text.
XSS = '<img src=x onerror="window.__xss=1">'
XSS_UNQUOTED = "<img src=x onerror=window.__xss=1>"  # quotes in a multipart file name get percent-encoded

# Bounds (seconds). The whole module takes well under a minute on 2 CPU cores.
SERVER_START_S = 60
UI_S = 20  # page load, a handler's reply
TRAIN_S = 90  # first metrics of a run (loads the model), a short run to completion
STOP_S = 60  # a stop request to the cancelled state (finishes the step, saves a checkpoint)

# JavaScript helpers evaluated in the page.
JS_POINTS = """() => {
    const el = document.querySelector('#loss-plot .js-plotly-plot');
    if (!el || !el._fullData || !el._fullData.length || !el._fullData[0].x) return 0;
    return el._fullData[0].x.length;
}"""
JS_XRANGE = """() => {
    const el = document.querySelector('#loss-plot .js-plotly-plot');
    const ax = el && el._fullLayout && el._fullLayout.xaxis;
    return ax ? {range: Array.from(ax.range), autorange: ax.autorange} : null;
}"""
JS_STATUS = """() => {
    const el = document.querySelector('#run-status .ft-status');
    return el ? el.dataset.status : null;
}"""


# ----------------------------------------------------------------- fixtures


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 2.0) -> int:
    with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - local test server
        return resp.status


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real ``python app.py`` on a free port with its own data folder; yields the base URL."""
    from finetune.tinymodel import ensure_tiny_model

    home = tmp_path_factory.mktemp("browser-home")
    ensure_tiny_model(home / "models")  # built here, so the first run only loads it
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FINETUNE_")}
    env.update({
        "FINETUNE_HOME": str(home),
        "GRADIO_SERVER_PORT": str(port),
        "GRADIO_SERVER_NAME": "127.0.0.1",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "GRADIO_ANALYTICS_ENABLED": "False",
        "PYTHONUNBUFFERED": "1",
    })
    log_path = home / "server.log"
    log_file = log_path.open("wb")
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"

    def server_log() -> str:
        return log_path.read_text(encoding="utf-8", errors="replace")[-4000:]

    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the server exited with code {proc.returncode} before answering:\n{server_log()}")
            try:
                if _get(base + "/healthz") == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"no answer from {base}/healthz within {SERVER_START_S}s:\n{server_log()}")
            time.sleep(0.25)
        yield base
    finally:
        proc.send_signal(signal.SIGTERM)  # graceful: the lifespan cancels a running job
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log_file.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        message = f"{CHROMIUM} is missing (apt-get install chromium)"
        if os.environ.get("FINETUNE_REQUIRE_BROWSER") == "1":
            pytest.fail(message + "; FINETUNE_REQUIRE_BROWSER=1 requires it")
        pytest.skip(message)
    try:
        from playwright import sync_api
    except ImportError:
        if os.environ.get("FINETUNE_REQUIRE_BROWSER") == "1":
            raise
        pytest.skip("playwright is not installed (pip install -r requirements-dev.txt)")
    with sync_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


class Tab:
    """One browser page on the studio plus what it recorded."""

    def __init__(self, page: Any, base: str) -> None:
        self.page = page
        self.base = base
        self.errors: list[str] = []  # uncaught exceptions and console errors
        self.joins: list[float] = []  # times of event requests (POST .../queue/join)
        page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        page.on("console", lambda msg: self.errors.append(f"console: {msg.text}") if msg.type == "error" else None)
        page.on("request", self._on_request)

    def _on_request(self, request: Any) -> None:
        if request.method == "POST" and "/queue/join" in request.url:
            self.joins.append(time.monotonic())

    def open(self) -> None:
        self.page.goto(self.base + "/", timeout=UI_S * 1000)
        self.wait_loaded()

    def wait_loaded(self) -> None:
        # demo.load fills the status box and the dataset dropdown.
        self.page.wait_for_function(JS_STATUS, timeout=UI_S * 1000)
        self.page.wait_for_function(
            "() => (document.querySelector('#dataset-select input') || {}).value", timeout=UI_S * 1000
        )

    def status(self) -> str | None:
        return self.page.evaluate(JS_STATUS)

    def points(self) -> int:
        return self.page.evaluate(JS_POINTS)

    def wait_points_above(self, n: int, timeout_s: float) -> int:
        self.page.wait_for_function(f"() => ({JS_POINTS})() > {n}", timeout=timeout_s * 1000)
        return self.points()

    def log_lines(self) -> list[str]:
        return self.page.locator("#run-logs .ft-log").all_inner_texts()

    def wait_job_status(self, job_id: str, status: str, timeout_s: float) -> None:
        self.page.wait_for_function(
            """([job, status]) => {
                const el = document.querySelector('#run-status .ft-status');
                return el && el.dataset.status === status && el.textContent.includes(job);
            }""",
            arg=[job_id, status],
            timeout=timeout_s * 1000,
        )

    def set_number(self, elem_id: str, value: int) -> None:
        box = self.page.locator(f"#{elem_id} input")
        box.fill(str(value))
        box.press("Tab")  # commit the value (Gradio reads it on change/blur)

    def start_run(self, max_steps: int, logging_steps: int) -> str:
        page = self.page
        self.set_number("cfg-max_steps", max_steps)
        page.get_by_text("More hyperparameters").click()
        self.set_number("cfg-logging_steps", logging_steps)
        assert page.locator("#start-btn").is_enabled()
        page.click("#start-btn")
        page.wait_for_function(
            "() => /Started job/.test((document.querySelector('#run-msg') || {}).textContent || '')",
            timeout=UI_S * 1000,
        )
        match = re.search(r"Started job (\S+?)\.", page.inner_text("#run-msg"))
        assert match, page.inner_text("#run-msg")
        return match.group(1)

    def shot(self, name: str, viewport: dict[str, int] = WIDE) -> None:
        SHOTS.mkdir(parents=True, exist_ok=True)
        self.page.set_viewport_size(viewport)
        self.page.wait_for_timeout(400)  # let the layout and Plotly's resize settle
        self.page.screenshot(path=str(SHOTS / name), full_page=True)

    def assert_no_errors(self) -> None:
        assert self.errors == [], f"errors in the page: {self.errors}"


@pytest.fixture
def tab(browser: Any, server: str) -> Iterator[Tab]:
    context = browser.new_context(viewport=WIDE)
    context.set_default_timeout(UI_S * 1000)
    try:
        yield Tab(context.new_page(), server)
    finally:
        context.close()


def _ensure_idle(tab: Tab) -> None:
    """Cancel a run a failed earlier test may have left running, so this test's run starts now."""
    if tab.status() in ("queued", "running"):
        tab.page.click("#stop-btn")
        tab.page.wait_for_function(f"() => !['queued', 'running'].includes(({JS_STATUS})())", timeout=STOP_S * 1000)
        tab.page.wait_for_function("() => !document.querySelector('#start-btn').disabled", timeout=UI_S * 1000)


# -------------------------------------------------------------------- tests


def test_page_loads_with_demo_dataset(tab: Tab) -> None:
    tab.open()
    page = tab.page
    assert "demo" in page.input_value("#dataset-select input")
    # The preview table shows the demo's rows (prompt/completion pairs).
    page.wait_for_function(
        "() => document.querySelectorAll('#dataset-preview tbody tr').length > 0", timeout=UI_S * 1000
    )
    preview = page.inner_text("#dataset-preview")
    assert "prompt" in preview and "completion" in preview
    assert "What is" in preview
    assert "302 rows" in page.inner_text("#dataset-info")
    assert tab.status() in ("idle", "completed", "cancelled", "failed", "interrupted")
    assert page.locator("#start-btn").is_enabled()
    tab.shot("01-loaded-1280.png")
    tab.assert_no_errors()


def test_upload_with_markup_in_name_and_cells_is_inert(tab: Tab) -> None:
    tab.open()
    page = tab.page
    column = f"note {XSS}"
    quoted = column.replace('"', '""')
    cell = f"What is 1 plus 1? {XSS}".replace('"', '""')
    csv = (f'prompt,completion,"{quoted}"\n"{cell}",2,x\nWhat is 2 plus 2?,4,y\nWhat is 3 plus 3?,6,z\n').encode()

    # 1. Through the upload widget. (Gradio rewrites '<', '>' and '"' in uploaded
    # file names, so the markup reaches the page through the column name and a cell.)
    page.set_input_files(
        "#dataset-file input[type=file]", files=[{"name": f"x{XSS}.csv", "mimeType": "text/csv", "buffer": csv}]
    )
    page.wait_for_function(
        "() => /Uploaded .*3 rows/.test((document.querySelector('#dataset-msg') || {}).textContent || '')",
        timeout=UI_S * 1000,
    )
    assert "3 rows" in page.input_value("#dataset-select input")
    page.wait_for_function(
        "() => (document.querySelector('#dataset-info') || {}).textContent.includes('3 rows')", timeout=UI_S * 1000
    )
    info = page.inner_text("#dataset-info")
    assert column in info  # the literal markup, shown as text
    page.wait_for_function(
        "() => (document.querySelector('#dataset-preview') || {}).textContent.includes('What is 1 plus 1?')",
        timeout=UI_S * 1000,
    )
    assert f"What is 1 plus 1? {XSS}" in page.inner_text("#dataset-preview")
    tab.shot("02-uploaded-1280.png")

    # 2. Through the REST route, which keeps the file name as sent: the name is
    # then shown in the dropdown and the info box.
    name = f"y{XSS_UNQUOTED}.csv"
    resp = page.request.post(tab.base + "/api/datasets", multipart={
        "file": {"name": name, "mimeType": "text/csv", "buffer": csv},
    })
    assert resp.status == 201, resp.text()
    assert resp.json()["filename"] == name
    page.reload()
    tab.wait_loaded()
    page.click("#dataset-select input")
    page.locator("[data-testid=dropdown-option]", has_text="onerror=window").first.click()
    page.wait_for_function(
        "(name) => (document.querySelector('#dataset-info') || {}).textContent.includes(name)",
        arg=name, timeout=UI_S * 1000,
    )
    assert name in page.inner_text("#dataset-info")
    assert "<img" in page.inner_text("#dataset-info")

    page.wait_for_timeout(500)  # give a broken image's onerror every chance to fire
    assert page.evaluate("typeof window.__xss") == "undefined"
    assert page.evaluate("document.querySelectorAll('img[src=\"x\"]').length") == 0
    tab.assert_no_errors()


def test_live_run_reload_and_stop(tab: Tab) -> None:
    tab.open()
    page = tab.page
    _ensure_idle(tab)
    job = tab.start_run(max_steps=3000, logging_steps=2)  # far longer than the test: it is stopped
    assert not page.locator("#start-btn").is_enabled()

    # Live updates: the chart gets points, then more points on later ticks.
    first = tab.wait_points_above(0, TRAIN_S)
    logs_before = tab.log_lines()
    grown = tab.wait_points_above(first, UI_S)
    assert grown > first
    # The box shows the newest 200 lines: new lines arrive at the bottom.
    page.wait_for_function(
        "(last) => { const lines = document.querySelectorAll('#run-logs .ft-log');"
        " return lines.length && lines[lines.length - 1].innerText !== last; }",
        arg=logs_before[-1], timeout=UI_S * 1000,
    )
    logs_after = tab.log_lines()
    assert len(logs_after) >= min(len(logs_before) + 1, 200)
    assert any("METRIC" in line and "loss" in line for line in logs_after)

    assert tab.status() == "running"
    status_text = page.inner_text("#run-status")
    assert job in status_text
    steps = re.search(r"step (\d+) / 3000", status_text)
    assert steps and int(steps.group(1)) > 0, status_text
    assert page.locator("#stop-btn").is_enabled()
    tab.shot("03-running-1280.png")

    # Zoom on the loss chart (a box drag along x): refreshes keep it (uirevision).
    drag = page.locator("#loss-plot .nsewdrag").first
    drag.scroll_into_view_if_needed()
    box = drag.bounding_box()
    assert box is not None
    y = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + box["width"] * 0.15, y)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.35, y + 2, steps=8)
    page.mouse.move(box["x"] + box["width"] * 0.55, y + 3, steps=8)
    page.mouse.up()
    page.wait_for_function(f"() => ({JS_XRANGE})().autorange === false", timeout=UI_S * 1000)
    zoomed = page.evaluate(JS_XRANGE)["range"]
    tab.wait_points_above(tab.points(), UI_S)  # at least one refresh with new data
    assert page.evaluate(JS_XRANGE)["range"] == pytest.approx(zoomed)

    # Reload mid-run: the page re-attaches and shows the whole history.
    before_reload = tab.points()
    page.reload()
    tab.wait_loaded()
    page.wait_for_function(f"() => ({JS_POINTS})() >= {before_reload}", timeout=UI_S * 1000)
    assert tab.status() == "running"
    assert job in page.inner_text("#run-status")
    tab.wait_points_above(tab.points(), UI_S)  # the timer runs again after the reload
    tab.shot("04-running-420.png", NARROW)
    page.set_viewport_size(WIDE)

    # Stop: the run finishes its step, saves and ends cancelled; Start is back.
    page.wait_for_function("() => !document.querySelector('#stop-btn').disabled", timeout=UI_S * 1000)
    page.click("#stop-btn")
    tab.wait_job_status(job, "cancelled", STOP_S)
    page.wait_for_function("() => !document.querySelector('#start-btn').disabled", timeout=UI_S * 1000)
    assert page.locator("#start-btn").is_enabled()
    assert not page.locator("#stop-btn").is_enabled()
    tab.shot("05-cancelled-1280.png")
    tab.assert_no_errors()


def test_short_run_completes_and_polling_stops(tab: Tab) -> None:
    tab.open()
    page = tab.page
    _ensure_idle(tab)
    job = tab.start_run(max_steps=30, logging_steps=5)
    tab.wait_job_status(job, "completed", TRAIN_S)
    status_text = page.inner_text("#run-status")
    assert "30 / 30" in status_text
    assert "100.0%" in status_text
    width = page.evaluate("document.querySelector('#run-status .ft-bar-fill').style.width")
    assert float(width.rstrip("%")) == 100
    assert tab.points() >= 30 // 5  # a point every 5 steps
    page.wait_for_function("() => !document.querySelector('#start-btn').disabled", timeout=UI_S * 1000)

    # The timer switched itself off with the run: no more event requests.
    page.wait_for_timeout(1000)  # a tick already in flight may still land
    requests_before = len(tab.joins)
    page.wait_for_timeout(5000)  # > 2 ticks of the 2 s timer
    assert len(tab.joins) == requests_before, "the page still polls after the run ended"
    tab.shot("06-completed-1280.png")
    tab.assert_no_errors()


def test_chart_figures_render_in_bundled_plotly(tab: Tab) -> None:
    """charts.py's figures (typed arrays, star marker) draw in the plotly.js that Gradio ships."""
    import numpy as np

    from finetune.charts import MetricSeries, loss_figure, lr_figure

    n = 500
    steps = np.arange(1, n + 1, dtype=np.float64)
    series = MetricSeries(
        step=steps, loss=3 + np.sin(steps / 20), learning_rate=np.linspace(2e-3, 0, n),
        eval_step=np.array([100.0, 200.0, 300.0]), eval_loss=np.array([3.1, 2.4, 2.9]),
    )
    tab.open()
    page = tab.page
    page.wait_for_function("() => window.Plotly && window.Plotly.newPlot", timeout=UI_S * 1000)
    drawn = page.evaluate(
        """async ([lossJson, lrJson]) => {
            const out = [];
            for (const json of [lossJson, lrJson]) {
                const fig = JSON.parse(json);
                const div = document.createElement('div');
                div.style.width = '700px';
                document.body.appendChild(div);
                await window.Plotly.newPlot(div, fig.data, fig.layout);
                out.push({
                    traces: div._fullData.map(t => ({name: t.name, n: t.x.length, y0: t.y[0],
                                                      symbol: t.marker && t.marker.symbol})),
                    paths: div.querySelectorAll('.scatterlayer path.js-line').length,
                    points: div.querySelectorAll('.scatterlayer path.point').length,
                });
                div.remove();
            }
            return out;
        }""",
        [loss_figure(series).to_json(), lr_figure(series).to_json()],
    )
    loss, lr = drawn
    by_name = {t["name"]: t for t in loss["traces"]}
    assert by_name["loss (raw)"]["n"] == n
    assert by_name["loss (raw)"]["y0"] == pytest.approx(3 + np.sin(1 / 20), rel=1e-6)
    assert by_name["eval loss"]["n"] == 3
    assert by_name["best eval loss"]["symbol"] == "star"
    assert loss["paths"] == 2 and loss["points"] == 4  # two lines; 3 eval markers + the star
    assert lr["traces"][0]["n"] == n and lr["paths"] == 1
    tab.assert_no_errors()
