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

from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware

from app.settings import Settings

SECURITY_HEADERS = (
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Content-Security-Policy", "frame-ancestors 'none'"),
    ("Referrer-Policy", "no-referrer"),
)


class SecurityHeaders:
    """The headers above, added to a response where the route did not set its own.

    TelemetryMiddleware applies them in its one wrapper around `send` (app/main.py), so
    a response is not unwrapped and re-listed once more for them."""

    def __init__(self, hsts_max_age: int = 0) -> None:
        plain = [*SECURITY_HEADERS, ("Cache-Control", "no-store")]
        self._plain = tuple((name.lower().encode(), value.encode()) for name, value in plain)
        hsts = f"max-age={hsts_max_age}; includeSubDomains".encode()
        self._https = (
            (*self._plain, (b"strict-transport-security", hsts)) if hsts_max_age else self._plain
        )

    def add_missing(self, headers: list[tuple[bytes, bytes]], scheme: str | None) -> None:
        """Append to `headers` (raw ASGI ones) each security header it lacks."""
        present = {name.lower() for name, _ in headers}
        defaults = self._https if scheme == "https" else self._plain
        headers.extend(header for header in defaults if header[0] not in present)


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
