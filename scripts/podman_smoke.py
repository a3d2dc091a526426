"""Smoke-build the project's Dockerfile with podman, offline, and check that the image runs.

    python scripts/podman_smoke.py [--json] [--rebuild-base]

Nothing can be pulled on this kind of machine, so the script builds a stand-in for
`python:3.12-slim` (debootstrap Debian bookworm + python3, venv, pip, ca-certificates,
`podman import`) and builds our Dockerfile against it through its `PYTHON_IMAGE` build
argument with `--pull=never`. The stand-in is cached in podman's storage between runs.
Then it runs the image the way compose does (read-only root, tmpfs, no capabilities,
no-new-privileges) against the host's Postgres and Redis, and checks:

1. the image's metadata: numeric non-root USER, exec-form CMD, HEALTHCHECK, STOPSIGNAL;
2. its content: no compiler, no pip, no tests or .git (.dockerignore);
3. `alembic upgrade head` and `python -m app.seed` run from the image (throwaway database);
4. Gunicorn starts, every process runs as uid 10001, /health, /ready and a cached
   product read answer (MISS then HIT: Redis works from inside), and /metrics counts
   them (the multiprocess directory works on the tmpfs);
5. the HEALTHCHECK command succeeds, and fails against a port nobody listens on;
6. SIGTERM stops it gracefully: exit code 0, well before the kill deadline.

Network rule: every container runs with `--network host` (or `none` when it needs no
network); podman's default bridge is never used (its private-range addresses are
off-limits here). The private containers.conf also makes the host netns the default.

The image stays as `localhost/parity-api:smoke` to explore (`podman run --rm -it
--network=none localhost/parity-api:smoke bash`).

Exit status: 0 every check passed; 1 a check failed; 3 podman cannot run on this
machine (nothing was checked; the message says why).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python scripts/podman_smoke.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
from sqlalchemy.engine import make_url

from scripts.stack import (
    REPO_ROOT,
    child_pids,
    delete_redis_prefix,
    drop_database,
    ensure_database,
    free_port,
    iter_json_lines,
)

EXIT_OK, EXIT_FAILED, EXIT_CANNOT_RUN = 0, 1, 3

APP_UID = 10001
IMAGE = "localhost/parity-api:smoke"
BASE_PACKAGES = ("python3", "python3-venv", "python3-pip", "ca-certificates")
DEBIAN_SUITE = "bookworm"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
# The host's CA bundle goes into the stand-in, so that pip inside the build trusts
# whatever TLS proxy the host's own pip trusts.
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "parity"
# podman only works here with runc and explicit ulimits; the host netns as the default
# network is a second guard against ever using the bridge.
CONTAINERS_CONF = """\
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
netns = "host"

