"""The benchmark and demo scripts run end to end, with tiny durations: they are scripts
that print figures (no timing is asserted here), but a script nobody runs breaks
silently when the API changes. Each one talks only to servers it started on loopback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from parity.commands.bench_middleware import attribute
from parity.harness.benchdocs import replace_section
from parity.harness.repo import REPO_ROOT
from tests.helpers import needs_wrk, run_parity


@pytest.mark.gunicorn
@pytest.mark.slow
@needs_wrk
def test_middleware_tax_benchmark_measures_both_apps(tmp_path: Path) -> None:
    """1 round of 1 s per server (no profile: py-spy's attribution is checked below on
    a recorded stack) -> a ratio, CPU per request, no non-2xx answer (the rate limiter
    checked every request and refused none), and a valid PNG."""
    process = run_parity(
        "bench", "middleware", "--rounds", "1", "--duration", "1", "--profile", "0",
        "--no-ablation", "--connections", "8", "--out", str(tmp_path),
        "--plot", str(tmp_path / "tax.png"), "--json",
    )  # fmt: skip
    assert process.returncode == 0, process.stderr[-3000:]
    result = json.loads(process.stdout)
    summary = result["summary"]
    assert summary["errors"] == 0
    assert 0 < summary["ratio"] < 5
    assert summary["full"]["cpu_us_per_request"] > 0
    assert summary["bare"]["requests_per_second"] > 0
    assert result["profiles"] == {}
    with Image.open(tmp_path / "tax.png") as image:
        image.verify()


def test_profile_samples_go_to_the_innermost_component_on_the_stack() -> None:
    """py-spy's raw lines (`frame;frame;... count`, full file names): a sample counts for
    the innermost frame that belongs to a component, standard library frames skipped;
    the event loop only when nothing else is on the stack."""
    site = "/venv/lib/python3.11/site-packages"
    loop = f"Runner.run ({site[:-14]}/asyncio/runners.py:118)"
    http = f"RequestResponseCycle.run_asgi ({site}/uvicorn/protocols/http/httptools_impl.py:1)"
    limiter = f"RateLimitMiddleware.__call__ ({REPO_ROOT}/app/ratelimit/middleware.py:167)"
    redis = f"Redis.execute_command ({site}/redis/asyncio/client.py:929)"
    hashing = "sha256 (/usr/lib/python3.11/hashlib.py:10)"
    raw = "\n".join(
        [
            f'process 1:"gunicorn";{loop};{http};{limiter};{redis} 6',
            f"{loop};{http};{limiter};{hashing} 2",
            f"{loop};{http} 1",
            f"{loop} 1",
        ]
    )
    assert attribute(raw) == {
        "rate limiter (Redis client)": 80.0,
        "HTTP protocol (Uvicorn, socket writes)": 10.0,
        "event loop (asyncio)": 10.0,
    }


def test_benchmark_sections_replace_only_their_own_block(tmp_path: Path) -> None:
    docs = tmp_path / "benchmarks.md"
    docs.write_text("# Benchmarks\n\n## Other\n\n<!-- other:start -->\nkeep\n<!-- other:end -->\n")
    replace_section("mine", "Mine", "first", path=docs)
    replace_section("mine", "Mine", "second", path=docs)
    text = docs.read_text()
    assert "keep" in text
    assert text.count("## Mine") == 1
    assert "second" in text
    assert "first" not in text


def test_bad_benchmark_arguments_name_the_value() -> None:
    process = run_parity("bench", "middleware", "--rounds", "0")
    assert process.returncode == 2
    assert "argument --rounds: '0' must be at least 1" in process.stderr
    process = run_parity("demo", "--url", "http://10.1.2.3:8000")
    assert process.returncode == 2
    assert "is not on this machine" in process.stderr
