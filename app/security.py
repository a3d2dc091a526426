"""Security headers on every answer, and CORS from settings (docs/reliability.md).

What a JSON API needs, following the OWASP REST Security Cheat Sheet:

- `X-Content-Type-Options: nosniff`: a browser never runs a JSON body as a script or
  renders it as HTML, whatever it contains.
- `Cache-Control: no-store` unless the route set its own: an error, an order or a
  stock level must not be kept by a shared cache or a browser. A route that wants
  caching (a public catalog behind a CDN, say) sets Cache-Control itself.
- `X-Frame-Options: DENY` and `Content-Security-Policy: frame-ancestors 'none'`: no
  page of ours (the /docs HTML included) can be framed for clickjacking. No stricter
  CSP: the /docs and /redoc pages run an inline script that starts Swagger UI or ReDoc
  (their assets are our own, app/docs_ui.py).
- `Referrer-Policy: no-referrer`: no URL of ours leaks to another site a page links to.
- `Strict-Transport-Security` only when HSTS_MAX_AGE_SECONDS > 0 and the request came
  over HTTPS (directly or, per X-Forwarded-Proto, through a trusted proxy). Browsers
  ignore it over plain HTTP, and a wrong one locks users out of a host for max-age,
  so it is opt-in for whoever owns the TLS set-up.
"""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.settings import Settings

SECURITY_HEADERS = (
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Content-Security-Policy", "frame-ancestors 'none'"),
    ("Referrer-Policy", "no-referrer"),
)


class SecurityHeadersMiddleware:
    def __init__(self, app: ASGIApp, *, hsts_max_age: int = 0) -> None:
        self.app = app
        self.hsts = f"max-age={hsts_max_age}; includeSubDomains" if hsts_max_age else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        over_https = scope.get("scheme") == "https"

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS:
                    headers.setdefault(name, value)
                headers.setdefault("Cache-Control", "no-store")
                if self.hsts and over_https:
                    headers.setdefault("Strict-Transport-Security", self.hsts)
            await send(message)

        await self.app(scope, receive, send_with_headers)


def cors_middleware(settings: Settings) -> Middleware:
    """Starlette's CORSMiddleware for CORS_ALLOW_ORIGINS (the settings refuse `*` with
    credentials). Preflights are answered here, before rate limiting and the routes."""
    return Middleware(
        CORSMiddleware,
        allow_origins=settings.CORS_ALLOW_ORIGINS,
        allow_credentials=settings.CORS_ALLOW_CREDENTIALS,
        allow_methods=["GET", "POST", "PATCH"],
        allow_headers=["Content-Type", "Idempotency-Key", "Authorization"],
        expose_headers=["Location", "Retry-After", "X-Cache", "Idempotent-Replayed"],
        max_age=600,
    )
