"""REST contract with a real TestClient (lifespan on), no training.

Jobs here run against an app whose worker is not started (``idle_client``):
they stay queued, so queue, cancel and 409 paths are tested without a
Trainer. Real training over REST is in test_training_e2e.py.
"""

from __future__ import annotations

import json

import pytest
from conftest import idle_app
from fastapi.testclient import TestClient

from finetune.settings import Settings

STATUS_KEYS = {
    "job_id", "status", "step", "max_steps", "epoch", "progress", "loss", "learning_rate",
    "eta_seconds", "elapsed_seconds", "error", "dashboard_url",
}
CONTRACT_ROUTES = {
    ("get", "/api/status"), ("get", "/api/logs"),
    ("post", "/api/datasets"), ("get", "/api/datasets"), ("get", "/api/datasets/{dataset_id}"),
    ("post", "/api/jobs"), ("get", "/api/jobs"), ("get", "/api/jobs/{job_id}"),
    ("post", "/api/jobs/{job_id}/cancel"), ("get", "/api/jobs/{job_id}/metrics"),
    ("get", "/api/jobs/{job_id}/artifacts"),
    ("get", "/dashboard"), ("get", "/dashboard-info"), ("get", "/healthz"),
}
JOB_ROUTES = [
    ("get", "/api/jobs/{id}"), ("post", "/api/jobs/{id}/cancel"), ("get", "/api/jobs/{id}/metrics"),
    ("get", "/api/jobs/{id}/metrics.csv"), ("get", "/api/jobs/{id}/artifacts"),
]
CSV = b"prompt,completion\nWhat is 1 plus 1?,1 plus 1 is 2.\nWhat is 2 plus 2?,2 plus 2 is 4.\nSay hi,hi\n"
JSONL = b'{"text": "first example"}\n{"text": "second example"}\n\n'


def upload(client: TestClient, name: str, content: bytes, mime: str = "application/octet-stream"):
    return client.post("/api/datasets", files={"file": (name, content, mime)})


def dataset_dirs(settings: Settings) -> list[str]:
    return sorted(p.name for p in settings.datasets_dir.iterdir())


def submit(client: TestClient, **config) -> str:
    resp = client.post("/api/jobs", json={"dataset_id": "demo", **config})
    assert resp.status_code == 201, resp.text
    body = resp.json()
    assert body["status"] == "queued"
    return body["job_id"]


# ------------------------------------------------------------------ datasets


def test_upload_csv_then_list_and_get(idle_client: TestClient, settings: Settings):
    resp = upload(idle_client, "qa.csv", CSV, "text/csv")
    assert resp.status_code == 201, resp.text
    meta = resp.json()
    assert meta["filename"] == "qa.csv"
    assert meta["format"] == "csv"
    assert meta["num_rows"] == 3
    assert meta["columns"] == ["prompt", "completion"]
    assert meta["preview"][0] == {"prompt": "What is 1 plus 1?", "completion": "1 plus 1 is 2."}
    ds_id = meta["dataset_id"]

    listed = idle_client.get("/api/datasets").json()
    assert {d["dataset_id"] for d in listed} == {"demo", ds_id}
    one = idle_client.get(f"/api/datasets/{ds_id}")
    assert one.status_code == 200
    assert one.json()["num_rows"] == 3 and one.json()["dataset_id"] == ds_id
    # On disk under a generated name: the user's file name never becomes a path.
    assert (settings.datasets_dir / ds_id / "meta.json").is_file()
    assert (settings.datasets_dir / ds_id / "data.csv").read_bytes() == CSV


def test_upload_jsonl(idle_client: TestClient):
    resp = upload(idle_client, "notes.JSONL", JSONL, "application/json")
    assert resp.status_code == 201, resp.text
    meta = resp.json()
    assert meta["format"] == "jsonl" and meta["num_rows"] == 2 and meta["columns"] == ["text"]
    assert [r["text"] for r in meta["preview"]] == ["first example", "second example"]
    assert idle_client.get(f"/api/datasets/{meta['dataset_id']}").json()["format"] == "jsonl"


def test_demo_dataset_exists_and_can_be_recreated(idle_client: TestClient):
    meta = idle_client.get("/api/datasets/demo").json()
    assert meta["num_rows"] > 100 and meta["columns"] == ["prompt", "completion"]
    again = idle_client.post("/api/datasets/demo")
    assert again.status_code == 201 and again.json()["dataset_id"] == "demo"


@pytest.mark.parametrize("dataset_id", ["nope", "ds-20990101-deadbeef", "demo..", "a.b", "-"])
def test_unknown_dataset_is_404(idle_client: TestClient, dataset_id: str):
    resp = idle_client.get(f"/api/datasets/{dataset_id}")
    assert resp.status_code == 404
    assert dataset_id in resp.json()["detail"]


