"""The warning at start when every client behind a proxy would share one address
(app/proxy_trust.py): when it is due, and that a real Gunicorn master logs it once,
and only then. And what a trusted proxy's X-Forwarded-For may name: an IP address, in
its canonical text, or nobody (the proxy's own address stays the client)."""

from __future__ import annotations

import re
import socket
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from app.proxy_trust import (
    Listener,
    forwarded_client,
    parse_address,
    shared_identity_warning,
    trusted_networks,
)
from parity.harness.repo import REPO_ROOT
from parity.harness.stack import GunicornProcess, NativeStack, start_gunicorn
from tests.test_deploy_lb import default, services

Start = Callable[..., GunicornProcess]
LOOPBACK_ONLY = "127.0.0.1,::1"  # the setting's default
COMPOSE_LB = "10.213.0.2"  # compose.yaml's lb address, trusted by its api

ANY_V4 = Listener("0.0.0.0", "0.0.0.0:8000")
ANY_V6 = Listener("::", "[::]:8000")
LOCAL = Listener("127.0.0.1", "127.0.0.1:8000")
UNIX = Listener(None, "unix:/run/parity/api.sock")


@pytest.mark.parametrize(
    ("listeners", "trusted", "warned"),
    [
        ([LOCAL], LOOPBACK_ONLY, None),  # `make run`: local clients, local proxies trusted
        ([ANY_V4], LOOPBACK_ONLY, "proxy"),  # the image or the k8s base, unchanged
        ([ANY_V6], "::1", "proxy"),
        ([ANY_V4], "", "proxy"),  # trusting nobody is no better
        ([Listener("10.1.2.3", "10.1.2.3:8000")], "127.0.0.0/8", "proxy"),
        ([LOCAL, ANY_V4], LOOPBACK_ONLY, "proxy"),
        ([ANY_V4], COMPOSE_LB, None),  # compose: the lb is believed
        ([ANY_V4], "127.0.0.1,10.244.0.0/16", None),  # k8s with the ingress range set
        ([ANY_V6], "fd00::/8", None),
        ([ANY_V4], "*", None),  # trusts everyone: not this problem
        ([UNIX], LOOPBACK_ONLY, "unix"),  # no peer address: only "*" is believed
        ([UNIX], COMPOSE_LB, "unix"),
        ([UNIX], "*", None),
    ],
)
def test_warned_exactly_when_clients_behind_a_proxy_share_one_address(
    listeners: list[Listener], trusted: str, warned: str | None
) -> None:
    warning = shared_identity_warning(listeners, trusted)
    if warned is None:
        assert warning is None
        return
    assert warning is not None
    assert "share one rate-limit identity" in warning
    assert "FORWARDED_ALLOW_IPS" in warning
    assert "docs/rate-limiting.md" in warning
    if warned == "unix":
        assert UNIX.label in warning
        assert "FORWARDED_ALLOW_IPS=*" in warning
    else:
        assert f"FORWARDED_ALLOW_IPS={trusted or '(empty)'} trusts loopback only" in warning
        assert "CIDR range" in warning


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("10.0.0.1/24", "has host bits set (the network is 10.0.0.0/24)"),
        ("10.0.0.0/33", "is not an IP address or CIDR network"),
        ("ingress.local", "is not an IP address or CIDR network"),
        # Uvicorn reads "*" in a list as a host name, not as "every peer".
        ("10.0.0.1,*", "'*' trusts every peer and must stand alone"),
    ],
)
def test_entries_gunicorn_or_uvicorn_would_misread_are_refused(value: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        trusted_networks(value)


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    """A directory with a short path: a Unix socket's path is limited to ~107 bytes,
    which pytest's tmp_path can exceed."""
    with tempfile.TemporaryDirectory(prefix="parity-") as directory:
        yield Path(directory)


def test_listeners_are_read_from_the_bound_sockets(socket_dir: Path) -> None:
    with socket.socket(socket.AF_INET) as tcp, socket.socket(socket.AF_UNIX) as unix:
        tcp.bind(("127.0.0.1", 0))
        unix.bind(str(socket_dir / "api.sock"))
        port = tcp.getsockname()[1]
        assert Listener.of(tcp) == Listener("127.0.0.1", f"127.0.0.1:{port}")
        assert Listener.of(unix) == Listener(None, f"unix:{socket_dir / 'api.sock'}")
    if socket.has_ipv6:
        with socket.socket(socket.AF_INET6) as tcp6:
            try:
                tcp6.bind(("::1", 0))
            except OSError:
                return  # no IPv6 loopback here
            assert Listener.of(tcp6) == Listener("::1", f"[::1]:{tcp6.getsockname()[1]}")


def test_compose_trusts_its_load_balancer_so_no_warning() -> None:
    """The image binds 0.0.0.0:8000; compose.yaml's api trusts the lb's address."""
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    (bind,) = re.findall(r"GUNICORN_BIND=(\S+)", dockerfile)
    trusted = default(services()["api"]["environment"]["FORWARDED_ALLOW_IPS"])
    host = bind.rsplit(":", 1)[0]
    assert shared_identity_warning([Listener(host, bind)], LOOPBACK_ONLY)  # the image alone
    assert shared_identity_warning([Listener(host, bind)], trusted) is None


def warnings_about_forwarding(server: GunicornProcess) -> list[dict[str, object]]:
    return [
        record
        for record in server.log_records()
        if record.get("level") == "WARNING" and "FORWARDED_ALLOW_IPS" in str(record["message"])
    ]


@pytest.mark.gunicorn
@pytest.mark.parametrize(
    ("host", "trusted", "warned"),
    [
        ("0.0.0.0", LOOPBACK_ONLY, True),  # the image's bind with the default
        ("0.0.0.0", COMPOSE_LB, False),  # compose: the lb is trusted
        ("127.0.0.1", LOOPBACK_ONLY, False),  # the native default
    ],
)
def test_gunicorn_master_warns_once_at_start(
    gunicorn: Start, host: str, trusted: str, warned: bool
) -> None:
    """1. Gunicorn with 2 workers, bound to `host`, FORWARDED_ALLOW_IPS=`trusted`
    2. it serves, then stops  -> one warning, from the master, naming the listener and the
    setting, when a proxy's clients would share one address; none otherwise."""
    server = gunicorn(workers=2, host=host, env={"FORWARDED_ALLOW_IPS": trusted})
    assert httpx.get(f"{server.base_url}/health").status_code == 200
    server.stop()
    found = warnings_about_forwarding(server)
    if not warned:
        assert found == []
        return
    (record,) = found
    assert record["pid"] == server.pid
    assert record["logger"] == "gunicorn.error"
    assert f"listens on 0.0.0.0:{server.port}" in str(record["message"])
    assert f"FORWARDED_ALLOW_IPS={trusted} trusts loopback only" in str(record["message"])


@pytest.mark.gunicorn
@pytest.mark.parametrize(
    ("trusted", "client"), [(LOOPBACK_ONLY, None), ("*", "198.18.0.7")], ids=["default", "any"]
)
def test_on_a_unix_socket_forwarded_for_is_believed_only_with_any_peer(
    native_stack: NativeStack, socket_dir: Path, trusted: str, client: str | None
) -> None:
    """The premise of the Unix-socket warning, on a real Gunicorn bound to a socket file:
    1. a request with X-Forwarded-For: 198.18.0.7 through the socket  -> with the default
    the app sees no client address at all (every client is one) and the master warned;
    with FORWARDED_ALLOW_IPS=* it sees 198.18.0.7 and nobody warned."""
    path = socket_dir / "api.sock"
    env = native_stack.app_env(GUNICORN_BIND=f"unix:{path}", FORWARDED_ALLOW_IPS=trusted)
    with start_gunicorn(env, workers=1) as server:
        server.wait_workers_booted(1)
        transport = httpx.HTTPTransport(uds=str(path))
        with httpx.Client(transport=transport, base_url="http://api") as http:
            response = http.get(
                "/api/v1/products?limit=1", headers={"X-Forwarded-For": "198.18.0.7"}
            )
        assert response.status_code == 200
        server.stop()
    (access,) = [r for r in server.log_records() if r.get("logger") == "app.access"]
    assert access["client"] == client
    found = warnings_about_forwarding(server)
    if client is None:
        (record,) = found
        assert record["pid"] == server.pid
        assert f"listens on unix:{path}" in str(record["message"])
    else:
        assert found == []


# --- X-Forwarded-For values are parsed as addresses -----------------------------------

# What issue 18 found counted as three fresh clients, each with a full quota.
NOT_ADDRESSES = ["a1", "01.2.3.4", "1.2.3.4.", "unknown", "_hidden", "1.2.3.4:x", "[::1", ""]


@pytest.mark.parametrize("value", NOT_ADDRESSES)
def test_an_entry_that_is_not_an_address_names_no_client(value: str) -> None:
    assert parse_address(value) is None
    assert forwarded_client(value, trusted_networks(LOOPBACK_ONLY)) is None
    assert forwarded_client(value, None) is None


@pytest.mark.parametrize(
    ("value", "client"),
    [
        ("198.51.100.7", "198.51.100.7"),
        (" 198.51.100.7:4711", "198.51.100.7"),
        ("2001:DB8:0:0::7", "2001:db8::7"),  # one text per address
        ("[2001:db8::7]:443", "2001:db8::7"),
        ("::ffff:198.51.100.7", "198.51.100.7"),  # the same client over IPv6 sockets
        ("fe80::7%eth0", "fe80::7"),
        ("198.51.100.7, 127.0.0.1", "198.51.100.7"),  # a second, trusted, proxy appended
        ("203.0.113.9, 198.51.100.7", "198.51.100.7"),  # the left one is the client's say
        ("198.51.100.7, a1", None),  # who wrote `a1` is not a proxy we trust
        ("127.0.0.1, ::1", "127.0.0.1"),  # every hop a trusted proxy: the first
    ],
)
def test_the_client_is_the_canonical_address_right_of_the_trusted_proxies(
    value: str, client: str | None
) -> None:
    assert forwarded_client(value, trusted_networks(LOOPBACK_ONLY)) == client


def test_with_every_peer_trusted_the_left_most_entry_is_the_client() -> None:
    assert forwarded_client("198.51.100.7, 203.0.113.9", None) == "198.51.100.7"
    assert forwarded_client("01.2.3.4, 203.0.113.9", None) is None


PROXY = "127.0.0.17"  # a trusted proxy, by the range it is in (as an ingress's pods)


@pytest.mark.gunicorn
def test_unparsable_forwarded_for_counts_against_the_proxy_not_a_fresh_client(
    gunicorn: Start, redis_prefix: str
) -> None:
    """Issue 18: `a1`, `01.2.3.4` and `1.2.3.4.` were three new clients.
    1. Gunicorn, a quota of 3 requests a minute, proxies trusted in 127.0.0.16/28
    2. the proxy forwards 3 requests whose X-Forwarded-For is each of those  -> 200 each
    3. the proxy asks on its own behalf  -> 429: the three were counted against it
    4. it forwards ::ffff:198.51.100.7  -> 200, and the access log says 198.51.100.7."""
    server = gunicorn(
        workers=1,
        env={
            "RATE_LIMIT_ENABLED": "true",
            "RATE_LIMIT_DEFAULT": "3/60s",
            "RATE_LIMIT_ROUTES": "",
            "RATE_LIMIT_KEY_HEADER": "",
            "FORWARDED_ALLOW_IPS": "127.0.0.16/28",
            "REDIS_KEY_PREFIX": f"{redis_prefix}{uuid.uuid4().hex[:8]}:",
        },
    )
    transport = httpx.HTTPTransport(local_address=PROXY)
    with httpx.Client(transport=transport, base_url=server.base_url) as proxy:

        def get(forwarded_for: str | None) -> int:
            headers = {"X-Forwarded-For": forwarded_for} if forwarded_for is not None else {}
            return proxy.get("/api/v1/products?limit=1", headers=headers).status_code

        assert [get(value) for value in ("a1", "01.2.3.4", "1.2.3.4.")] == [200, 200, 200]
        assert get(None) == 429
        assert get("::ffff:198.51.100.7") == 200
    server.stop()
    clients = [r["client"] for r in server.log_records() if r.get("logger") == "app.access"]
    assert clients == [PROXY, PROXY, PROXY, PROXY, "198.51.100.7"]
