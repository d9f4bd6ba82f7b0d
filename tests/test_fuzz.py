"""Property-based fuzz of every API route from the OpenAPI schema: never a 5xx.

schemathesis generates valid and invalid requests (bodies, query strings,
path ids, uploads) for each operation. The app runs without a training
worker, so accepted jobs stay queued instead of training.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

schemathesis = pytest.importorskip("schemathesis")
from conftest import idle_app  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

from finetune.settings import Settings  # noqa: E402

# Built at import: schemathesis parametrizes from a schema object.
_HOME = Path(tempfile.mkdtemp(prefix="finetune-fuzz-")) / "home"
_APP = idle_app(Settings(home=_HOME, max_upload_mb=1))
schema = schemathesis.openapi.from_asgi("/openapi.json", _APP)


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_errors(case):
    response = case.call()
    assert response.status_code < 500, f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text[:300]}"
    if response.status_code >= 400:
        # Every refusal explains itself in a JSON detail.
        body = response.json()
        assert isinstance(body.get("detail"), str) and body["detail"], body