def test_path_like_dataset_ids_never_escape(idle_client: TestClient):
    for raw in ("..%2F..%2Fetc%2Fpasswd", "%2E%2E", "demo%2F..%2Fdemo"):
        resp = idle_client.get(f"/api/datasets/{raw}")
        assert resp.status_code == 404, raw


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("tool.exe", b"MZ\x90\x00binary", ".exe"),
        ("noextension", b"text\nhello\n", "no extension"),
        ("empty.csv", b"", "empty"),
        ("blank.jsonl", b"\n\n  \n", "empty"),
        ("header.csv", b"prompt,completion\n", "header but no data rows"),
        ("broken.jsonl", b'{"text": "ok"}\n{"text": "unterminated\n', "Line 2"),
        ("list.jsonl", b'{"text": "ok"}\n[1, 2]\n', "Line 2"),
        ("bad.json", b'{"a": [1, 2', "not valid JSON"),
        ("nul.csv", b"text\nab\x00cd\n", "binary"),
        ("fake.parquet", b"PAR1 not really", "Parquet"),
    ],
)
def test_bad_upload_is_422_and_leaves_nothing(idle_client: TestClient, settings: Settings, name: str, content: bytes, expected: str):
    before = dataset_dirs(settings)
    resp = upload(idle_client, name, content)
    assert resp.status_code == 422, resp.text
    detail = resp.json()["detail"]
    assert isinstance(detail, str)
    assert expected.lower() in detail.lower()
    assert dataset_dirs(settings) == before  # no half-stored dataset, no .upload-* leftovers
    assert [d["dataset_id"] for d in idle_client.get("/api/datasets").json()] == ["demo"]


def test_upload_without_file_is_422_naming_the_field(idle_client: TestClient):
    resp = idle_client.post("/api/datasets")
    assert resp.status_code == 422
    assert "file" in resp.json()["detail"]


def test_oversize_upload_is_413(make_settings):
    settings = make_settings(max_upload_mb=0.001)  # ~1 KB
    app = idle_app(settings)
    with TestClient(app) as client:
        before = dataset_dirs(settings)
        small_enough = upload(client, "ok.csv", b"text\nhello\nworld\n")
        assert small_enough.status_code == 201
        before.append(small_enough.json()["dataset_id"])

        rows = b"text\n" + b"a fairly long line of training text\n" * 200  # ~7 KB: refused while streaming
        resp = upload(client, "big.csv", rows, "text/csv")
        assert resp.status_code == 413, resp.text
        assert "FINETUNE_MAX_UPLOAD_MB" in resp.json()["detail"]

        huge = b"text\n" + b"x" * 300_000 + b"\n"  # refused from Content-Length, before the body is read
        resp = upload(client, "huge.csv", huge, "text/csv")
        assert resp.status_code == 413
        assert "limit" in resp.json()["detail"]
        assert dataset_dirs(settings) == sorted(before)
    app.state.studio.close()


# ------------------------------------------------------------------ job validation


def test_job_with_unknown_dataset_is_404_naming_dataset_id(idle_client: TestClient):
    resp = idle_client.post("/api/jobs", json={"dataset_id": "ds-missing"})
    assert resp.status_code == 404
    detail = resp.json()["detail"]
    assert "dataset_id" in detail and "ds-missing" in detail
    assert idle_client.get("/api/jobs").json() == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"dataset_id": "demo", "learning_rate": -0.001}, "learning_rate"),
        ({"dataset_id": "demo", "per_device_train_batch_size": "eight"}, "per_device_train_batch_size"),
        ({"dataset_id": "demo", "learnig_rate": 0.001}, "learnig_rate"),
        ({"dataset_id": "demo", "max_steps": 0}, "max_steps"),
        ({"dataset_id": "demo", "method": "qlora"}, "method"),
        ({"dataset_id": "demo", "prompt_column": "prompt"}, "completion_column"),
        ({}, "dataset_id"),
        ({"dataset_id": "demo", "text_column": "nope"}, "text_column"),
        ({"dataset_id": "demo", "prompt_column": "prompt", "completion_column": "answer"}, "completion_column"),
    ],
)
def test_bad_job_config_is_422_naming_the_field(idle_client: TestClient, body: dict, field: str):
    resp = idle_client.post("/api/jobs", json=body)
    assert resp.status_code == 422, resp.text
    detail = resp.json()["detail"]
    assert isinstance(detail, str) and field in detail
    assert idle_client.get("/api/jobs").json() == []  # nothing was queued


