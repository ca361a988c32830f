"""The FastAPI app: routes, auth, errors, metrics and the engine's lifetime.

`create_app(settings, db, engine=None)`: without an engine, the app builds one and
loads the model at startup (uvicorn accepts connections only after that), and stops it
at shutdown. With an engine passed in (tests, benchmarks), the caller owns it.
"""

from __future__ import annotations

import time
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse

from selftrain.config import Settings
from selftrain.serve.auth import KeyCache
from selftrain.serve.metrics import MetricsMiddleware, RequestMetrics
from selftrain.serve.problems import install_error_handlers
from selftrain.serve.schemas import Health
from selftrain.serve.writer import GroupWriter
from selftrain.store.db import Database

DESCRIPTION = """\
selftrain's agent as a service. Every answer is stored as an interaction (its id comes
back in the response id and the `X-Selftrain-Interaction` header) so it can be rated,
corrected and learned from.

Authenticate with `Authorization: Bearer <key>` (`selftrain keys create`). User keys
ask, read and rate their own interactions; admin keys may do everything. Errors are
`{"error": {"message", "type", "param", "code"}}`, as in the OpenAI API.
"""


def create_app(settings: Settings, db: Database, engine=None) -> FastAPI:
    from selftrain import dashboard
    from selftrain.serve import admin_api, native_api, openai_api

    owns_engine = engine is None
    if owns_engine:
        from selftrain.serve.engine import GenerationEngine

        engine = GenerationEngine(settings, db)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if owns_engine:
            from fastapi.concurrency import run_in_threadpool

            await run_in_threadpool(engine.start)
        app.state.writer.start()
        try:
            yield
        finally:
            app.state.writer.stop()
            if owns_engine:
                engine.stop()

    app = FastAPI(title="selftrain", version="0.1.0", description=DESCRIPTION, lifespan=lifespan)
    app.state.settings, app.state.db, app.state.engine = settings, db, engine
    app.state.keys = KeyCache(db, float(getattr(settings, "serve_key_cache_s", 10.0)))
    app.state.writer = GroupWriter(db)
    app.state.metrics = RequestMetrics()
    app.state.started = int(time.time())
    install_error_handlers(app)
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    app.include_router(openai_api.router)
    app.include_router(native_api.router)
    app.include_router(admin_api.router)
    app.include_router(dashboard.router)  # the web dashboard at /

    def openapi() -> dict:
        # Streamed chunks are documented by reference from the SSE responses; FastAPI
        # only lists models that routes return, so add that one by hand.
        if app.openapi_schema is None:
            from fastapi.openapi.utils import get_openapi

            from selftrain.serve.schemas import ChatCompletionChunk

            schema = get_openapi(title=app.title, version=app.version, description=app.description,
                                 routes=app.routes)
            chunk = ChatCompletionChunk.model_json_schema(ref_template="#/components/schemas/{model}",
                                                          mode="serialization")
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for name, definition in {**chunk.pop("$defs", {}), "ChatCompletionChunk": chunk}.items():
                components.setdefault(name, definition)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi

    @app.get("/healthz", response_model=Health, tags=["ops"], summary="Is the model loaded and serving?")
    def healthz(request: Request):
        stats = engine.stats()
        loaded = stats["version"] is not None
        return Health(status="ok" if loaded and not stats["load_error"] else "degraded",
                      model_version=None if stats["version"] in (None, "base") else stats["version"],
                      queue_depth=stats["queue_depth"], load_error=stats["load_error"])

    @app.get("/metrics", response_class=PlainTextResponse, tags=["ops"], summary="Prometheus metrics",
             responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}})
    def metrics(request: Request):
        return PlainTextResponse(app.state.metrics.render(engine.stats()),
                                 media_type="text/plain; version=0.0.4; charset=utf-8")

    return app
