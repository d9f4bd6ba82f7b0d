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

import json
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

_BENIGN_CONSOLE = ("AbortError: signal is aborted", "Connection errored out")

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
        page.on("console", self._console)
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

    def _console(self, msg) -> None:
        # Gradio's client logs an aborted event stream (a request superseded by a
        # newer one, e.g. two quick preview refreshes) as a console error. It is
        # the client's own cancellation, not a failure of the page or the server;
        # uncaught exceptions (pageerror) stay strict.
        if msg.type != "error" or any(s in msg.text for s in _BENIGN_CONSOLE):
            return
        self.errors.append(f"console: {msg.text}")

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
    # The examples as trained, cell markup shown as text (also: let the preview finish before the reload below).
    page.wait_for_function(
        "() => (document.querySelector('#formatted-preview') || {}).textContent.includes('What is 1 plus 1?')",
        timeout=UI_S * 1000,
    )
    assert f"What is 1 plus 1? {XSS}" in page.inner_text("#formatted-preview")
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
    # The form shows the running job's settings, not the defaults.
    page.wait_for_function("() => (document.querySelector('#cfg-max_steps input') || {}).value === '3000'", timeout=UI_S * 1000)
    page.get_by_text("More hyperparameters").click()  # a closed accordion's fields are not in the page
    page.wait_for_function("() => (document.querySelector('#cfg-logging_steps input') || {}).value === '2'", timeout=UI_S * 1000)
    assert page.input_value("#cfg-prompt_column input") == "prompt"
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
    # The "Started job ..." message goes once the run has ended.
    page.wait_for_function("() => !/Started job/.test(document.querySelector('#run-msg').textContent)", timeout=UI_S * 1000)
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


# ------------------------------------------------- formatted preview, runs, playground

CHAT_ROWS = [
    {"messages": [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": f"What is {i} plus 1?"},
                  {"role": "assistant", "content": f"It is {i + 1}."}]}
    for i in range(6)
]
JS_PLOT_POINTS = """(sel) => {
    const el = document.querySelector(sel + ' .js-plotly-plot');
    if (!el || !el._fullData) return 0;
    return el._fullData.reduce((n, t) => n + (t.x ? t.x.length : 0), 0);
}"""


def _formatted_text(page: Any, kind: str) -> list[str]:
    return page.locator(f"#formatted-preview .ft-fmt-text .ft-seg-{kind}").all_inner_texts()


def _wait_text(page: Any, selector: str, text: str, timeout_s: float = UI_S) -> None:
    page.wait_for_function(
        "([sel, text]) => ((document.querySelector(sel) || {}).innerText || '').includes(text)",
        arg=[selector, text], timeout=timeout_s * 1000,
    )


def _open_tab(tab: Tab, name: str) -> None:
    tab.page.click(f"#tab-{name}-button")


def _completed_job(tab: Tab) -> str:
    """A completed demo run: the short run's from earlier in the module, else a new 30-step one."""
    jobs = tab.page.request.get(tab.base + "/api/jobs").json()
    done = [j["job_id"] for j in jobs if j["status"] == "completed" and j["method"] == "lora"]
    if done:
        return done[0]
    resp = tab.page.request.post(tab.base + "/api/jobs", data={"dataset_id": "demo", "max_steps": 30, "logging_steps": 5})
    assert resp.status == 201, resp.text()
    job = resp.json()["job_id"]
    deadline = time.monotonic() + TRAIN_S
    while tab.page.request.get(f"{tab.base}/api/status?job_id={job}").json()["status"] != "completed":
        assert time.monotonic() < deadline, f"job {job} did not complete within {TRAIN_S}s"
        tab.page.wait_for_timeout(500)
    return job


