"""TelemetryMiddleware: request id, metrics, the HTTP server span and the access log.

One pure ASGI middleware rather than four: one wrapper around `send`, one pass over
the request headers, one clock read at each end. It is the outermost entry of
`build_middleware`, so it times and logs every answer, including the 429/413/503 that
inner middleware produce.

Per request:

1. request id: the incoming `X-Request-ID` if it is 1-128 characters of
   `[A-Za-z0-9._:-]`, else a new random one; echoed in the response header and put on
   every log line of the request;
2. tracing (when on, and not for /health, /ready, /metrics): a SERVER span continuing
   the incoming W3C `traceparent` of a TRACE_CONTEXT_TRUSTED_CALLERS caller (anyone
   else's starts a new trace, linked to the claimed one), current while the app runs so
   SQL and Redis spans are its children; its ids go back in a `traceresponse` header
   (W3C Trace Context Level 2) and into the logs;
3. metrics: `http_server_active_requests` while it runs, then
   `http_server_request_duration_seconds` labelled with the route *template*;
4. one JSON access line (successful probes and scrapes excepted), written straight to
   the log stream when the logging is the service's own (`AccessLog`);
5. the security headers (app/security.py), when given: in the same wrapper around
   `send` as the request id, rather than in a middleware of their own.

Failsafe: telemetry code never fails a request; its errors are logged at a bounded
rate. Label children are created once and cached, so the hot path is dictionary
lookups and a few memory-mapped writes.
"""

from __future__ import annotations

import logging
import re
import secrets
from contextvars import Token
from time import perf_counter
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.security import SecurityHeaders
from app.telemetry.logging import REQUEST_ID, AccessLog, ThrottledLog
from app.telemetry.metrics import HTTP_ACTIVE_REQUESTS, HTTP_REQUEST_DURATION
from app.telemetry.otel_internals import suppressed
from app.telemetry.tracing import EXCLUDED_PATHS, Tracing

logger = logging.getLogger(__name__)
access_log = logging.getLogger("app.access")

