"""Who a client is: the rate limiter's identity and the owner of an `Idempotency-Key`.

A client is its verified API key, else its address:

- `key:<first 32 hex of sha256(key)>` when the request carries RATE_LIMIT_KEY_HEADER
  (default `X-API-Key`) with a key whose SHA-256 is one of RATE_LIMIT_API_KEY_HASHES,
  the keys this service issued. Any other key is ignored: a client that could name
  itself would get a new quota (and a new idempotency scope) per made-up key
  (issue 18: rotating keys got 150 of 150 requests through a quota of 100).
- `ip:<address>` otherwise: `scope["client"]`, which Uvicorn rewrites from
  X-Forwarded-For only when the peer is one of FORWARDED_ALLOW_IPS. IPv6 clients are
  grouped by /64: one host usually gets a whole /64 and could rotate through it.

The key itself is never stored or logged, only its hash. Issue a key and print the hash
to configure: `python -m app.client_identity` (docs/rate-limiting.md).
"""

from __future__ import annotations

import hashlib
import ipaddress
import secrets
import sys

from starlette.types import Scope

from app.settings import Settings

# The longest identity: "ip:" and an IPv6 /64 network, or "key:" and 32 hex digits;
# anything else a scope could hold (a non-address host) is hashed down to fit.
MAX_IDENTITY_LENGTH = 64


class ClientIdentifier:
    """`identify(scope)` with the settings read once (the header name, the key hashes)."""

    def __init__(self, settings: Settings) -> None:
        header = settings.RATE_LIMIT_KEY_HEADER.lower().encode("latin-1")
        self.key_header = header or None
        self.key_hashes = settings.rate_limit_api_key_hashes

    def identify(self, scope: Scope) -> str:
        return client_identity(scope, self.key_header, self.key_hashes)


def client_identity(scope: Scope, key_header: bytes | None, key_hashes: frozenset[str]) -> str:
    """`key:<hash prefix>` for a verified key in `key_header`, else `ip:<address>`."""
    if key_header is not None and key_hashes:
        for name, value in scope["headers"]:
            if name == key_header and value:
                digest = key_hash(value)
                if digest in key_hashes:
                    return "key:" + digest[:32]
                break  # an unknown key: the client is its address, as without one
    return address_identity(scope)


def address_identity(scope: Scope) -> str:
    client = scope.get("client")
    host = client[0] if client else "unknown"
    if ":" in host:
        try:
            address = ipaddress.IPv6Address(host)
        except ValueError:
            return _bounded("ip:" + host)
        if address.ipv4_mapped is not None:
            return f"ip:{address.ipv4_mapped}"
        return f"ip:{ipaddress.IPv6Network((address, 64), strict=False)}"
    return _bounded("ip:" + host)


def key_hash(key: bytes) -> str:
    """What RATE_LIMIT_API_KEY_HASHES lists for `key`: its SHA-256, hex."""
    return hashlib.sha256(key).hexdigest()


def _bounded(identity: str) -> str:
    if len(identity) <= MAX_IDENTITY_LENGTH:
        return identity
    return "ip:sha256:" + hashlib.sha256(identity.encode()).hexdigest()[:32]


def issue_key() -> tuple[str, str]:
    """A new API key (32 random bytes, URL-safe) and the hash to configure for it."""
    key = "pk_" + secrets.token_urlsafe(32)
    return key, key_hash(key.encode())


def main(argv: list[str]) -> int:
    """`python -m app.client_identity [N]`: issue N keys (1), one `KEY HASH` line each.
    Give each key to its client; append the hashes to RATE_LIMIT_API_KEY_HASHES."""
    try:
        count = int(argv[0]) if argv else 1
    except ValueError:
        count = 0
    if not 1 <= count <= 1000:
        print("usage: python -m app.client_identity [N: keys to issue, 1-1000]", file=sys.stderr)
        return 2
    for _ in range(count):
        print(*issue_key())
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
