"""Where the API runs: the one option group every command shares (parity.harness.target),
and the choice it parses. A combination that means nothing is refused by name."""

from __future__ import annotations

import argparse
import os
import signal
from collections.abc import Collection

import httpx
import pytest
from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from parity.harness.stack import StackError, compose_api_url
from parity.harness.target import (
    ComposeTarget,
    Kind,
    NativeTarget,
    PidTarget,
    TargetChoice,
    UrlTarget,
    add_target_options,
    target_choice,
)


def choose(
    argv: list[str], kinds: Collection[Kind], default: Kind | None = "native"
) -> TargetChoice:
    parser = argparse.ArgumentParser(prog="parity test")
    add_target_options(parser, kinds, default=default)
    return target_choice(parser, parser.parse_args(argv))


def refusal(
    argv: list[str],
    kinds: Collection[Kind],
    capsys: pytest.CaptureFixture[str],
    default: Kind | None = "native",
) -> str:
    with pytest.raises(SystemExit) as exit_:
        choose(argv, kinds, default)
    assert exit_.value.code == 2
    return capsys.readouterr().err


def test_nothing_named_is_the_default() -> None:
    assert choose([], ("native", "compose")) == TargetChoice("native")


def test_a_url_alone_is_an_api_already_running_here() -> None:
    choice = choose(["--url", "http://127.0.0.1:8000/"], ("native", "compose", "url"))
    assert choice == TargetChoice("url", "http://127.0.0.1:8000")


def test_a_url_elsewhere_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    error = refusal(["--url", "http://10.1.2.3:8000"], ("native", "url"), capsys)
    assert "'http://10.1.2.3:8000' is not on this machine (loopback only)" in error


def test_compose_answers_where_compose_publishes_unless_told() -> None:
    assert choose(["--compose"], ("native", "compose")).url == compose_api_url()
    told = choose(["--compose", "--url", "http://10.9.0.4:8000"], ("native", "compose"))
    assert told == TargetChoice("compose", "http://10.9.0.4:8000")  # a project container


def test_a_pid_carries_its_number_and_address() -> None:
    choice = choose(["--pid", "4242"], ("native", "compose", "pid"), default=None)
    assert choice == TargetChoice("pid", compose_api_url(), 4242)


def test_a_url_with_native_is_refused_and_says_what_it_goes_with(
    capsys: pytest.CaptureFixture[str],
) -> None:
    error = refusal(["--url", "http://127.0.0.1:1"], ("native", "compose"), capsys)
    assert "argument --url: not with --native" in error
    assert "it goes with --compose" in error


def test_two_places_at_once_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    error = refusal(["--native", "--compose"], ("native", "compose"), capsys)
    assert "not allowed with argument --native" in error


def test_a_command_without_a_default_needs_a_place(capsys: pytest.CaptureFixture[str]) -> None:
    error = refusal([], ("native", "compose", "pid"), capsys, default=None)
    assert "one of the arguments --native --compose --pid is required" in error


def test_an_api_known_by_url_cannot_be_signalled() -> None:
    target = UrlTarget("http://127.0.0.1:8000")
    assert target.metrics_url() == "http://127.0.0.1:8000/metrics"
    with pytest.raises(StackError, match="cannot send SIGTERM to an API known only by --url"):
        target.send_signal(signal.SIGTERM)


def test_an_api_known_by_url_has_no_dependency_to_hang() -> None:
    target = UrlTarget("http://127.0.0.1:8000")
    with pytest.raises(StackError, match="cannot pause the redis of an API known only by --url"):
        target.pause_dependency("redis")
    with pytest.raises(StackError, match="cannot resume the redis of an API known only by --url"):
        target.resume_dependency("redis")


def test_a_master_started_elsewhere_keeps_its_dependencies() -> None:
    target = PidTarget(os.getpid(), "http://127.0.0.1:8000", None)
    for action in (target.stop_dependency, target.pause_dependency, target.resume_dependency):
        with pytest.raises(StackError, match="a master started elsewhere uses its own"):
            action("redis")


def test_compose_takes_any_number_of_replicas() -> None:
    """Attaching asks the engine nothing: how many replicas a proof allows is the proof's
    business (verify shutdown wants one; chaos runs on a replicated stack)."""
    target = ComposeTarget("http://127.0.0.1:1")
    assert target.base_url == "http://127.0.0.1:1"
    target.close()  # nothing stopped or paused: nothing to restore


@pytest.mark.gunicorn
@pytest.mark.slow
def test_a_native_target_on_shared_servers_never_stops_them() -> None:
    target = NativeTarget("target-test", 1, {}, products=0)
    try:
        for action in (target.stop_dependency, target.pause_dependency):
            with pytest.raises(StackError, match="shared Postgres and Redis, which are never"):
                action("redis")
    finally:
        target.close()


@pytest.mark.gunicorn
@pytest.mark.slow
def test_a_native_target_on_throwaway_servers_stops_hangs_and_restarts_redis() -> None:
    """Its own Redis and Postgres: stopped, started, paused and resumed for real, with
    the API answering throughout; Postgres is not hung natively; all gone after close()."""
    target = NativeTarget("target-test", 1, {}, products=3, throwaway=True)
    try:
        redis_url = target.server.env["REDIS_URL"]
        client = Redis.from_url(redis_url, socket_timeout=0.3)
        target.stop_dependency("redis")
        with pytest.raises(RedisConnectionError):
            client.ping()
        assert httpx.get(target.base_url + "/health", timeout=5).status_code == 200
        target.start_dependency("redis")
        assert client.ping()
        target.pause_dependency("redis")
        with pytest.raises(RedisTimeoutError):  # hung, not refused
            client.ping()
        target.resume_dependency("redis")
        client.close()
        client = Redis.from_url(redis_url, socket_timeout=1)  # no half-read answer pending
        assert client.ping()
        client.close()
        with pytest.raises(StackError, match="cannot pause postgres: natively only Redis"):
            target.pause_dependency("postgres")
        with pytest.raises(StackError, match="the throwaway servers are postgres, redis"):
            target.stop_dependency("mysql")
    finally:
        target.close()
    with pytest.raises(RedisConnectionError):
        Redis.from_url(redis_url, socket_timeout=0.3).ping()