def test_formatted_preview_marks_trained_and_masked(tab: Tab) -> None:
    tab.open()
    page = tab.page
    _wait_text(page, "#formatted-preview", "Example 3")
    # Demo prompt/completion: the prompt is masked, the answer and eos carry the loss.
    masked, trained = _formatted_text(page, "masked"), _formatted_text(page, "trained")
    assert len(masked) == 3 and len(trained) >= 3
    assert masked[0].startswith("What is") and "plus" in masked[0]
    assert any("<|endoftext|>" in t for t in trained)  # special tokens shown as text
    assert "All fit in max_seq_length (256)" in page.inner_text("#formatted-preview")

    # A shorter max_seq_length: the stats line counts the examples that will be truncated.
    page.get_by_text("More hyperparameters").click()
    tab.set_number("cfg-max_seq_length", 12)
    _wait_text(page, "#formatted-preview", "exceed max_seq_length (12) and will be truncated")
    assert re.search(r"\d+ of 302 examples exceed", page.inner_text("#formatted-preview"))
    # Loss on the whole text: nothing is masked any more.
    page.click("#cfg-completion_only_loss input")
    page.wait_for_function("() => !document.querySelector('#formatted-preview .ft-fmt-text .ft-seg-masked')", timeout=UI_S * 1000)
    assert _formatted_text(page, "trained")
    # A contradictory column choice is a message, not a crash.
    page.click("#cfg-text_column input")
    page.locator("[data-testid=dropdown-option]", has_text="completion").first.click()
    _wait_text(page, "#formatted-preview", "Cannot show the formatted examples")

    # A chat dataset: the conversation column is offered as the text column; only replies are trained.
    buffer = "\n".join(json.dumps(r) for r in CHAT_ROWS).encode()
    resp = page.request.post(tab.base + "/api/datasets", multipart={
        "file": {"name": "chat.jsonl", "mimeType": "application/json", "buffer": buffer},
    })
    assert resp.status == 201, resp.text()
    page.reload()
    tab.wait_loaded()
    page.click("#dataset-select input")
    page.locator("[data-testid=dropdown-option]", has_text="chat.jsonl").first.click()
    _wait_text(page, "#formatted-preview", "chat (template)")
    assert page.input_value("#cfg-text_column input") == "messages"
    masked, trained = _formatted_text(page, "masked"), _formatted_text(page, "trained")
    assert any("<|im_start|>user\nWhat is 0 plus 1?" in m for m in masked)
    assert trained[0].startswith("It is 1.")
    assert not any("What is" in t for t in trained)
    tab.shot("07-formatted-preview-chat-1280.png")
    tab.assert_no_errors()


def test_runs_tab_shows_a_finished_run(tab: Tab) -> None:
    tab.open()
    page = tab.page
    job = _completed_job(tab)
    _open_tab(tab, "runs")
    _wait_text(page, "#runs-table", job)
    # Pick the run by its row in the table.
    page.locator("#runs-table [role=gridcell]", has_text=job).first.click()
    page.wait_for_function("(job) => document.querySelector('#runs-select input').value.startsWith(job)", arg=job,
                           timeout=UI_S * 1000)
    _wait_text(page, "#runs-status", job)
    assert "completed" in page.inner_text("#runs-table")
    page.wait_for_function(f"() => ({JS_PLOT_POINTS})('#runs-loss-plot') >= 12", timeout=UI_S * 1000)  # raw + smoothed
    page.wait_for_function(f"() => ({JS_PLOT_POINTS})('#runs-lr-plot') >= 6", timeout=UI_S * 1000)
    _wait_text(page, "#runs-config", "max_steps: 30")
    assert "dataset_id: demo" in page.inner_text("#runs-config")
    assert any(line.endswith("done") for line in page.locator("#runs-logs .ft-log").all_inner_texts())
    assert page.locator("#runs-delete").is_enabled() and not page.locator("#runs-resume").is_enabled()

    # The metrics CSV downloads.
    with page.expect_download(timeout=UI_S * 1000) as download:
        page.click("#runs-csv")
    csv_text = Path(download.value.path()).read_text(encoding="utf-8")
    assert csv_text.startswith("step,loss,learning_rate,eval_loss\n") and len(csv_text.splitlines()) >= 7

    # Overlay: every run with metrics gets a line.
    runs = [o for o in page.request.get(tab.base + "/api/jobs").json() if o["status"] in ("completed", "cancelled")][:2]
    for other in runs:
        page.click("#runs-compare input")
        page.locator("[data-testid=dropdown-option]", has_text=other["job_id"]).first.click()
    page.keyboard.press("Escape")
    page.wait_for_function(
        "(n) => { const el = document.querySelector('#runs-overlay .js-plotly-plot');"
        " return el && el._fullData && el._fullData.filter(t => t.mode === 'lines').length === n; }",
        arg=len(runs), timeout=UI_S * 1000,
    )
    tab.shot("08-runs-1280.png")
    tab.assert_no_errors()


