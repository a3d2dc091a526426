"""`make venv` (scripts/parity/bootstrap.py), the first thing the README's two commands
run: on a machine that lacks a prerequisite it says which, with the fix, before
installing anything."""

from __future__ import annotations

import shutil

import pytest

from parity import bootstrap as bootstrap_venv


def test_a_machine_with_everything_lacks_nothing() -> None:
    assert bootstrap_venv.missing_prerequisites() == []


def test_missing_git_is_named_with_its_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    real_which = shutil.which
    monkeypatch.setattr(
        bootstrap_venv.shutil, "which", lambda name: None if name == "git" else real_which(name)
    )
    assert bootstrap_venv.missing_prerequisites() == ["git (apt-get install git)"]


def test_set_up_stops_before_installing_when_something_is_missing(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: object
) -> None:
    monkeypatch.setattr(bootstrap_venv, "missing_prerequisites", lambda: ["git (apt-get …)"])
    monkeypatch.setattr(bootstrap_venv.sys, "argv", ["bootstrap_venv.py", str(tmp_path)])
    assert bootstrap_venv.main() == 1
    assert "missing before set-up: git (apt-get …)" in capsys.readouterr().err
