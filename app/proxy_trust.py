"""Whose X-Forwarded-For is believed (FORWARDED_ALLOW_IPS), and the warning at start when
the configuration leaves every client behind a proxy with one address.

Uvicorn replaces a connection's peer address with the X-Forwarded-For client only when
the peer is in FORWARDED_ALLOW_IPS (addresses or CIDR networks, or `*` for any peer).
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
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

ANY_PEER = "*"
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