[engine]
runtime = "runc"
"""
# The hardening compose.yaml applies to `api`, so the smoke run proves the image works
# under it. podman 4.3 ignores a tmpfs `mode=` (compose's mode=1777 works on Docker):
# `U` makes podman mount it owned by the container's user instead.
HARDENING = (
    "--read-only",
    "--tmpfs=/tmp:rw,size=64m",
    "--tmpfs=/run/parity/metrics:rw,size=64m,U",
    "--cap-drop=ALL",
    "--security-opt=no-new-privileges",
)
TERM_DEADLINE_SECONDS = 40  # compose's stop_grace_period
TEST_SERVER_URL = os.environ.get(
    "TEST_DATABASE_SERVER_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
)
TEST_REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


class CannotRun(Exception):
    """podman cannot run on this machine; nothing was checked."""


class CheckFailed(Exception):
    """A smoke check failed; the message says which and why."""


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    seconds: float


@dataclass
class Report:
    checks: list[Check] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)
    outcome: str = "passed"
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.outcome == "passed" and all(check.ok for check in self.checks)


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- podman ------------------------------------------------------------------------


class Podman:
    """Runs podman with the private containers.conf; refuses any `run` or `build`
    that does not name the host or no network."""

    def __init__(self, conf_path: Path) -> None:
        self.env = {**os.environ, "CONTAINERS_CONF": str(conf_path)}

    def __call__(
        self, *args: str, check: bool = True, timeout: float = 600, stdin: Any = None
    ) -> subprocess.CompletedProcess[str]:
        if args and args[0] in ("run", "build", "create"):
            networks = [a for a in args if a.startswith("--network=")]
            if networks not in (["--network=host"], ["--network=none"]):
                raise AssertionError(f"podman {args[0]} without --network=host|none: {args}")
        result = subprocess.run(
            ["podman", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            stdin=stdin,
        )
        if check and result.returncode != 0:
            raise CheckFailed(f"podman {' '.join(args[:3])} … failed:\n{_tail(result.stderr)}")
        return result

    def image_exists(self, name: str) -> bool:
        return self("image", "exists", name, check=False).returncode == 0

    def inspect_image(self, name: str) -> dict[str, Any]:
        data: list[dict[str, Any]] = json.loads(self("image", "inspect", name).stdout)
        return data[0]


def _tail(text: str, lines: int = 25) -> str:
    # podman without systemd logs an error for every healthcheck timer; it is noise.
    kept = [line for line in text.splitlines() if "systemd" not in line]
    return "\n".join(kept[-lines:])


def preflight(podman: Podman, need_debootstrap: bool) -> str:
    """Raise CannotRun unless podman can run containers here; return its version."""
    for tool in ("podman", "runc"):
        if shutil.which(tool) is None:
            raise CannotRun(f"`{tool}` is not installed (apt-get install podman buildah runc)")
    info = podman("info", "--format", "{{.Version.Version}} {{.Host.OCIRuntime.Name}}", check=False)
    if info.returncode != 0:
        raise CannotRun(f"`podman info` fails here:\n{_tail(info.stderr)}")
    if need_debootstrap:
        if shutil.which("debootstrap") is None:
            raise CannotRun("`debootstrap` is not installed (apt-get install debootstrap)")
        if os.geteuid() != 0:
            raise CannotRun("building the stand-in base with debootstrap needs root")
    return info.stdout.strip()


# --- the stand-in base image -------------------------------------------------------


def base_image_name() -> str:
    """Tag of the stand-in base; changes when its recipe or the host's CAs change."""
    recipe = hashlib.sha256()
    recipe.update(f"{DEBIAN_SUITE} {' '.join(BASE_PACKAGES)}".encode())
    if HOST_CA_BUNDLE.exists():
        recipe.update(HOST_CA_BUNDLE.read_bytes())
    return f"localhost/parity-smoke-base:{DEBIAN_SUITE}-{recipe.hexdigest()[:12]}"


def build_base(podman: Podman, name: str, mirror: str) -> None:
    """debootstrap a minimal Debian with python3 and import it as `name`."""
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="standin-", dir=CACHE_DIR) as work:
        rootfs = Path(work) / "rootfs"
        say(f"  debootstrap {DEBIAN_SUITE} (+{', '.join(BASE_PACKAGES)}) from {mirror} …")
        result = subprocess.run(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={','.join(BASE_PACKAGES)}",
                DEBIAN_SUITE,
                str(rootfs),
                mirror,
            ],
            capture_output=True,
            text=True,
            timeout=1800,
            check=False,
        )
        if result.returncode != 0:
            raise CheckFailed(f"debootstrap failed:\n{_tail(result.stdout + result.stderr)}")
        if HOST_CA_BUNDLE.exists():
            shutil.copyfile(HOST_CA_BUNDLE, rootfs / "etc/ssl/certs/ca-certificates.crt")
        for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
            shutil.rmtree(rootfs / cache, ignore_errors=True)
        say(f"  podman import → {name}")
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        try:
            podman(
                "import",
                "--change=ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt",
                '--change=CMD ["python3"]',
                "-",
                name,
                stdin=tar.stdout,
            )
        finally:
            tar.wait()


# --- the checks --------------------------------------------------------------------


