"""Security defaults: headers on every answer, HSTS only over HTTPS and only when asked,
CORS only for configured origins, /docs and /openapi.json behind DOCS_ENABLED."""

from __future__ import annotations

import re
from collections.abc import Callable

import httpx
import pytest
from fastapi.responses import JSONResponse

from app.main import create_app
from app.settings import Settings
from tests.helpers import app_client, asgi_client

SECURITY_HEADERS = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "content-security-policy": "frame-ancestors 'none'",
    "referrer-policy": "no-referrer",
}


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("GET", "/health", None, 200),
        ("GET", "/api/v1/products/999999999", None, 404),
        ("GET", "/api/v1/products?limit=0", None, 422),
        ("PUT", "/api/v1/products", None, 405),
        ("POST", "/api/v1/products", "x" * 2_000_000, 413),
    ],
)
async def test_every_answer_carries_the_security_headers(
    client: httpx.AsyncClient, method: str, path: str, body: str | None, status: int
) -> None:
    response = await client.request(method, path, content=body)
    assert response.status_code == status
    for name, value in SECURITY_HEADERS.items():
        assert response.headers[name] == value, name
    assert response.headers["cache-control"] == "no-store"
    assert "strict-transport-security" not in response.headers
    assert "server" not in response.headers


async def test_a_route_keeps_its_own_cache_control(make_settings: Callable[..., Settings]) -> None:
    app = create_app(make_settings())

    async def cacheable() -> JSONResponse:
        return JSONResponse({}, headers={"Cache-Control": "public, max-age=60"})

    app.add_api_route("/cacheable-for-test", cacheable)
    async with asgi_client(app) as client:
        response = await client.get("/cacheable-for-test")
    assert response.headers["cache-control"] == "public, max-age=60"


async def test_hsts_only_over_https_and_only_when_configured(
    make_settings: Callable[..., Settings],
) -> None:
    async with app_client(make_settings(HSTS_MAX_AGE_SECONDS=31_536_000)) as client:
        plain = await client.get("/health")
        tls = await client.get("https://testserver/health")
    assert "strict-transport-security" not in plain.headers
    assert tls.headers["strict-transport-security"] == "max-age=31536000; includeSubDomains"
    async with app_client(make_settings()) as client:
        tls_without_setting = await client.get("https://testserver/health")
    assert "strict-transport-security" not in tls_without_setting.headers


async def test_no_cors_headers_unless_origins_are_configured(client: httpx.AsyncClient) -> None:
    response = await client.get("/health", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in response.headers
    preflight = await client.options(
        "/api/v1/orders",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert "access-control-allow-origin" not in preflight.headers


async def test_cors_allows_configured_origins_only(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(CORS_ALLOW_ORIGINS="https://shop.example", CORS_ALLOW_CREDENTIALS=True)
    async with app_client(settings) as client:
        allowed = await client.options(
            "/api/v1/orders",
            headers={
                "Origin": "https://shop.example",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type, idempotency-key",
            },
        )
        refused = await client.options(
            "/api/v1/orders",
            headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
        )
        simple = await client.get("/health", headers={"Origin": "https://shop.example"})
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == "https://shop.example"
    assert allowed.headers["access-control-allow-credentials"] == "true"
    assert refused.status_code == 400
    assert "access-control-allow-origin" not in refused.headers
    assert simple.headers["access-control-allow-origin"] == "https://shop.example"
    assert simple.headers["x-content-type-options"] == "nosniff"


async def test_docs_and_schema_can_be_switched_off(make_settings: Callable[..., Settings]) -> None:
    async with app_client(make_settings(DOCS_ENABLED=False)) as client:
        for path in ("/docs", "/redoc", "/openapi.json", "/docs-assets/swagger-ui.css"):
            response = await client.get(path)
            assert response.status_code == 404, path
            assert response.headers["content-type"] == "application/problem+json"
        assert (await client.get("/health")).status_code == 200
    async with app_client(make_settings()) as client:
        assert (await client.get("/openapi.json")).status_code == 200
        assert (await client.get("/docs")).status_code == 200


async def test_the_docs_pages_load_every_asset_from_the_api_itself(
    client: httpx.AsyncClient,
) -> None:
    """/docs and /redoc work offline: each script, stylesheet and icon they reference is
    a path of ours that answers 200, and nothing points at another host (a CDN)."""
    for page in ("/docs", "/redoc"):
        html = (await client.get(page)).text
        assets = re.findall(r'(?:src|href)="([^"]+)"', html)
        assert len(assets) >= 2, html
        for asset in assets:
            assert asset.startswith("/docs-assets/"), f"{page} loads {asset}"
            response = await client.get(asset)
            assert response.status_code == 200, asset
            assert int(response.headers["content-length"]) > 1000, asset
        assert "https://" not in html, f"{page} names another host"


async def test_a_trailing_slash_is_not_redirected_to_a_host_the_client_chose(
    client: httpx.AsyncClient,
) -> None:
    """`/api/v1/products/` with `Host: evil.example` -> a 404 problem, no Location
    (Starlette's slash redirect would have sent the client to http://evil.example/...)."""
    response = await client.get("/api/v1/products/", headers={"Host": "evil.example"})
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    assert "location" not in response.headers