REQUEST_ID_HEADER = b"x-request-id"
TRACE_RESPONSE_HEADER = b"traceresponse"
_VALID_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:-]{1,128}")
# The http_route label of requests no route matched (404s, slash redirects): one
# series for all of them, however many paths scanners try.
UNMATCHED_ROUTE = "unmatched"
# Methods outside this set are labelled _OTHER (OpenTelemetry's rule), so a client
# sending made-up methods cannot create series. OTEL_INSTRUMENTATION_HTTP_KNOWN_METHODS
# (comma-separated, case-sensitive) replaces it, as the conventions require.
KNOWN_METHODS = frozenset(
    {"CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "TRACE"}
)
_ROOT_CONTEXT = Context()  # a server span never inherits ambient context
_NO_TRACE_HEADERS: frozenset[bytes] = frozenset()


class _Exchange:
    """What one request carries from its start to its end."""

    __slots__ = (
        "context_token",
        "error",
        "ids",
        "method",
        "request_id",
        "request_id_token",
        "span",
        "status",
        "user_agent",
    )

    def __init__(self, method: str) -> None:
        self.method = method
        self.request_id = ""
        self.request_id_token: Token[str | None] | None = None
        self.span: trace.Span | None = None
        self.context_token: Token[Context] | None = None
        # The span's trace id and span id in hex, and its trace flags: formatted once,
        # for the traceresponse header and the access line.
        self.ids: tuple[str, str, int] | None = None
        self.status = 0
        self.error: BaseException | None = None
        self.user_agent: str | None = None


class TelemetryMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        metrics_enabled: bool = True,
        access_log_enabled: bool = True,
        known_methods: frozenset[str] = KNOWN_METHODS,
        security_headers: SecurityHeaders | None = None,
    ) -> None:
        self.app = app
        self._security_headers = security_headers
        self._access_log = AccessLog(access_log)
        self._metrics_enabled = metrics_enabled
        self._access_log_enabled = access_log_enabled
        self._known_methods = known_methods
        self._durations: dict[tuple[str, str, int, str, str, str], Any] = {}
        self._active: dict[tuple[str, str], Any] = {}
        self._endpoint_routes: dict[Any, str] = {}
        self._route_patterns: list[tuple[re.Pattern[str], str, frozenset[str]]] | None = None
        self._errors = ThrottledLog(logger, interval=60.0)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = perf_counter()
        exchange = self._begin(scope)

        async def send_with_ids(message: Message) -> None:
            if message["type"] == "http.response.start":
                exchange.status = message["status"]
                message = self._with_response_headers(message, scope, exchange)
            await send(message)

        try:
            await self.app(scope, receive, send_with_ids)
        except BaseException as exc:
            exchange.error = exc
            raise
        finally:
            self._finish(scope, exchange, perf_counter() - started)

    # --- request start ---------------------------------------------------------------

    def _begin(self, scope: Scope) -> _Exchange:
        method: str = scope["method"]
        exchange = _Exchange(method if method in self._known_methods else "_OTHER")
        try:
            state = scope.get("state")
            tracing: Tracing | None = state.get("tracing") if state else None
            carrier = self._read_headers(scope, exchange, tracing)
            exchange.request_id_token = REQUEST_ID.set(exchange.request_id)
            if self._metrics_enabled:
                self._active_requests(exchange.method, scope).inc()
            if tracing is not None:
                self._start_span(scope, exchange, tracing, carrier)
        except Exception as exc:
            self._errors.warning("telemetry failed at request start: %r", exc)
        if not exchange.request_id:
            exchange.request_id = secrets.token_hex(16)
        return exchange

    def _read_headers(
        self, scope: Scope, exchange: _Exchange, tracing: Tracing | None
    ) -> dict[str, str] | None:
        """One pass: the request id, the user agent and the trace-context headers."""
        trace_headers = tracing.header_names if tracing is not None else _NO_TRACE_HEADERS
        carrier: dict[str, str] | None = None
        for name, value in scope["headers"]:
            if name == REQUEST_ID_HEADER:
                if _VALID_REQUEST_ID.fullmatch(value):
                    exchange.request_id = value.decode("ascii")
            elif name == b"user-agent":
                exchange.user_agent = value.decode("latin-1")
            elif name in trace_headers:
                if carrier is None:
                    carrier = {}
                carrier[name.decode("latin-1")] = value.decode("latin-1")
        if not exchange.request_id:
            exchange.request_id = secrets.token_hex(16)
        return carrier

    def _start_span(
        self, scope: Scope, exchange: _Exchange, tracing: Tracing, carrier: dict[str, str] | None
    ) -> None:
        if scope["path"] in EXCLUDED_PATHS:
            # No span, and no orphan SQL/Redis spans from /ready's dependency pings.
            exchange.context_token = otel_context.attach(suppressed(_ROOT_CONTEXT))
            return
        client = scope.get("client")
        method = exchange.method
        span, context = tracing.start_server_span(
            "HTTP" if method == "_OTHER" else method, carrier, client[0] if client else None
        )
        exchange.span = span
        exchange.context_token = otel_context.attach(context)
        # Attributes only for spans that are kept (most are not, at the default ratio);
        # our samplers decide on the trace id alone, so they need none up front.
        if span.is_recording():
            span.set_attributes(_request_attributes(scope, method, exchange.user_agent))

    def _active_requests(self, method: str, scope: Scope) -> Any:
        key = (method, scope.get("scheme", "http"))
        child = self._active.get(key)
        if child is None:
            child = self._active[key] = HTTP_ACTIVE_REQUESTS.labels(*key)
        return child

    # --- response start --------------------------------------------------------------

    def _with_response_headers(
        self, message: Message, scope: Scope, exchange: _Exchange
    ) -> Message:
        # A new list: the response object may reuse its own.
        headers = list(message.get("headers", ()))
        if self._security_headers is not None:
            self._security_headers.add_missing(headers, scope.get("scheme"))
        try:
            headers.append((REQUEST_ID_HEADER, exchange.request_id.encode()))
            if (ids := _span_ids(exchange)) is not None:
                trace_id, span_id, flags = ids
                traceresponse = f"00-{trace_id}-{span_id}-{flags:02x}"
                headers.append((TRACE_RESPONSE_HEADER, traceresponse.encode()))
        except Exception as exc:
            self._errors.warning("telemetry failed at response start: %r", exc)
        return {**message, "headers": headers}

    # --- request end -----------------------------------------------------------------

    def _finish(self, scope: Scope, exchange: _Exchange, duration: float) -> None:
        try:
            # No response started: the server error handler outside us answers 500.
            status = exchange.status or 500
            route = self._route(scope)
            if self._metrics_enabled:
                self._active_requests(exchange.method, scope).dec()
                self._duration(exchange, scope, route, status).observe(duration)
            if exchange.span is not None:
                _end_span(exchange.span, exchange.method, route, status, exchange.error)
            if (
                self._access_log_enabled
                and access_log.isEnabledFor(logging.INFO)
                and (status >= 400 or scope["path"] not in EXCLUDED_PATHS)
            ):
                self._log_access(scope, exchange, route, status, duration)
        except Exception as exc:
            self._errors.warning("telemetry failed at request end: %r", exc)
        finally:
            # After an unhandled exception the request id and trace context stay set:
            # the 500 handler and Uvicorn's traceback log run after us, in this same
            # task (one per request), and their lines must carry them too.
            if exchange.error is None:
                if exchange.context_token is not None:
                    otel_context.detach(exchange.context_token)
                if exchange.request_id_token is not None:
                    REQUEST_ID.reset(exchange.request_id_token)

    def _duration(self, exchange: _Exchange, scope: Scope, route: str, status: int) -> Any:
        key = (
            exchange.method,
            "" if route == UNMATCHED_ROUTE else route,
            status,
            scope.get("scheme", "http"),
            scope.get("http_version", "1.1"),
            _error_type(status, exchange.error),
        )
        child = self._durations.get(key)
        if child is None:
            method, template, _, scheme, version, error = key
            labels = (method, template, str(status), scheme, version, error)
            child = self._durations[key] = HTTP_REQUEST_DURATION.labels(*labels)
        return child

    def _route(self, scope: Scope) -> str:
        """The template of the route that handled the request (set in the scope by the
        router), or UNMATCHED_ROUTE; never the raw path."""
        template = getattr(scope.get("route"), "path_format", None)
        if template:
            return str(template)
        # Plain Starlette routes (/openapi.json) set only the endpoint; a mount (the docs'
        # assets) sets its app as the endpoint: `/docs-assets/{path}`.
        endpoint = scope.get("endpoint")
        if endpoint is None:
            return self._route_not_reached(scope)
        template = self._endpoint_routes.get(endpoint)
        if template is None:
            routes = getattr(scope.get("app"), "routes", ())
            template = next(
                (
                    r.path_format
                    for r in routes
                    if endpoint in (getattr(r, "endpoint", None), getattr(r, "app", None))
                ),
                UNMATCHED_ROUTE,
            )
            self._endpoint_routes[endpoint] = template  # bounded by the number of routes
        return template

    def _route_not_reached(self, scope: Scope) -> str:
        """The template of the route the router would have chosen, for a request
        answered before it ran (a 429 or fail-closed 503 from the rate limiter, a 413
        from the body limit): a refused request still counts under its route, so a
        route's request count and 5xx ratio include what middleware refused. No match
        (404s, a slash redirect): UNMATCHED_ROUTE."""
        if self._route_patterns is None:
            self._route_patterns = _route_patterns(scope.get("app"))
        path, method = scope["path"], scope["method"]
        for pattern, template, methods in self._route_patterns:
            if method in methods and pattern.match(path):
                return template
        return UNMATCHED_ROUTE

    def _log_access(
        self, scope: Scope, exchange: _Exchange, route: str, status: int, duration: float
    ) -> None:
        trace_id, span_id, flags = _span_ids(exchange) or (None, None, 0)
        client = scope.get("client")
        fields = {
            "method": scope["method"],
            "route": route,
            "path": scope["path"],
            "status": status,
            "duration_ms": round(duration * 1000, 3),
            "client": client[0] if client else None,
            "request_id": exchange.request_id,
            "trace_id": trace_id,
            "span_id": span_id,
            "trace_sampled": bool(flags & trace.TraceFlags.SAMPLED),
        }
        self._access_log.write("%s %s %d", (scope["method"], scope["path"], status), fields)


