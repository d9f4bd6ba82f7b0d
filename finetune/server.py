"""Build the FastAPI app: REST routes first, then the Gradio UI mounted at "/"."""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from finetune import __version__
from finetune.api import require_token
from finetune.api import router as api_router
from finetune.api_models import router as models_router
from finetune.errors import describe_errors
from finetune.service import Studio
from finetune.settings import Settings, get_settings

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None, with_ui: bool = True) -> FastAPI:
    settings = settings or get_settings()
    studio = Studio(settings)
    started = time.time()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        # Stop training cooperatively so the run is saved as cancelled, not torn.
        studio.close()

    app = FastAPI(
        title="Fine-tuning studio",
        version=__version__,
        description="Upload a dataset, fine-tune a causal LM (LoRA or full) and watch it live. "
        "The UI is at / (also /dashboard); these routes serve the same state to scripts.",
        lifespan=lifespan,
    )
    app.state.studio = studio

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        return JSONResponse(
            status_code=422,
            content={"detail": describe_errors(list(errors)), "errors": _jsonable(errors)},
        )

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        # A bug of ours, never a user's mistake: log it, keep the trace out of the reply.
        log.exception("unhandled error")
        return JSONResponse(status_code=500, content={"detail": "Internal error; the server log has the details."})

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(status_code=exc.status_code, content={"detail": exc.detail}, headers=getattr(exc, "headers", None))

    # A plain ASGI middleware, not @app.middleware("http"): BaseHTTPMiddleware
    # costs ~0.3 ms of CPU and an extra task on every request, a third of a poll.
    app.add_middleware(_Guard, settings=settings)

    app.include_router(api_router)
    app.include_router(models_router)  # playground, merge, push, reproduce

    @app.get("/healthz", tags=["meta"], summary="Liveness check")
    def healthz() -> dict[str, Any]:
        return {"status": "ok", "uptime_seconds": round(time.time() - started, 1)}

    @app.get("/dashboard-info", tags=["meta"], summary="Where the UI is, and what serves it")
    def dashboard_info(request: Request) -> dict[str, Any]:
        base = str(request.base_url).rstrip("/")
        return {
            "dashboard_url": base + "/dashboard",
            "ui_url": base + "/",
            "api_url": base + "/api",
            "docs_url": base + "/docs",
            "version": __version__,
            "auth_required": settings.api_token is not None,
        }

    @app.get("/dashboard", tags=["meta"], summary="The UI (redirects to /)", include_in_schema=True)
    def dashboard() -> RedirectResponse:
        return RedirectResponse("/", status_code=307)

    if with_ui:
        import gradio as gr

        from finetune.ui import CSS, build_ui

        auth = None
        if settings.api_token is not None:
            import hmac

            secret = settings.api_token.get_secret_value().encode()

            def auth(_username: str, password: str) -> bool:
                return hmac.compare_digest(password.encode(), secret)

        gr.mount_gradio_app(
            app,
            build_ui(studio),
            path="/",
            css=CSS,
            theme=gr.themes.Soft(),
            ssr_mode=False,
            max_file_size=f"{settings.max_upload_mb:g}mb",
            auth=auth,
            auth_message="Enter any user name and the studio's FINETUNE_API_TOKEN as the password." if auth else None,
            footer_links=["api"],
        )
    return app


class _Guard:
    """Bearer token on /api/*, then oversize uploads refused from their declared length.

    Authentication first: an unauthenticated caller learns nothing about size
    limits or body validation. Neither check reads the body.
    """

    def __init__(self, app: Any, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        path = request.url.path
        if path.startswith("/api/") or path == "/api":
            try:
                require_token(request)
            except HTTPException as exc:
                response = JSONResponse(status_code=exc.status_code, content={"detail": exc.detail}, headers=exc.headers)
                await response(scope, receive, send)
                return
        if request.method == "POST" and path.startswith("/api/datasets"):
            length = request.headers.get("content-length")
            if length and length.isdigit() and int(length) > self.settings.max_upload_bytes + 64 * 1024:
                response = JSONResponse(
                    status_code=413,
                    content={"detail": f"The upload is larger than the {self.settings.max_upload_mb:g} MB limit. "
                             "Upload a smaller file or raise FINETUNE_MAX_UPLOAD_MB."},
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _jsonable(errors: Any) -> Any:
    out = []
    for err in errors:
        item = {k: v for k, v in err.items() if k in ("loc", "msg", "type")}
        out.append(item)
    return out
