"""Where the API runs: the one option group every command shares (parity.harness.target),
and the choice it parses. A combination that means nothing is refused by name."""

from __future__ import annotations

import argparse
import signal
from collections.abc import Collection

import pytest

from parity.harness.stack import StackError, compose_api_url
from parity.harness.target import (
    Kind,
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