@pytest.mark.parametrize(
    "kwargs",
    [
        {"content": b""},
        {"content": b"dataset_id=demo", "headers": {"content-type": "application/json"}},
        {"content": b'{"dataset_id": "demo",', "headers": {"content-type": "application/json"}},
        {"json": ["demo"]},
    ],
    ids=["empty", "not-json", "truncated-json", "array"],
)
def test_non_object_body_is_422_with_a_readable_detail(idle_client: TestClient, kwargs: dict):
    resp = idle_client.post("/api/jobs", **kwargs)
    assert resp.status_code == 422, resp.text
    detail = resp.json()["detail"]
    assert isinstance(detail, str)
    assert detail.startswith("body:")
    assert idle_client.get("/api/jobs").json() == []


# ------------------------------------------------------------------ status, logs, jobs


def test_idle_status_has_every_contract_key(idle_client: TestClient):
    status = idle_client.get("/api/status").json()
    assert STATUS_KEYS <= set(status), STATUS_KEYS - set(status)
    assert status["status"] == "idle" and status["job_id"] is None
    assert status["progress"] == 0.0 and status["step"] == 0
    assert status["dashboard_url"].endswith("/dashboard")


def test_logs_empty_shape(idle_client: TestClient):
    assert idle_client.get("/api/logs").json() == {"job_id": None, "logs": [], "next_since": 0}
    assert idle_client.get("/api/logs", params={"since": 7}).json()["next_since"] == 7


@pytest.mark.parametrize(("params", "field"), [({"since": -1}, "since"), ({"since": "x"}, "since"), ({"limit": 0}, "limit")])
def test_bad_log_query_is_422(idle_client: TestClient, params: dict, field: str):
    resp = idle_client.get("/api/logs", params=params)
    assert resp.status_code == 422
    assert resp.json()["detail"].startswith(f"{field}:")


@pytest.mark.parametrize(("method", "route"), JOB_ROUTES)
def test_unknown_job_is_404_everywhere(idle_client: TestClient, method: str, route: str):
    resp = idle_client.request(method.upper(), route.format(id="20990101-000000-abcdef"))
    assert resp.status_code == 404
    assert "20990101-000000-abcdef" in resp.json()["detail"]


def test_unknown_job_in_status_and_logs_is_404(idle_client: TestClient):
    assert idle_client.get("/api/status", params={"job_id": "nope"}).status_code == 404
    assert idle_client.get("/api/logs", params={"job_id": "nope"}).status_code == 404


def test_queued_job_lifecycle_without_a_worker(idle_client: TestClient, settings: Settings):
    job_id = submit(idle_client, max_steps=5, learning_rate=1e-3)

    status = idle_client.get("/api/status").json()  # no job_id: the next queued job
    assert status["job_id"] == job_id and status["status"] == "queued"
    assert STATUS_KEYS <= set(status), STATUS_KEYS - set(status)

    listed = idle_client.get("/api/jobs").json()
    assert [j["job_id"] for j in listed] == [job_id]
    one = idle_client.get(f"/api/jobs/{job_id}").json()
    assert one["config"]["max_steps"] == 5 and one["config"]["learning_rate"] == 1e-3
    assert one["dataset_id"] == "demo" and one["live"]["status"] == "queued"

    logs = idle_client.get("/api/logs", params={"job_id": job_id}).json()
    assert logs["job_id"] == job_id
    assert [e["seq"] for e in logs["logs"]] == [1] and logs["next_since"] == 1
    assert "queued" in logs["logs"][0]["message"]

    metrics = idle_client.get(f"/api/jobs/{job_id}/metrics").json()
    assert metrics["step"] == [] and metrics["loss"] == []

    art = idle_client.get(f"/api/jobs/{job_id}/artifacts")
    assert art.status_code == 409
    assert "queued" in art.json()["detail"]

    run_dir = settings.runs_dir / job_id
    saved = json.loads((run_dir / "config.json").read_text())
    assert saved["dataset_id"] == "demo" and saved["max_steps"] == 5
    assert json.loads((run_dir / "status.json").read_text())["status"] == "queued"

    resp = idle_client.post(f"/api/jobs/{job_id}/cancel")
    assert resp.status_code == 200
    assert resp.json()["status"] == "cancelled"
    assert idle_client.get("/api/status", params={"job_id": job_id}).json()["status"] == "cancelled"
    assert json.loads((run_dir / "status.json").read_text())["status"] == "cancelled"
    new = idle_client.get("/api/logs", params={"job_id": job_id, "since": 1}).json()["logs"]
    assert [e["seq"] for e in new] == [2] and "cancelled" in new[0]["message"]

    again = idle_client.post(f"/api/jobs/{job_id}/cancel")  # finished now
    assert again.status_code == 409
    assert "cancelled" in again.json()["detail"]
    assert idle_client.get(f"/api/jobs/{job_id}/artifacts").status_code == 409


