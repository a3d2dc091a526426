"""The two apps the middleware-tax benchmark serves, each with the project's
gunicorn.conf.py (same worker class, workers, keep-alive, logging):

    gunicorn parity.harness.bench_apps:full -c gunicorn.conf.py    # the production app
    gunicorn parity.harness.bench_apps:bare -c gunicorn.conf.py    # FastAPI and nothing else

`full` is `app.main.create_app()` at its defaults (every middleware, the lifespan, the
error handlers) plus one trivial route; `bare` is a plain `FastAPI()` with the same
route. The route is neither `/health`, `/ready` nor `/metrics`, which the rate limiter
and tracing leave out: it pays for every production feature a real route pays for.
"""

from __future__ import annotations

from fastapi import FastAPI

from app.main import create_app

TRIVIAL_PATH = "/trivial"


async def trivial() -> dict[str, str]:
    """Does nothing, so the server's own cost is all there is to measure."""
    return {"status": "ok"}


def with_trivial_route(app: FastAPI) -> FastAPI:
    app.add_api_route(TRIVIAL_PATH, trivial, methods=["GET"])
    return app


full = with_trivial_route(create_app())
bare = with_trivial_route(FastAPI())
