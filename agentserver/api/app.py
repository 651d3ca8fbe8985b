"""The ASGI application: one FastAPI app per process, wired to a Runtime."""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from starlette.middleware.cors import CORSMiddleware
from starlette.staticfiles import StaticFiles

from agentserver import __version__
from agentserver.api import assistants, errors, fastpath, meta, runs, threads
from agentserver.runtime import Runtime


def create_app(runtime: Runtime, *, manage_runtime: bool = True) -> FastAPI:
    """Build the app. With `manage_runtime`, the app's lifespan starts and stops the runtime."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if manage_runtime:
            await runtime.start()
        try:
            yield
        finally:
            if manage_runtime:
                await runtime.stop()

    app = FastAPI(
        **_telemetry_kwargs(),
        title="Agent Server",
        version=__version__,
        description="Serve LangGraph graphs over HTTP, wire-compatible with the LangGraph SDK.",
        lifespan=lifespan,
        root_path=runtime.settings.mount_prefix,
        docs_url=None,  # served by `_install_docs`, with its assets from this server
        openapi_url="/openapi.json",
        redoc_url=None,
    )
    app.state.runtime = runtime
    fastpath.install(app)  # inside CORS: hot routes get the same headers
    app.add_middleware(
        CORSMiddleware,
        allow_origins=list(runtime.settings.cors_allow_origins),
        allow_methods=["*"],
        allow_headers=["*"],
        expose_headers=["Content-Location", "Location", "X-Pagination-Total", "X-Pagination-Next"],
    )
    errors.install(app)
    for module in (meta, assistants, threads, runs):
        app.include_router(module.router)
    _install_docs(app)
    return app


DOCS_ASSETS = "/docs/assets"


def _install_docs(app: FastAPI) -> None:
    """`/docs`: Swagger UI with its JS, CSS and icon served by this server (from the
    `fastapi-offline` package's static files), so the page works without internet access."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("fastapi_offline")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the fastapi-offline package is missing: pip install fastapi-offline")
    static = Path(next(iter(spec.submodule_search_locations))) / "static"
    app.mount(DOCS_ASSETS, StaticFiles(directory=static), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request):
        root = request.scope.get("root_path", "").rstrip("/")
        return get_swagger_ui_html(
            openapi_url=root + (app.openapi_url or "/openapi.json"),
            title=f"{app.title} - API docs",
            swagger_js_url=f"{root}{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{root}{DOCS_ASSETS}/favicon.png",
        )


def _telemetry_kwargs() -> dict:
    """FastAPI's native OpenTelemetry checks the global providers on every request; without an
    OTEL exporter configured that is pure overhead, so it is switched off."""
    import inspect
    import os

    if "telemetry" not in inspect.signature(FastAPI.__init__).parameters:
        return {}
    if any(k.startswith("OTEL_EXPORTER_OTLP") for k in os.environ):
        return {}
    return {"telemetry": {"tracing": False, "metrics": False, "logs": False}}
