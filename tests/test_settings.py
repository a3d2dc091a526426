"""Settings: defaults, and a bad value stops the start with one line naming it."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest

from app.settings import Settings, load_settings
from app.worker import available_cpus, cgroup_cpu_limit, default_workers
from parity.harness.repo import REPO_ROOT
from tests.helpers import run, run_gunicorn


def test_defaults_describe_a_local_stack(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [*Settings.model_fields, "WEB_CONCURRENCY"]:
        monkeypatch.delenv(name, raising=False)
    settings = Settings()
    assert settings.DATABASE_URL == "postgresql+asyncpg://postgres@127.0.0.1:5432/app"
    assert settings.GUNICORN_BIND == "127.0.0.1:8000"
    assert settings.GUNICORN_WORKERS is None
    assert "*" not in settings.FORWARDED_ALLOW_IPS
    assert settings.CORS_ALLOW_ORIGINS == []
    assert settings.CORS_ALLOW_CREDENTIALS is False
    assert settings.HSTS_MAX_AGE_SECONDS == 0


def test_web_concurrency_is_the_fallback_for_the_worker_count(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The PaaS and image convention: WEB_CONCURRENCY when GUNICORN_WORKERS is not set;
    GUNICORN_WORKERS wins when both are."""
    monkeypatch.delenv("GUNICORN_WORKERS", raising=False)
    monkeypatch.setenv("WEB_CONCURRENCY", "3")
    assert Settings().GUNICORN_WORKERS == 3
    monkeypatch.setenv("GUNICORN_WORKERS", "5")
    assert Settings().GUNICORN_WORKERS == 5
    assert Settings(GUNICORN_WORKERS=7).GUNICORN_WORKERS == 7


def test_environment_overrides_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GUNICORN_WORKERS", "3")
    monkeypatch.setenv("DB_POOL_SIZE", "7")
    settings = Settings()
    assert (settings.GUNICORN_WORKERS, settings.DB_POOL_SIZE) == (3, 7)


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("GUNICORN_WORKERS", "many", "invalid configuration: GUNICORN_WORKERS='many': "),
        (
            "GUNICORN_WORKERS",
            "0",
            "GUNICORN_WORKERS='0': Input should be greater than or equal to 1",
        ),
        ("GUNICORN_BIND", "8000", "GUNICORN_BIND='8000': must be HOST:PORT"),
        ("WEB_CONCURRENCY", "many", "invalid configuration: WEB_CONCURRENCY='many': "),
        ("REDIS_URL", "http://cache:6379", "REDIS_URL: must start with redis://"),
        ("DATABASE_URL", "mysql://u:pw@h/db", "DATABASE_URL: driver must be postgresql+asyncpg"),
        ("LOG_LEVEL", "loud", "LOG_LEVEL='loud': Input should be 'debug', 'info'"),
        (
            "RATE_LIMIT_DEFAULT",
            "100 per minute",
            "RATE_LIMIT_DEFAULT='100 per minute': '100 per minute' is not QUOTA/WINDOW",
        ),
        ("RATE_LIMIT_DEFAULT", "0/60s", "RATE_LIMIT_DEFAULT='0/60s': quota 0 is not between"),
        (
            "RATE_LIMIT_ROUTES",
            "writes=20/60s FETCH /api/",
            "RATE_LIMIT_ROUTES='writes=20/60s FETCH /api/': 'writes=20/60s FETCH /api/': "
            "unknown method 'FETCH'",
        ),
        ("RATE_LIMIT_ROUTES", "a=1/1s; a=2/1s", "policy 'a' is defined twice"),
        ("RATE_LIMIT_ROUTES", "a=1/1s GET fail=maybe", "'fail=maybe' is not fail=open or"),
        ("RATE_LIMIT_ROUTES", "a=1/1s fail=open GET", "unexpected 'fail=open' (want"),
        ("RATE_LIMIT_EXEMPT_PATHS", "health", "'health' is not a path (must start with /)"),
        ("RATE_LIMIT_KEY_HEADER", "X API Key", "RATE_LIMIT_KEY_HEADER='X API Key': String"),
        (
            "CORS_ALLOW_ORIGINS",
            "https://app.example.com/login",
            "CORS_ALLOW_ORIGINS='https://app.example.com/login': "
            "'https://app.example.com/login' is not an origin",
        ),
        ("MAX_REQUEST_BODY_BYTES", "-1", "MAX_REQUEST_BODY_BYTES='-1': Input should be greater"),
        (
            "FORWARDED_ALLOW_IPS",
            "10.244.0.1/16",
            "FORWARDED_ALLOW_IPS='10.244.0.1/16': '10.244.0.1/16' has host bits set "
            "(the network is 10.244.0.0/16)",
        ),
        ("FORWARDED_ALLOW_IPS", "10.0.0.1,*", "'*' trusts every peer and must stand alone"),
    ],
)
def test_bad_value_exits_with_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    name: str,
    value: str,
    expected: str,
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as exit_info:
        load_settings()
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1
    assert expected in lines[0]