def _route_patterns(app: Any) -> list[tuple[re.Pattern[str], str, frozenset[str]]]:
    """(regex, template, methods) of every operation in the app's OpenAPI document: the
    public list of its routes, with the prefixes of included routers applied."""
    openapi = getattr(app, "openapi", None)
    if openapi is None:
        return []
    patterns = []
    for template, operations in openapi().get("paths", {}).items():
        regex, _, _ = compile_path(template)
        patterns.append((regex, template, frozenset(method.upper() for method in operations)))
    return patterns


def _request_attributes(scope: Scope, method: str, user_agent: str | None) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "http.request.method": method,
        "url.path": scope["path"],
        "url.scheme": scope.get("scheme", "http"),
        "network.protocol.version": scope.get("http_version", "1.1"),
    }
    if method == "_OTHER":
        attributes["http.request.method_original"] = scope["method"]
    if query := scope.get("query_string"):
        attributes["url.query"] = redacted_query(query.decode("latin-1"))
    host = next((value for name, value in scope["headers"] if name == b"host"), None)
    attributes.update(server_address(host.decode("latin-1") if host else None, scope))
    if client := scope.get("client"):
        attributes["client.address"] = client[0]
    if user_agent:
        attributes["user_agent.original"] = user_agent
    return attributes


# url.query keeps the values of these parameters only, the API's own paging ones: any
# other value is REDACTED. The conventions ask to redact signed URLs' credentials
# (AWSAccessKeyId, Signature, sig, X-Goog-Signature); we go further, because a client
# may put a token or a password in any parameter, and no secret may reach a span.
KEPT_QUERY_PARAMETERS = frozenset({"limit", "cursor"})