def test_playground_answers_with_base_and_tuned(tab: Tab) -> None:
    tab.open()
    page = tab.page
    job = _completed_job(tab)
    _open_tab(tab, "playground")
    page.wait_for_function("() => document.querySelector('#pg-run input').value !== ''", timeout=UI_S * 1000)
    page.click("#pg-run input")
    page.locator("[data-testid=dropdown-option]", has_text=job).first.click()
    _wait_text(page, "#pg-downloads", "Model zip")
    page.fill("#pg-prompt textarea", "What is 2 plus 3?")
    page.click("#pg-generate")
    _wait_text(page, "#pg-info", "Generated on", TRAIN_S)
    assert "CPU" in page.inner_text("#pg-info")
    base, tuned = page.input_value("#pg-base textarea"), page.input_value("#pg-tuned textarea")
    assert base.strip() and tuned.strip() and base != tuned

    # Reproduce: the config as YAML, the CLI and curl commands.
    page.get_by_text("Reproduce this run").click()
    _wait_text(page, "#pg-yaml", "max_steps: 30")
    assert "python -m finetune train" in page.inner_text("#pg-cli")
    assert "/api/jobs" in page.inner_text("#pg-curl")

    # Merge the adapter: the status follows the background task, then the merged zip is offered.
    page.click("#pg-merge")
    _wait_text(page, "#pg-merge-status", "completed", TRAIN_S)
    _wait_text(page, "#pg-downloads", "Merged model zip")
    href = page.locator("#pg-downloads a", has_text="Merged model zip").get_attribute("href")
    assert href == f"/api/jobs/{job}/merged"
    assert page.request.get(tab.base + href).status == 200
    tab.shot("09-playground-1280.png")
    tab.assert_no_errors()


def test_markup_in_log_lines_is_inert_and_runs_can_be_deleted(tab: Tab) -> None:
    """A base model id with markup reaches the log (queued line, load error), the status and the runs table."""
    tab.open()
    page = tab.page
    _ensure_idle(tab)
    model = f"org/{XSS_UNQUOTED}"
    box = page.locator("#cfg-base_model textarea")
    box.fill(model)
    box.press("Tab")  # blur: the preview tries this model's tokenizer and says why it cannot
    _wait_text(page, "#formatted-preview", "Cannot show the formatted examples")
    assert model in page.inner_text("#formatted-preview")
    job = tab.start_run(max_steps=5, logging_steps=1)
    tab.wait_job_status(job, "failed", TRAIN_S)
    lines = tab.log_lines()
    assert any(model in line and "queued" in line for line in lines), lines
    assert any("ERROR" in line and model in line for line in lines), lines
    assert model in page.inner_text("#run-status")

    _open_tab(tab, "runs")
    _wait_text(page, "#runs-table", model)
    page.locator("#runs-table [role=gridcell]", has_text=job).first.click()
    _wait_text(page, "#runs-logs", model)
    tab.shot("10-runs-markup-failed-1280.png")
    page.wait_for_timeout(500)  # give a broken image's onerror every chance to fire
    assert page.evaluate("typeof window.__xss") == "undefined"
    assert page.evaluate("document.querySelectorAll('img[src=\"x\"]').length") == 0

    # Resume: the failed run is queued again (and fails again); the monitor follows it.
    assert page.locator("#runs-resume").is_enabled()
    page.click("#runs-resume")
    _wait_text(page, "#runs-msg", f"Resumed run {job}")
    _open_tab(tab, "train")
    page.wait_for_function(
        "() => Array.from(document.querySelectorAll('#run-logs .ft-log')).some(l => l.innerText.includes('resume requested'))",
        timeout=UI_S * 1000,
    )
    tab.wait_job_status(job, "failed", TRAIN_S)

    # Delete needs the confirmation; then the run leaves the table.
    _open_tab(tab, "runs")
    _wait_text(page, "#runs-table", job)
    page.locator("#runs-table [role=gridcell]", has_text=job).first.click()
    page.wait_for_function("(job) => document.querySelector('#runs-select input').value.startsWith(job)", arg=job,
                           timeout=UI_S * 1000)
    page.wait_for_function("() => !document.querySelector('#runs-delete').disabled", timeout=UI_S * 1000)
    page.click("#runs-delete")
    _wait_text(page, "#runs-msg", "I am sure")
    assert job in page.inner_text("#runs-table")
    page.click("#runs-sure input")
    page.click("#runs-delete")
    _wait_text(page, "#runs-msg", f"Deleted run {job}")
    page.wait_for_function("(job) => !document.querySelector('#runs-table').innerText.includes(job)", arg=job,
                           timeout=UI_S * 1000)
    assert page.request.get(f"{tab.base}/api/jobs/{job}").status == 404
    assert not page.locator("#runs-sure input").is_checked()
    assert page.evaluate("typeof window.__xss") == "undefined"
    tab.assert_no_errors()