def test_rate_limit_policies_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Overrides first, in the order written (first match wins), the default last."""
    monkeypatch.setenv("RATE_LIMIT_DEFAULT", "1000/1h")
    monkeypatch.setenv("RATE_LIMIT_ROUTES", "orders=5/1m POST /api/v1/orders; reads=50/10s GET")
    policies = Settings().rate_limit_policies
    assert [(p.name, p.quota, p.window_seconds) for p in policies] == [
        ("orders", 5, 60),
        ("reads", 50, 10),
        ("default", 1000, 3600),
    ]
    orders, reads, default = policies
    assert orders.matches("POST", "/api/v1/orders")
    assert orders.matches("POST", "/api/v1/orders/7")
    assert not orders.matches("POST", "/api/v1/ordersx")
    assert not orders.matches("GET", "/api/v1/orders/7")
    assert reads.matches("GET", "/anything")
    assert default.matches("DELETE", "/anything")


def test_each_policy_fails_open_or_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    """By default writes fail closed (`fail=closed` in RATE_LIMIT_ROUTES) and everything
    else fails open (RATE_LIMIT_FAIL_OPEN); a policy's own `fail=` wins over the global."""
    for name in ("RATE_LIMIT_ROUTES", "RATE_LIMIT_DEFAULT", "RATE_LIMIT_FAIL_OPEN"):
        monkeypatch.delenv(name, raising=False)
    writes, default = Settings().rate_limit_policies
    assert (writes.name, writes.fail_open, default.fail_open) == ("writes", False, True)
    assert writes.methods == {"POST", "PUT", "PATCH", "DELETE"}

    monkeypatch.setenv("RATE_LIMIT_FAIL_OPEN", "false")
    monkeypatch.setenv(
        "RATE_LIMIT_ROUTES", "search=30/10s GET /api/v1/products fail=open; w=5/1m POST"
    )
    search, w, default = Settings().rate_limit_policies
    assert (search.fail_open, w.fail_open, default.fail_open) == (True, False, False)
    assert search.path_prefix == "/api/v1/products"


def test_secret_values_are_never_echoed(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://app:hunter2secret@db/app")
    with pytest.raises(SystemExit):
        load_settings()
    assert "hunter2secret" not in capsys.readouterr().err
    settings = Settings(DATABASE_URL="postgresql+asyncpg://app:hunter2secret@db/app")
    assert "hunter2secret" not in repr(settings)
    assert "hunter2secret" not in settings.database_url_masked


def test_cors_origins_are_a_comma_separated_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORS_ALLOW_ORIGINS", "https://app.example.com, http://localhost:3000")
    assert Settings().CORS_ALLOW_ORIGINS == ["https://app.example.com", "http://localhost:3000"]


def test_any_origin_with_credentials_is_refused_without_echoing_secrets(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A rule across variables is reported without its input: that input is every
    variable, the database password included."""
    monkeypatch.setenv("DATABASE_URL", "postgresql+asyncpg://app:hunter2secret@db/app")
    monkeypatch.setenv("CORS_ALLOW_ORIGINS", "*")
    monkeypatch.setenv("CORS_ALLOW_CREDENTIALS", "true")
    with pytest.raises(SystemExit):
        load_settings()
    err = capsys.readouterr().err
    assert "CORS_ALLOW_CREDENTIALS=true cannot be combined with CORS_ALLOW_ORIGINS=*" in err
    assert "hunter2secret" not in err


def test_request_timeout_must_fit_in_the_shutdown_budget() -> None:
    with pytest.raises(ValueError, match="below GUNICORN_GRACEFUL_TIMEOUT"):
        Settings(REQUEST_TIMEOUT_SECONDS=30, GUNICORN_GRACEFUL_TIMEOUT=30)


def test_gunicorn_refuses_to_start_on_a_bad_value() -> None:
    """1. GUNICORN_WORKERS=abc  2. gunicorn started  -> exit 2, one line, no traceback."""
    env = {**os.environ, "GUNICORN_WORKERS": "abc", "GUNICORN_BIND": "127.0.0.1:8999"}
    result = run_gunicorn(env, timeout=30)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "invalid configuration: GUNICORN_WORKERS='abc': "
        "Input should be a valid integer, unable to parse string as an integer"
    ]


def test_cgroup_quota_is_rounded_up(tmp_path: Path) -> None:
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text("150000 100000\n")
    assert cgroup_cpu_limit(cpu_max) == 2
    cpu_max.write_text("max 100000\n")
    assert cgroup_cpu_limit(cpu_max) is None
    assert cgroup_cpu_limit(tmp_path / "missing") is None


def test_default_workers_follow_the_affinity_mask_not_the_host() -> None:
    """A process pinned to one CPU (taskset, a cpuset) gets one worker."""
    code = "import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))});"
    code += "from app.worker import default_workers; print(default_workers())"
    result = run([sys.executable, "-c", code], check=True)
    assert result.stdout.strip() == "1"
    assert default_workers() == available_cpus() <= len(os.sched_getaffinity(0))


def test_every_setting_is_in_the_readme_configuration_table() -> None:
    """A setting nobody can find is a setting nobody sets right: each one has a row
    (`NAME`, or `PREFIX` / `_SUFFIX` for a pair) in README.md's configuration table."""
    readme = (REPO_ROOT / "README.md").read_text()
    rows = [line for line in readme.splitlines() if line.startswith("| `")]
    documented = set()
    for row in rows:
        names = re.findall(r"`(_?[A-Z][A-Z0-9_]*)`", row.split("|")[1])
        for name in names:
            documented.add(name if not name.startswith("_") else names[0] + name)
    assert sorted(set(Settings.model_fields) - documented) == []


def test_a_process_reads_its_settings_once_and_a_forked_child_reads_its_own() -> None:
    """A Gunicorn worker's server and app share one Settings, read after the fork; the
    child never inherits the parent's (the master re-reads them on SIGHUP)."""
    program = """
import os
from app.settings import process_settings
os.environ["SERVICE_NAME"] = "first"
first = process_settings()
os.environ["SERVICE_NAME"] = "second"
print(process_settings() is first, first.SERVICE_NAME, flush=True)
child = os.fork()
if child == 0:
    print("child", process_settings().SERVICE_NAME, flush=True)
    os._exit(0)
os.waitpid(child, 0)
"""
    result = run([sys.executable, "-c", program], timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["True first", "child second"]
