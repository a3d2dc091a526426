"""Whose X-Forwarded-For is believed (FORWARDED_ALLOW_IPS), and the warning at start when
the configuration leaves every client behind a proxy with one address.

A connection's peer address is replaced with the X-Forwarded-For client only when the
peer is in FORWARDED_ALLOW_IPS (addresses or CIDR networks, or `*` for any peer).
The rate limiter and the access log use that address (docs/rate-limiting.md), so a
proxy that is not trusted turns all of its clients into one: one shared quota.

The warning, logged once by the Gunicorn master (gunicorn.conf.py's `when_ready`),
covers the two configurations where that happens by default:

- a TCP listener on a non-loopback address (0.0.0.0, ::, a routable address) while
  FORWARDED_ALLOW_IPS trusts loopback only: a proxy on another host (an ingress, a load
  balancer) is not believed. The native default (bind 127.0.0.1) is not warned about:
  only local clients and local proxies reach it, and loopback is trusted.
- a Unix socket listener, unless FORWARDED_ALLOW_IPS is `*`: its peers have no address,
  and Uvicorn believes X-Forwarded-For there only when every peer is trusted.

`ForwardedHeadersMiddleware` replaces Uvicorn's ProxyHeadersMiddleware (app/worker.py
turns Uvicorn's off): same trust rules, but an X-Forwarded-For entry becomes the client
only if it parses as an IP address, in its canonical text. Uvicorn copies the entry as
written, so `a1`, `01.2.3.4` and `1.2.3.4.` were three fresh rate-limit identities
(issue 18); here anything that is not an address leaves the proxy's own address.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass

from starlette.types import ASGIApp, Receive, Scope, Send

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

ANY_PEER = "*"
FORWARDED_SCHEMES = frozenset({"http", "https", "ws", "wss"})
DOCS = "docs/rate-limiting.md#who-is-a-client"


def trusted_networks(forwarded_allow_ips: str) -> tuple[Network, ...] | None:
    """`10.244.0.0/16, 127.0.0.1` -> networks (an address is a /32 or /128), split on
    commas as Gunicorn does; None for `*` (every peer). Raise ValueError on what Gunicorn
    would refuse at start (not an address, host bits set: `10.0.0.1/24`) and on `*` beside
    other entries, which Uvicorn reads as a host name that never matches instead of
    "every peer"."""
    values = [entry.strip() for entry in forwarded_allow_ips.split(",") if entry.strip()]
    if ANY_PEER in values:
        if values != [ANY_PEER]:
            raise ValueError(f"{ANY_PEER!r} trusts every peer and must stand alone")
        return None
    networks = []
    for value in values:
        try:
            networks.append(ipaddress.ip_network(value))
        except ValueError:
            try:
                meant = ipaddress.ip_network(value, strict=False)
            except ValueError:
                raise ValueError(f"{value!r} is not an IP address or CIDR network") from None
            raise ValueError(f"{value!r} has host bits set (the network is {meant})") from None
    return tuple(networks)


@dataclass(frozen=True, slots=True)
class Listener:
    """Where the server accepts connections: `host` is None for a Unix socket."""

    host: str | None
    label: str  # as the warning shows it: 0.0.0.0:8000, [::]:8000, unix:/run/api.sock

    @classmethod
    def of(cls, sock: socket.socket) -> Listener:
        if sock.family not in (socket.AF_INET, socket.AF_INET6):
            return cls(None, f"unix:{sock.getsockname()}")
        host, port = sock.getsockname()[:2]
        return cls(host, f"[{host}]:{port}" if ":" in host else f"{host}:{port}")


def shared_identity_warning(listeners: Iterable[Listener], forwarded_allow_ips: str) -> str | None:
    """What to log at start when clients behind a proxy would all share one address (the
    two cases of the module docstring), or None."""
    networks = trusted_networks(forwarded_allow_ips)
    if networks is None:
        return None
    shown = forwarded_allow_ips.strip() or "(empty)"
    trusts_a_remote_proxy = any(not network.is_loopback for network in networks)
    for listener in listeners:
        if listener.host is None:
            return (
                f"clients behind a proxy share one rate-limit identity: the server listens "
                f"on {listener.label}, whose peers have no address, and Uvicorn believes "
                f"X-Forwarded-For there only with FORWARDED_ALLOW_IPS=* (now {shown}). "
                f"Set FORWARDED_ALLOW_IPS=* if the proxy in front replaces "
                f"X-Forwarded-For with the client's address ({DOCS})"
            )
        if not ipaddress.ip_address(listener.host).is_loopback and not trusts_a_remote_proxy:
            return (
                f"clients behind a proxy share one rate-limit identity: the server listens "
                f"on {listener.label}, but FORWARDED_ALLOW_IPS={shown} trusts loopback only, "
                f"so the X-Forwarded-For of a proxy in front (an ingress, a load balancer) "
                f"is ignored and every client counts as the proxy's address. Set "
                f"FORWARDED_ALLOW_IPS to the proxy's addresses or CIDR range ({DOCS}); "
                f"with no proxy in front there is nothing to fix"
            )
    return None


def parse_address(text: str) -> Address | None:
    """An X-Forwarded-For entry (`1.2.3.4`, `1.2.3.4:5678`, `::1`, `[::1]:80`) -> its
    address, IPv4-mapped IPv6 as IPv4 and without an IPv6 zone; None for anything else
    (`a1`, `01.2.3.4`, `1.2.3.4.`, `unknown`, an obfuscated `_hidden` node)."""
    host = text.strip()
    if host.startswith("["):
        host, bracket, port = host[1:].partition("]")
        if not bracket or (port and not (port[:1] == ":" and port[1:].isdigit())):
            return None
    elif host.count(":") == 1:
        host, _, port = host.partition(":")
        if not port.isdigit():
            return None
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address.scope_id is not None:
            return ipaddress.IPv6Address(host.partition("%")[0])
    return address


def forwarded_client(x_forwarded_for: str, networks: tuple[Network, ...] | None) -> str | None:
    """The client a trusted peer's X-Forwarded-For names, in canonical text, or None
    when it names none that parses (the caller keeps the peer's address).

    Each proxy appends the address it received from, so the client is the right-most
    entry that is not itself a trusted proxy (Uvicorn's rule); with every peer trusted
    (`networks` None), the left-most. An entry that is not an address ends the walk:
    whoever wrote it is not a proxy we trust to have written the rest."""
    entries = x_forwarded_for.split(",")
    if networks is None:
        first = parse_address(entries[0])
        return None if first is None else str(first)
    address: Address | None = None
    for entry in reversed(entries):
        address = parse_address(entry)
        if address is None:
            return None
        if not within(address, networks):
            return str(address)
    # Every entry is a trusted proxy: the client was one of them.
    return str(address) if address is not None else None


def within(address: Address, networks: tuple[Network, ...]) -> bool:
    """Whether `address` is in one of `networks`."""
    return any(address in network for network in networks)


def is_trusted(host: str | None, networks: tuple[Network, ...] | None) -> bool:
    """Whether a peer or client address is in `networks` (None: every one is, even a
    Unix socket's peer, which has no address)."""
    if networks is None:
        return True
    address = parse_address(host) if host else None
    return address is not None and within(address, networks)


class ForwardedHeadersMiddleware:
    """Believes X-Forwarded-For and X-Forwarded-Proto from FORWARDED_ALLOW_IPS peers:
    `scope["client"]` becomes the forwarded client (canonical, or left as the peer when
    the header names no address) and `scope["scheme"]` the forwarded scheme."""

    def __init__(self, app: ASGIApp, forwarded_allow_ips: str) -> None:
        self.app = app
        self.networks = trusted_networks(forwarded_allow_ips)
        # Peers are few (the proxies in front): remember each one's verdict.
        self._trusted_peers: dict[str | None, bool] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            peer = scope.get("client")
            if self._trusts(peer[0] if peer else None):
                self._apply_forwarded_headers(scope)
        await self.app(scope, receive, send)

    def _trusts(self, peer: str | None) -> bool:
        trusted = self._trusted_peers.get(peer)
        if trusted is None:
            trusted = is_trusted(peer, self.networks)
            if len(self._trusted_peers) < 1024:  # a bound, should many peers connect
                self._trusted_peers[peer] = trusted
        return trusted

    def _apply_forwarded_headers(self, scope: Scope) -> None:
        forwarded_for: list[bytes] = []
        for name, value in scope["headers"]:
            if name == b"x-forwarded-for":
                forwarded_for.append(value)
            elif name == b"x-forwarded-proto":
                scheme = value.decode("latin-1").strip()
                if scheme in FORWARDED_SCHEMES:
                    websocket = scope["type"] == "websocket"
                    scope["scheme"] = scheme.replace("http", "ws") if websocket else scheme
        if forwarded_for:
            client = forwarded_client(b",".join(forwarded_for).decode("latin-1"), self.networks)
            if client is not None:
                scope["client"] = (client, 0)