class Smoke:
    def __init__(self, podman: Podman, report: Report) -> None:
        self.podman = podman
        self.report = report

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        say(f"▶ {name}")
        started = time.monotonic()
        try:
            yield
        finally:
            self.report.timings[name] = round(time.monotonic() - started, 1)

    def check(self, name: str, probe: Callable[[], str]) -> None:
        """Run one check: `probe` returns a detail line or raises CheckFailed."""
        started = time.monotonic()
        try:
            detail, ok = probe(), True
        except CheckFailed as exc:
            detail, ok = str(exc), False
        check = Check(name, ok, detail, round(time.monotonic() - started, 2))
        self.report.checks.append(check)
        first_line = detail.splitlines()[0] if detail else ""
        say(f"  {'✔' if ok else '✘'} {name}: {first_line}")

    # 1. metadata -----------------------------------------------------------------
    def check_metadata(self, image: dict[str, Any]) -> None:
        config = image["Config"]

        def user() -> str:
            expected = f"{APP_UID}:{APP_UID}"
            if config.get("User") != expected:
                raise CheckFailed(f"USER is {config.get('User')!r}, expected {expected!r}")
            return f"USER {expected} (numeric, so runAsNonRoot can verify it)"

        def cmd() -> str:
            expected = ["gunicorn", "app.main:app", "-c", "gunicorn.conf.py"]
            if config.get("Cmd") != expected or config.get("Entrypoint"):
                raise CheckFailed(f"CMD {config.get('Cmd')}, ENTRYPOINT {config.get('Entrypoint')}")
            return "exec-form CMD, no entrypoint: Gunicorn is PID 1 and gets the signal"

        def healthcheck() -> str:
            test = (image.get("Healthcheck") or {}).get("Test") or []
            if test[:1] != ["CMD"] or "curl" in test or "wget" in test:
                raise CheckFailed(f"HEALTHCHECK is {test}; expected exec form without curl")
            return " ".join(test[1:])

        def stopsignal_and_env() -> str:
            env = dict(item.split("=", 1) for item in config.get("Env", []))
            wanted = {"PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1"}
            wrong = {k: env.get(k) for k, v in wanted.items() if env.get(k) != v}
            if (
                config.get("StopSignal") != "SIGTERM"
                or wrong
                or "PROMETHEUS_MULTIPROC_DIR" not in env
            ):
                raise CheckFailed(f"StopSignal {config.get('StopSignal')}, env {wrong}")
            return f"STOPSIGNAL SIGTERM, PROMETHEUS_MULTIPROC_DIR={env['PROMETHEUS_MULTIPROC_DIR']}"

        self.check("image runs as a fixed non-root uid", user)
        self.check("CMD is exec form", cmd)
        self.check("HEALTHCHECK without curl", healthcheck)
        self.check("STOPSIGNAL and Python env", stopsignal_and_env)

    # 2. content ------------------------------------------------------------------
    def check_content(self) -> None:
        script = (
            "import importlib.util, json, os, shutil;"
            "print(json.dumps({"
            "'tools': [t for t in ('gcc', 'cc', 'c++', 'make', 'curl', 'wget')"
            " if shutil.which(t)],"
            "'pip_module': importlib.util.find_spec('pip') is not None,"
            "'strays': [p for p in ('tests', '.git', '.venv', '.env', 'compose.yaml')"
            " if os.path.exists(p)],"
            "'app': sorted(os.listdir('.'))}))"
        )
        result = self.podman("run", "--rm", "--network=none", IMAGE, "python", "-c", script)

        def no_build_tools() -> str:
            found = json.loads(result.stdout)
            if found["tools"] or found["pip_module"]:
                tools, pip = found["tools"], found["pip_module"]
                raise CheckFailed(f"in the runtime image: {tools}, pip in the venv: {pip}")
            return "no gcc, cc, c++, make, curl or wget on PATH; no pip in the venv"

        def no_strays() -> str:
            found = json.loads(result.stdout)
            if found["strays"]:
                raise CheckFailed(f".dockerignore let in: {found['strays']}")
            return f"/app holds {', '.join(found['app'])}"

        self.check("no compiler or pip in the runtime image", no_build_tools)
        self.check(".dockerignore keeps tests, .git, .env out", no_strays)

    # 3-6. run --------------------------------------------------------------------
    def run_container(self, env: dict[str, str], *command: str, detach: bool = False) -> str:
        env_args = [f"--env={key}={value}" for key, value in env.items()]
        mode = ["--detach"] if detach else ["--rm"]
        name = f"parity-smoke-{uuid.uuid4().hex[:8]}"
        result = self.podman(
            "run", *mode, f"--name={name}", "--network=host", *HARDENING, *env_args, IMAGE,
            *command, timeout=300,
        )  # fmt: skip
        return name if detach else result.stdout

    def check_one_shots(self, env: dict[str, str]) -> None:
        def migrate() -> str:
            self.run_container(env, "alembic", "upgrade", "head")
            return "`alembic upgrade head` from the image (read-only root) succeeded"

        def seed() -> str:
            output = self.run_container(env, "python", "-m", "app.seed", "--products", "100")
            return output.strip().splitlines()[-1]

        self.check("migrate one-shot", migrate)
        self.check("seed one-shot", seed)

    def check_server(self, env: dict[str, str], port: int) -> str:
        container = self.run_container(env, detach=True)
        base_url = f"http://127.0.0.1:{port}"
        self.report.facts["container"] = container

        def starts() -> str:
            started = time.monotonic()
            last = "no answer"
            while time.monotonic() - started < 60:
                state = self.podman("inspect", "--format={{.State.Running}}", container).stdout
                if state.strip() != "true":
                    raise CheckFailed(f"container exited:\n{self.logs(container)}")
                try:
                    response = httpx.get(f"{base_url}/ready", timeout=2)
                    if response.status_code == 200:
                        return f"/ready 200 after {time.monotonic() - started:.1f}s"
                    last = f"{response.status_code} {response.text[:200]}"
                except httpx.TransportError as exc:
                    last = repr(exc)
                time.sleep(0.3)
            raise CheckFailed(f"not ready after 60s ({last}):\n{self.logs(container)}")

        def uids() -> str:
            pid = int(self.podman("inspect", "--format={{.State.Pid}}", container).stdout)
            processes = [pid, *child_pids(pid)]
            found = {p: _uid(p) for p in processes}
            wrong = {p: u for p, u in found.items() if u != APP_UID}
            if wrong or len(processes) < 3:
                raise CheckFailed(f"uids {found} (expected {APP_UID}, master + 2 workers)")
            return f"master + {len(processes) - 1} workers, all uid {APP_UID}"

        def serves() -> str:
            caches = []
            for _ in range(2):
                response = httpx.get(f"{base_url}/api/v1/products/1", timeout=5)
                if response.status_code != 200:
                    raise CheckFailed(
                        f"/api/v1/products/1 → {response.status_code} {response.text}"
                    )
                caches.append(response.headers.get("x-cache"))
            if caches != ["MISS", "HIT"]:
                raise CheckFailed(f"X-Cache {caches}, expected MISS then HIT")
            # Memory after serving: what compose's and k8s' memory limit must hold.
            pid = int(self.podman("inspect", "--format={{.State.Pid}}", container).stdout)
            rss = [_rss_mb(p) for p in (pid, *child_pids(pid))]
            self.report.facts["rss_mb"] = {
                "master": round(rss[0], 1),
                "workers": [round(r, 1) for r in rss[1:]],
            }
            return "product 1: X-Cache MISS then HIT (Postgres and Redis reached)"

        self.check("Gunicorn starts and becomes ready", starts)
        self.check("every process runs as the non-root uid", uids)

        def metrics() -> str:
            response = httpx.get(f"{base_url}/metrics", timeout=5)
            if response.status_code != 200:
                raise CheckFailed(f"/metrics → {response.status_code} {response.text[:200]}")
            counted = [
                line
                for line in response.text.splitlines()
                if line.startswith("http_server_request_duration_seconds_count")
                and "/api/v1/products/{product_id}" in line
            ]
            if not counted:
                raise CheckFailed("/metrics has no request count for the product route")
            return f"/metrics from the tmpfs multiprocess dir: {counted[0]}"

        self.check("API answers under the compose hardening", serves)
        self.check("metrics aggregate the workers from the read-only image", metrics)
        return container

    def check_healthcheck(self, container: str) -> None:
        def passes() -> str:
            result = self.podman("healthcheck", "run", container, check=False)
            if result.returncode != 0:
                raise CheckFailed(
                    f"`podman healthcheck run` → {result.stdout.strip()} {_tail(result.stderr)}"
                )
            return "`podman healthcheck run` → healthy"

        def can_fail() -> str:
            result = self.podman(
                "exec", "--env=GUNICORN_BIND=127.0.0.1:1", container,
                "python", "-m", "app.healthcheck", check=False,
            )  # fmt: skip
            if result.returncode == 0:
                raise CheckFailed("the health check passed against a closed port")
            return result.stderr.strip().splitlines()[-1]

        self.check("HEALTHCHECK command succeeds", passes)
        self.check("HEALTHCHECK command fails when nothing answers", can_fail)

    def check_term(self, container: str) -> None:
        def graceful() -> str:
            started = time.monotonic()
            self.podman("kill", "--signal=TERM", container)
            try:
                code = self.podman("wait", container, timeout=TERM_DEADLINE_SECONDS).stdout
            except subprocess.TimeoutExpired:
                raise CheckFailed(f"still running {TERM_DEADLINE_SECONDS}s after SIGTERM") from None
            elapsed = time.monotonic() - started
            logs = self.logs(container, lines=400)
            if code.strip() != "0":
                raise CheckFailed(f"exit code {code.strip()} after SIGTERM:\n{_tail(logs)}")
            if "Traceback" in logs:
                raise CheckFailed(f"a traceback in the logs:\n{_tail(logs)}")
            messages = [r.get("message", "") for r in iter_json_lines(logs)]
            said_bye = any("Shutting down" in m for m in messages)
            return f"exit 0 after {elapsed:.1f}s (kill deadline {TERM_DEADLINE_SECONDS}s)" + (
                ", master logged its shutdown" if said_bye else ""
            )

        self.check("SIGTERM stops it gracefully", graceful)

    def logs(self, container: str, lines: int = 40) -> str:
        result = self.podman("logs", container, check=False)
        return "\n".join((result.stdout + result.stderr).splitlines()[-lines:])


