"""parity audit: an audit that checked nothing must say so, not pass."""

from __future__ import annotations

import pytest

import parity.commands.audit as audit
from parity.commands.audit import EXIT_UNAUDITED, EXIT_VULNERABLE, main, summarise

REPORT = {
    "dependencies": [
        {"name": "fastapi", "version": "1.0", "vulns": []},
        {"name": "oldlib", "version": "0.1", "vulns": [{"id": "PYSEC-2099-1", "fix_versions": []}]},
        {"name": "rare", "skip_reason": "Dependency not found on PyPI and could not be audited"},
    ]
}


def test_skipped_packages_are_counted_as_unaudited_not_as_clean() -> None:
    result = summarise(REPORT)
    assert result.audited == 2
    assert result.vulnerable == {"oldlib==0.1": ["PYSEC-2099-1"]}
    assert list(result.unaudited) == ["rare==?"]
    assert not result.complete


def test_an_all_skipped_report_is_incomplete() -> None:
    skipped = {
        "dependencies": [{"name": "a", "skip_reason": "x"}, {"name": "b", "skip_reason": "x"}]
    }
    result = summarise(skipped)
    assert (result.audited, result.complete) == (0, False)


def test_exit_codes_name_the_outcome(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(audit, "run_pip_audit", lambda files, service: summarise(REPORT))
    assert main([]) == EXIT_VULNERABLE
    assert "VULNERABLE oldlib==0.1: PYSEC-2099-1" in capsys.readouterr().out

    unaudited = {"dependencies": [{"name": "a", "version": "1", "skip_reason": "unreachable"}]}
    monkeypatch.setattr(audit, "run_pip_audit", lambda files, service: summarise(unaudited))
    assert main([]) == EXIT_UNAUDITED
    assert "AUDIT INCOMPLETE: 1 of 1 packages were NOT checked" in capsys.readouterr().out
    assert main(["--allow-unaudited"]) == 0
