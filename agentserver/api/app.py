"""The ASGI application: one FastAPI app per process, wired to a Runtime."""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

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
        title="Agent Server",
        version=__version__,
        description="Serve LangGraph graphs over HTTP, wire-compatible with the LangGraph SDK.",
        lifespan=lifespan,
        root_path=runtime.settings.mount_prefix,
        docs_url="/docs",
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
    return app