def _status_field(pid: int, name: str) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{name}:"):
            return line.split()[1]
    raise CheckFailed(f"no {name} line for pid {pid}")


def _uid(pid: int) -> int:
    return int(_status_field(pid, "Uid"))


def _rss_mb(pid: int) -> float:
    return int(_status_field(pid, "VmRSS")) / 1024  # kB


# --- orchestration -----------------------------------------------------------------


@contextmanager
def throwaway_backends() -> Iterator[dict[str, str]]:
    """A fresh database and Redis key prefix, removed afterwards."""
    token = f"{os.getpid()}_{uuid.uuid4().hex[:8]}"
    url = (
        make_url(TEST_SERVER_URL)
        .set(database=f"parity_smoke_{token}")
        .render_as_string(hide_password=False)
    )
    prefix = f"parity-smoke-{token}:"
    ensure_database(url)
    try:
        yield {"DATABASE_URL": url, "REDIS_URL": TEST_REDIS_URL, "REDIS_KEY_PREFIX": prefix}
    finally:
        drop_database(url)
        delete_redis_prefix(TEST_REDIS_URL, prefix)


def run(args: argparse.Namespace, report: Report) -> None:
    conf = Path(tempfile.mkstemp(prefix="parity-containers-", suffix=".conf")[1])
    conf.write_text(CONTAINERS_CONF)
    try:
        podman = Podman(conf)
        base = base_image_name()
        need_base = args.rebuild_base or not (shutil.which("podman") and podman.image_exists(base))
        report.facts["podman"] = preflight(podman, need_debootstrap=need_base)
        smoke = Smoke(podman, report)
        report.facts["base_image"] = base
        with smoke.phase("stand-in base"):
            if need_base:
                build_base(podman, base, args.mirror)
                report.facts["base_built"] = True
            else:
                say(f"  cached: {base} (--rebuild-base to rebuild)")
                report.facts["base_built"] = False
        with smoke.phase("build"):
            build_image(podman, base)
        image = podman.inspect_image(IMAGE)
        base_size = podman.inspect_image(base)["Size"]
        report.facts["image_mb"] = round(image["Size"] / 1e6, 1)
        report.facts["added_to_base_mb"] = round((image["Size"] - base_size) / 1e6, 1)
        with smoke.phase("image checks"):
            smoke.check_metadata(image)
            smoke.check_content()
        with smoke.phase("run checks"), throwaway_backends() as env:
            port = free_port()
            env = {**env, "GUNICORN_BIND": f"127.0.0.1:{port}", "GUNICORN_WORKERS": "2"}
            smoke.check_one_shots(env)
            container = smoke.check_server(env, port)
            try:
                smoke.check_healthcheck(container)
                smoke.check_term(container)
            finally:
                podman("rm", "--force", "--time=0", container, check=False)
        # The untagged intermediate images are podman's layer cache: pruning them would
        # make every run cold. Only those of builds more than a day old go, so the disk
        # holds about a day of smoke builds at most.
        podman(
            "image", "prune", "--force", "--filter=label=parity.smoke=1", "--filter=until=24h",
            check=False,
        )  # fmt: skip
    finally:
        conf.unlink(missing_ok=True)