def test_status_follows_the_fifo_queue(idle_client: TestClient):
    first = submit(idle_client, max_steps=5)
    second = submit(idle_client, max_steps=5)
    assert idle_client.get("/api/status").json()["job_id"] == first
    assert idle_client.post(f"/api/jobs/{first}/cancel").json()["status"] == "cancelled"
    assert idle_client.get("/api/status").json()["job_id"] == second
    assert idle_client.get("/api/logs").json()["job_id"] == second
    assert {j["job_id"] for j in idle_client.get("/api/jobs").json()} == {first, second}


# ------------------------------------------------------------------ meta routes


def test_meta_routes(idle_client: TestClient):
    health = idle_client.get("/healthz")
    assert health.status_code == 200 and health.json()["status"] == "ok"

    redirect = idle_client.get("/dashboard", follow_redirects=False)
    assert redirect.status_code == 307 and redirect.headers["location"] == "/"

    info = idle_client.get("/dashboard-info").json()
    assert {"dashboard_url", "ui_url", "api_url", "docs_url", "version", "auth_required"} <= set(info)
    assert info["dashboard_url"].endswith("/dashboard") and info["auth_required"] is False

    docs = idle_client.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()

    spec = idle_client.get("/openapi.json").json()
    routes = {(m, p) for p, ops in spec["paths"].items() for m in ops}
    assert CONTRACT_ROUTES <= routes, CONTRACT_ROUTES - routes


# ------------------------------------------------------------------ auth


def _api_requests(spec: dict) -> list[tuple[str, str]]:
    out = []
    for path, ops in spec["paths"].items():
        if path.startswith("/api"):
            concrete = path.replace("{job_id}", "nope").replace("{dataset_id}", "nope")
            out.extend((method.upper(), concrete) for method in ops)
    return out


def test_api_token_guards_every_api_route(make_settings):
    settings = make_settings(api_token="s3cret")
    app = idle_app(settings)
    good = {"Authorization": "Bearer s3cret"}
    with TestClient(app) as client:
        spec = client.get("/openapi.json").json()  # docs stay readable
        requests = _api_requests(spec)
        assert len(requests) >= 11
        for method, path in requests:
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}, {"Authorization": "Basic s3cret"}):
                resp = client.request(method, path, headers=headers)
                assert resp.status_code == 401, (method, path, headers, resp.status_code)
                assert "FINETUNE_API_TOKEN" in resp.json()["detail"]
            resp = client.request(method, path, headers=good)
            assert resp.status_code != 401, (method, path)

        for path in ("/api/status", "/api/logs", "/api/datasets", "/api/jobs", "/api/datasets/demo"):
            resp = client.get(path, headers=good)
            assert resp.status_code == 200, path
        resp = client.post("/api/jobs", json={"dataset_id": "demo", "max_steps": 3}, headers=good)
        assert resp.status_code == 201
        assert client.post("/api/jobs", json={"dataset_id": "demo"}).status_code == 401
        assert len(client.get("/api/jobs", headers=good).json()) == 1  # the refused POST queued nothing

        assert client.get("/healthz").status_code == 200  # open for load balancers
        assert client.get("/dashboard-info").json()["auth_required"] is True
    app.state.studio.close()


# ------------------------------------------------------------------ with the UI mounted


def test_ui_smoke(ui_client: TestClient):
    root = ui_client.get("/")
    assert root.status_code == 200
    assert root.headers["content-type"].startswith("text/html")
    assert "gradio" in root.text.lower()

    dash = ui_client.get("/dashboard")  # follows the redirect to the UI
    assert dash.status_code == 200 and "gradio" in dash.text.lower()
    assert str(dash.url).rstrip("/").endswith("testserver")

    # Registered before the mount, so not shadowed by the UI at "/".
    status = ui_client.get("/api/status")
    assert status.status_code == 200 and STATUS_KEYS <= set(status.json())
    assert ui_client.get("/api/logs").json()["logs"] == []
    assert ui_client.get("/healthz").json()["status"] == "ok"
    assert ui_client.get("/api/datasets/demo").status_code == 200
    assert ui_client.get("/api/nope").status_code == 404


def test_auth_is_checked_before_size_and_body(make_settings):
    """Without the token a caller gets 401, never a hint about limits or validation."""
    from fastapi.testclient import TestClient

    from finetune.server import create_app

    app = create_app(make_settings(api_token="s3cret", max_upload_mb=0.001), with_ui=False)
    with TestClient(app) as c:
        big = c.post("/api/datasets", files={"file": ("a.csv", b"text\n" + b"x" * 50_000)})
        assert big.status_code == 401
        bad = c.post("/api/jobs", content=b"{not json", headers={"content-type": "application/json"})
        assert bad.status_code == 401
        ok = c.post("/api/datasets", files={"file": ("a.csv", b"text\n" + b"x" * 50_000)},
                    headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 413