def redacted_query(query: str) -> str:
    """`query` with every value but those of KEPT_QUERY_PARAMETERS as REDACTED."""
    parts = []
    for part in query.split("&"):
        name, equals, _ = part.partition("=")
        parts.append(part if not equals or name in KEPT_QUERY_PARAMETERS else f"{name}=REDACTED")
    return "&".join(parts)


def server_address(host: str | None, scope: Scope) -> dict[str, Any]:
    """server.address and server.port: from the Host header the client sent, else the
    socket the request came in on."""
    default_port = 443 if scope.get("scheme") == "https" else 80
    if host:
        name, port = host, ""
        if host.startswith("["):  # [IPv6]:port
            name, _, rest = host[1:].partition("]")
            port = rest.removeprefix(":")
        elif host.count(":") == 1:
            name, _, port = host.partition(":")
        number = int(port) if port.isdigit() and len(port) <= 5 else default_port
        return {"server.address": name, "server.port": number}
    server = scope.get("server")
    if server and server[1] is not None:
        return {"server.address": server[0], "server.port": server[1]}
    return {}


def _error_type(status: int, error: BaseException | None) -> str:
    """OpenTelemetry's error.type: the exception's class, or the status code of a 5xx;
    empty for a request that did not fail."""
    if error is not None:
        return type(error).__qualname__
    return str(status) if status >= 500 else ""


def _end_span(
    span: trace.Span, method: str, route: str, status: int, error: BaseException | None
) -> None:
    if span.is_recording():
        if route != UNMATCHED_ROUTE:
            span.update_name(f"{'HTTP' if method == '_OTHER' else method} {route}")
            span.set_attribute("http.route", route)
        span.set_attribute("http.response.status_code", status)
        if status >= 500 or error is not None:
            span.set_attribute("error.type", _error_type(status, error))
            span.set_status(trace.StatusCode.ERROR)
    span.end()


def _span_ids(exchange: _Exchange) -> tuple[str, str, int] | None:
    """The request's trace and span ids in hex and its trace flags; None without a
    valid span."""
    if exchange.ids is None and exchange.span is not None:
        span_context = exchange.span.get_span_context()
        if span_context.is_valid:
            exchange.ids = (
                f"{span_context.trace_id:032x}",
                f"{span_context.span_id:016x}",
                span_context.trace_flags,
            )
    return exchange.ids