def build_image(podman: Podman, base: str) -> None:
    say(f"  podman build --pull=never --network=host --build-arg PYTHON_IMAGE={base}")
    result = podman(
        "build", "--pull=never", "--network=host", "--format=docker", "--layers",
        f"--build-arg=PYTHON_IMAGE={base}", "--label=parity.smoke=1",
        f"--tag={IMAGE}", f"--file={REPO_ROOT / 'Dockerfile'}", str(REPO_ROOT),
        check=False, timeout=1800,
    )  # fmt: skip
    if result.returncode != 0:
        raise CheckFailed(f"podman build failed:\n{_tail(result.stdout + result.stderr, 40)}")
    steps = [line for line in result.stdout.splitlines() if "STEP" in line]
    say(f"  built {IMAGE} ({len(steps)} steps)")


def print_summary(report: Report) -> None:
    print("\npodman smoke build of ./Dockerfile")
    if report.outcome == "cannot-run":
        print(f"  NOT RUN: podman cannot run on this machine: {report.reason}")
        return
    for check in report.checks:
        first_line = check.detail.splitlines()[0] if check.detail else ""
        print(f"  {'PASS' if check.ok else 'FAIL'}  {check.name}: {first_line}")
    if report.reason:
        print(f"  ERROR: {report.reason}")
    facts = report.facts
    if "image_mb" in facts:
        print(
            f"  image {facts['image_mb']} MB = stand-in base + {facts['added_to_base_mb']} MB "
            "(venv + app)"
        )
    if rss := facts.get("rss_mb"):
        workers = " + ".join(str(r) for r in rss["workers"])
        print(f"  RSS after serving: master {rss['master']} MB + workers {workers} MB")
    timings = ", ".join(f"{name} {seconds}s" for name, seconds in report.timings.items())
    print(f"  time: {timings}")
    passed = sum(check.ok for check in report.checks)
    print(f"smoke checks: {passed} of {len(report.checks)} passed")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python scripts/podman_smoke.py",
        description=__doc__.split("\n\n")[0],
        epilog="Exit status: 0 passed, 1 a check failed, 3 podman cannot run here.",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument(
        "--rebuild-base", action="store_true", help="debootstrap the stand-in base again"
    )
    parser.add_argument(
        "--mirror", default=DEFAULT_MIRROR, help=f"Debian mirror (default {DEFAULT_MIRROR})"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report = Report()
    try:
        run(args, report)
    except CannotRun as exc:
        report.outcome, report.reason = "cannot-run", str(exc)
    except (CheckFailed, subprocess.TimeoutExpired) as exc:
        report.outcome, report.reason = "failed", str(exc)
    if args.json:
        print(json.dumps(asdict(report), indent=2))
    else:
        print_summary(report)
    if report.outcome == "cannot-run":
        return EXIT_CANNOT_RUN
    return EXIT_OK if report.ok else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
