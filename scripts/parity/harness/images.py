"""Build local stand-ins for the images compose.yaml pulls, from Debian packages, offline
(`parity images` is its command; the compose e2e and rollout call `ensure_images`).

For machines with a Docker Engine but no container registry: nothing can be pulled, so
this builds, from a `debootstrap`'d Debian bookworm and the Debian mirror the host's apt
already uses, images standing in for the upstream ones (docker/offline/README.md says
what differs):

    parity-offline/python:bookworm       python:3.12-slim-bookworm (Python 3.11), the base
    parity-offline/postgres:15-bookworm  postgres:18.x-alpine
    parity-offline/redis:7-bookworm      redis:8.x-alpine
    parity-offline/prometheus:bookworm   prom/prometheus:v3.x
    parity-offline/locust:2.47.0         locustio/locust:2.47.0
    parity-offline/haproxy:bookworm      haproxy:3.2.x-alpine

The base is `debootstrap --variant=minbase` plus the host's CA bundle (PyPI may be
reached through a TLS proxy) and pip's settings read from the host at run time, brought
in with `docker import`; the others are `docker build`s of docker/offline/<name>/ FROM
it. Use them through the build arguments and image names, e.g.
`docker build --build-arg PYTHON_IMAGE=parity-offline/python:bookworm .`.

Each image carries a `parity.recipe` label: a hash of what it is made of (for the base:
suite, packages, apt sources, the CA bundle, pip's index and docker/offline/base/; for
the others: their directory and the base's recipe). An image whose label matches is not
rebuilt, so a warm run takes a few seconds; --rebuild ignores that (and Docker's layer
cache). --only takes short names (python, postgres, redis, prometheus, locust, haproxy) or image
names; the base is added when an image built on it is selected.

Importable: `IMAGES`, `ensure_images()`, `debian_mirror()`, `engine_reachable()`.
"""

from __future__ import annotations

import collections
import configparser
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from parity.harness.repo import REPO_ROOT
from parity.harness.report import progress as _stderr

# Bump to rebuild every image (the recipe of the base, hence of all, includes it).
KIT_VERSION = "1"

OFFLINE_DIR = REPO_ROOT / "docker" / "offline"
SUITE = "bookworm"
# Suites of the same release copied from the host's apt sources into the images when
# present there (security fixes for postgres, redis, ...), on top of SUITE itself.
EXTRA_SUITES = (f"{SUITE}-updates", f"{SUITE}-security")
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates")
CA_BUNDLE_IN_IMAGE = "/etc/ssl/certs/ca-certificates.crt"
RECIPE_LABEL = "parity.recipe"
CACHE_DIR = (
    Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "parity" / "offline-images"
)
EXIT_OK, EXIT_FAILED, EXIT_CANNOT_RUN = 0, 1, 3
TAIL_LINES = 30


@dataclass(frozen=True)
class Spec:
    """One image: its short name, its reference, what it stands in for."""

    key: str
    name: str
    stands_in_for: str
    directory: str = ""  # under docker/offline/, default: key

    @property
    def context(self) -> Path:
        return OFFLINE_DIR / (self.directory or self.key)


BASE = Spec(
    "python", "parity-offline/python:bookworm", "python:3.12-slim-bookworm (Python 3.11)", "base"
)
SPECS: tuple[Spec, ...] = (
    BASE,
    Spec("postgres", "parity-offline/postgres:15-bookworm", "postgres:18.x-alpine"),
    Spec("redis", "parity-offline/redis:7-bookworm", "redis:8.x-alpine"),
    Spec("prometheus", "parity-offline/prometheus:bookworm", "prom/prometheus:v3.x"),
    Spec("locust", "parity-offline/locust:2.47.0", "locustio/locust:2.47.0"),
    Spec("haproxy", "parity-offline/haproxy:bookworm", "haproxy:3.2.x-alpine"),
)
# Image name -> the upstream image it stands in for.
IMAGES: dict[str, str] = {spec.name: spec.stands_in_for for spec in SPECS}


@dataclass
class Result:
    """What ensure_images() did for one image."""

    image: str
    state: str  # "built" or "cached"
    seconds: float
    size_mb: float
    recipe: str


class KitUnavailable(RuntimeError):
    """Nothing can be built on this machine (exit 3); the message says why."""


class MirrorNotFound(KitUnavailable):
    """The host's apt configuration names no Debian bookworm mirror."""


@dataclass
class BuildError(RuntimeError):
    """Building `image` failed; `tail` is the end of its output."""

    image: str
    tail: str
    log: Path
    results: list[Result] = field(default_factory=list)

    def __str__(self) -> str:
        return f"building {self.image} failed (full log: {self.log}):\n{self.tail}"


Progress = Callable[[str], None]


# --- the host's configuration -------------------------------------------------------


@dataclass(frozen=True)
class AptSource:
    uri: str
    suite: str
    components: tuple[str, ...]

    def line(self) -> str:
        return f"deb {self.uri} {self.suite} {' '.join(self.components)}"


def _deb822_stanzas(text: str) -> Iterator[dict[str, str]]:
    """Stanzas of a deb822 file: {lower-case field: value}, continuation lines joined."""
    stanza: dict[str, str] = {}
    key = ""
    for raw in [*text.splitlines(), ""]:
        if raw.startswith("#"):
            continue
        if not raw.strip():
            if stanza:
                yield stanza
            stanza, key = {}, ""
        elif raw[0] in " \t" and key:
            stanza[key] += " " + raw.strip()
        elif ":" in raw:
            key, _, value = raw.partition(":")
            key = key.strip().lower()
            stanza[key] = value.strip()


def apt_sources(etc_apt: Path = Path("/etc/apt")) -> list[AptSource]:
    """Every enabled `deb` source in the host's apt configuration, in apt's order."""
    sources: list[AptSource] = []
    one_line = [etc_apt / "sources.list", *sorted((etc_apt / "sources.list.d").glob("*.list"))]
    for path in one_line:
        if not path.is_file():
            continue
        for raw in path.read_text(encoding="utf-8", errors="replace").splitlines():
            line = re.sub(r"\[[^\]]*\]", " ", raw.split("#", 1)[0]).split()
            if len(line) >= 3 and line[0] == "deb":
                sources.append(AptSource(line[1].rstrip("/"), line[2], tuple(line[3:])))
    for path in sorted((etc_apt / "sources.list.d").glob("*.sources")):
        for stanza in _deb822_stanzas(path.read_text(encoding="utf-8", errors="replace")):
            if stanza.get("enabled", "yes").lower() == "no":
                continue
            if "deb" not in stanza.get("types", "").split():
                continue
            for uri in stanza.get("uris", "").split():
                for suite in stanza.get("suites", "").split():
                    components = tuple(stanza.get("components", "").split())
                    sources.append(AptSource(uri.rstrip("/"), suite, components))
    return sources


def debian_mirror() -> str:
    """The Debian mirror the host's apt uses for bookworm (its URI, no trailing slash)."""
    for source in apt_sources():
        if source.suite == SUITE:
            return source.uri
    raise MirrorNotFound(
        f"no `deb` source for suite {SUITE} in /etc/apt/sources.list, "
        "/etc/apt/sources.list.d/*.list or /etc/apt/sources.list.d/*.sources: "
        "the images are built from the Debian mirror the host uses"
    )


def image_apt_sources() -> list[AptSource]:
    """The sources written into the images: the mirror, plus -updates/-security if known."""
    mirror = debian_mirror()
    chosen = [AptSource(mirror, SUITE, ("main",))]
    for suite in EXTRA_SUITES:
        source = next((s for s in apt_sources() if s.suite == suite), None)
        if source is not None:
            chosen.append(AptSource(source.uri, suite, ("main",)))
    return chosen


def pip_settings() -> dict[str, str]:
    """`cert` and `index-url` from the host's pip configuration files and environment."""
    files: list[Path] = [Path("/etc/xdg/pip/pip.conf"), Path("/etc/pip.conf")]
    files += [Path.home() / ".pip" / "pip.conf", Path.home() / ".config" / "pip" / "pip.conf"]
    if os.environ.get("PIP_CONFIG_FILE"):
        files.append(Path(os.environ["PIP_CONFIG_FILE"]))
    settings: dict[str, str] = {}
    for path in files:
        parser = configparser.ConfigParser(interpolation=None)
        try:
            parser.read(path, encoding="utf-8")
        except (OSError, configparser.Error):
            continue
        for section in ("global", "install"):
            for key in ("cert", "index-url"):
                if parser.has_option(section, key):
                    settings[key] = parser.get(section, key).strip()
    for key in ("cert", "index-url"):
        value = os.environ.get("PIP_" + key.upper().replace("-", "_"))
        if value:
            settings[key] = value
    return settings


def host_ca_bundle() -> Path:
    """The CA bundle the host trusts for PyPI (pip's cert, else the system bundle)."""
    candidates = [pip_settings().get("cert", ""), os.environ.get("SSL_CERT_FILE", "")]
    candidates.append(CA_BUNDLE_IN_IMAGE)
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    raise KitUnavailable(f"no CA bundle on the host (pip's cert, SSL_CERT_FILE, {candidates[-1]})")


# --- the engine and the tools -------------------------------------------------------


def _docker() -> str:
    return shutil.which("docker") or "docker"


def engine_reachable() -> str | None:
    """None if `docker info` reaches an engine, else why not."""
    if shutil.which("docker") is None:
        return "the docker command is not installed"
    try:
        proc = subprocess.run(
            [_docker(), "info", "--format", "{{.ServerVersion}}"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return "`docker info` did not answer within 30 s"
    version = proc.stdout.strip()
    if proc.returncode != 0 or not version or version == "<no value>":
        detail = (proc.stderr.strip().splitlines() or ["no server version"])[-1]
        return f"no Docker engine reachable (`docker info` failed: {detail})"
    return None


def debootstrap_unavailable() -> str | None:
    """None if debootstrap can run here, else why not."""
    if os.geteuid() != 0:
        return "building the base needs debootstrap, which must run as root"
    if _debootstrap() is None:
        return "building the base needs debootstrap, which is not installed"
    return None


def _debootstrap() -> str | None:
    found = shutil.which("debootstrap")
    if found is None and os.access("/usr/sbin/debootstrap", os.X_OK):
        found = "/usr/sbin/debootstrap"
    return found


def _inspect(name: str) -> tuple[str, str] | None:
    """(image id, recipe label) of a local image, None if there is none."""
    proc = subprocess.run(
        [
            _docker(),
            "image",
            "inspect",
            "--format",
            f'{{{{.Id}}}} {{{{ index .Config.Labels "{RECIPE_LABEL}" }}}}',
            name,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        return None
    image_id, _, label = proc.stdout.strip().partition(" ")
    return image_id, label.strip()


def _size_mb(name: str) -> float:
    proc = subprocess.run(
        [_docker(), "image", "inspect", "--format", "{{.Size}}", name],
        capture_output=True,
        text=True,
        check=False,
    )
    try:
        return round(int(proc.stdout.strip()) / 1e6, 1)
    except ValueError:
        return 0.0


# --- recipes --------------------------------------------------------------------------


def _tree_digest(directory: Path) -> str:
    """sha256 over the relative paths and contents of every file under directory."""
    if not directory.is_dir():
        raise KitUnavailable(f"{directory} is missing: the kit's files are incomplete")
    digest = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        digest.update(path.relative_to(directory).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def _hash(*parts: str) -> str:
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:20]


def base_recipe() -> str:
    """The base's recipe: suite, packages, sources, CA bundle, pip index, kit version."""
    ca_sha = hashlib.sha256(host_ca_bundle().read_bytes()).hexdigest()
    return _hash(
        f"kit {KIT_VERSION}",
        f"suite {SUITE}",
        "packages " + ",".join(BASE_PACKAGES),
        f"mirror {debian_mirror()}",
        *(f"source {s.line()}" for s in image_apt_sources()),
        f"ca {ca_sha}",
        "index-url " + pip_settings().get("index-url", ""),
        "files " + _tree_digest(BASE.context),
    )


def service_recipe(spec: Spec, base: str) -> str:
    """A service image's recipe: its docker/offline/<name>/ directory and the base's."""
    return _hash(f"kit {KIT_VERSION}", f"base {base}", "files " + _tree_digest(spec.context))


# --- building -------------------------------------------------------------------------


def _run_logged(
    command: Sequence[str],
    log: Path,
    progress: Progress,
    show: Callable[[str], str | None],
    env: dict[str, str] | None = None,
) -> tuple[int, str]:
    """Run command, its output to log; forward the lines show() maps to text; (rc, tail)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    with log.open("w", encoding="utf-8") as sink:
        sink.write("$ " + " ".join(command) + "\n")
        with subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            env=env,
        ) as proc:
            assert proc.stdout is not None
            for line in proc.stdout:
                sink.write(line)
                tail.append(line.rstrip("\n"))
                shown = show(line.rstrip("\n"))
                if shown:
                    progress(shown)
        return proc.returncode, "\n".join(tail)


_DEBOOTSTRAP_STAGES = re.compile(
    r"^I: (Retrieving Release|Resolving|Checking component|Installing core|"
    r"Unpacking (required packages|the base system)|Configuring (required packages|"
    r"the base system)|Base system installed)"
)
_PEM = re.compile(rb"-----BEGIN CERTIFICATE-----\s*(.+?)\s*-----END CERTIFICATE-----", re.S)


def _certificates(bundle: bytes) -> dict[bytes, bytes]:
    """{certificate body without whitespace: its PEM block} of a PEM bundle."""
    return {b"".join(m.group(1).split()): m.group(0) + b"\n" for m in _PEM.finditer(bundle)}


def _slim_and_configure(rootfs: Path, ca_bundle: Path) -> None:
    """After debootstrap: what Debian's slim images leave out, our files, the CA bundle."""
    for pattern in (
        "var/lib/apt/lists/*",
        "var/cache/apt/*.bin",
        "var/cache/apt/archives/*.deb",
        "var/cache/apt/archives/partial/*",
        "var/cache/debconf/*-old",
        "var/lib/dpkg/*-old",
        "var/log/**/*",
        "usr/share/man/*",
        "usr/share/info/*",
        "usr/share/groff/*",
        "usr/share/locale/*",
        "usr/share/doc/*/*",
        "tmp/*",
    ):
        for path in rootfs.glob(pattern):
            if path.name == "copyright" or path.name == "lock":
                continue
            if path.is_dir() and not path.is_symlink():
                if not pattern.startswith("var/log"):
                    shutil.rmtree(path)
            else:
                path.unlink()
    for name in ("etc/resolv.conf", "etc/machine-id"):
        target = rootfs / name
        if target.exists() or target.is_symlink():
            target.unlink()
            target.write_text("")
    (rootfs / "etc/hostname").write_text("localhost\n")

    sources = "".join(source.line() + "\n" for source in image_apt_sources())
    (rootfs / "etc/apt/sources.list").write_text(sources)

    # docker/offline/base/rootfs/ goes over the root file system.
    overlay = BASE.context / "rootfs"
    for path in sorted(overlay.rglob("*")):
        target = rootfs / path.relative_to(overlay)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        else:
            data = path.read_bytes()
            target.write_bytes(data)
            target.chmod(0o755 if data.startswith(b"#!") else 0o644)

    # Certificates the host trusts beyond Debian's (e.g. a TLS proxy's CA) become local
    # CAs, so that a later update-ca-certificates keeps them; then the host's bundle.
    host = ca_bundle.read_bytes()
    debian = (rootfs / CA_BUNDLE_IN_IMAGE.lstrip("/")).read_bytes()
    extra = [pem for key, pem in _certificates(host).items() if key not in _certificates(debian)]
    local_cas = rootfs / "usr/local/share/ca-certificates"
    local_cas.mkdir(parents=True, exist_ok=True)
    for number, pem in enumerate(extra, 1):
        (local_cas / f"parity-host-{number}.crt").write_bytes(pem)
    if extra:
        subprocess.run(
            ["chroot", str(rootfs), "update-ca-certificates"], capture_output=True, check=True
        )
    (rootfs / CA_BUNDLE_IN_IMAGE.lstrip("/")).write_bytes(host)


def _build_base(recipe: str, log: Path, progress: Progress) -> None:
    reason = debootstrap_unavailable()
    if reason:
        raise KitUnavailable(reason)
    debootstrap = _debootstrap()
    assert debootstrap is not None
    mirror = debian_mirror()
    ca_bundle = host_ca_bundle()
    progress(f"debootstrap {SUITE} (minbase + {', '.join(BASE_PACKAGES)}) from {mirror} …")
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="rootfs-", dir=CACHE_DIR))
    try:
        rootfs = workdir / "rootfs"
        command = [
            debootstrap,
            "--variant=minbase",
            "--include=" + ",".join(BASE_PACKAGES),
            SUITE,
            str(rootfs),
            mirror,
        ]
        stage = _DEBOOTSTRAP_STAGES.match
        returncode, tail = _run_logged(
            command, log, progress, lambda line: f"  {line[3:]}" if stage(line) else None
        )
        if returncode != 0:
            raise BuildError(BASE.name, tail, log)
        progress(f"importing {BASE.name} …")
        _slim_and_configure(rootfs, ca_bundle)
        changes = [
            "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "ENV LANG=C.UTF-8",
            f"ENV PIP_CERT={CA_BUNDLE_IN_IMAGE}",
        ]
        index_url = pip_settings().get("index-url")
        if index_url:
            changes.append(f"ENV PIP_INDEX_URL={index_url}")
        changes += ['CMD ["python3"]', f"LABEL {RECIPE_LABEL}={recipe}"]
        importer = [_docker(), "import", *(f"--change={c}" for c in changes), "-", BASE.name]
        with subprocess.Popen(
            ["tar", "--numeric-owner", "-C", str(rootfs), "-cf", "-", "."],
            stdout=subprocess.PIPE,
        ) as tar:
            imported = subprocess.run(
                importer, stdin=tar.stdout, capture_output=True, text=True, check=False
            )
        with log.open("a", encoding="utf-8") as sink:
            sink.write("$ " + " ".join(importer) + "\n" + imported.stdout + imported.stderr)
        if tar.returncode != 0 or imported.returncode != 0:
            raise BuildError(BASE.name, (imported.stderr or "tar failed").strip(), log)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _build_service(spec: Spec, recipe: str, rebuild: bool, log: Path, progress: Progress) -> None:
    progress(f"building {spec.name} …")
    command = [
        _docker(),
        "build",
        f"--build-arg=BASE={BASE.name}",
        f"--label={RECIPE_LABEL}={recipe}",
        f"--tag={spec.name}",
        "--force-rm",
        *(["--no-cache"] if rebuild else []),
        str(spec.context),
    ]
    # The classic builder: it uses a local FROM image as is and never pulls it.
    env = {**os.environ, "DOCKER_BUILDKIT": "0"}
    returncode, tail = _run_logged(
        command,
        log,
        progress,
        lambda line: f"  {line}" if line.startswith("Step ") else None,
        env=env,
    )
    if returncode != 0:
        raise BuildError(spec.name, tail, log)


def _select(only: Collection[str] | None) -> tuple[set[str], set[str]]:
    """(keys to ensure, keys asked for explicitly); unknown names raise ValueError."""
    if only is None:
        every = {spec.key for spec in SPECS}
        return every, every
    asked: set[str] = set()
    for name in only:
        spec = next((s for s in SPECS if name in (s.key, s.name)), None)
        if spec is None:
            known = ", ".join(s.key for s in SPECS)
            raise ValueError(f"unknown image {name!r} (known: {known})")
        asked.add(spec.key)
    return asked | {BASE.key}, asked


def _locust_pin_warning(spec: Spec) -> str | None:
    """For the Locust image: a warning if requirements-dev.txt pins another version."""
    requirements = REPO_ROOT / "requirements-dev.txt"
    if spec.key != "locust" or not requirements.is_file():
        return None
    found = re.search(r"^locust==(\S+)", requirements.read_text(), re.M)
    image_version = spec.name.rpartition(":")[2]
    if found and found.group(1) != image_version:
        return (
            f"warning: requirements-dev.txt pins locust=={found.group(1)}, "
            f"the stand-in image is {image_version}"
        )
    return None


def ensure_images(
    rebuild: bool = False,
    only: Collection[str] | None = None,
    progress: Progress = _stderr,
) -> list[Result]:
    """Build every selected image that is missing or whose recipe changed; one Result each.

    Raises KitUnavailable when nothing can be built here, BuildError when a build fails
    (with the results so far), ValueError for an unknown name in `only`.
    """
    selected, asked = _select(only)
    reason = engine_reachable()
    if reason:
        raise KitUnavailable(reason)
    for spec in SPECS:
        warning = _locust_pin_warning(spec) if spec.key in selected else None
        if warning:
            progress(warning)
    base = base_recipe()
    results: list[Result] = []
    replaced: list[str] = []
    for spec in SPECS:
        if spec.key not in selected:
            continue
        started = time.monotonic()
        recipe = base if spec is BASE else service_recipe(spec, base)
        current = _inspect(spec.name)
        forced = rebuild and spec.key in asked
        if current is not None and current[1] == recipe and not forced:
            progress(f"cached: {spec.name}")
            state = "cached"
        else:
            log = CACHE_DIR / "logs" / f"{spec.key}.log"
            try:
                if spec is BASE:
                    _build_base(recipe, log, progress)
                else:
                    _build_service(spec, recipe, forced, log, progress)
            except BuildError as exc:
                exc.results = results
                raise
            new = _inspect(spec.name)
            if current is not None and new is not None and new[0] != current[0]:
                replaced.append(current[0])
            state = "built"
        seconds = round(time.monotonic() - started, 1)
        results.append(Result(spec.name, state, seconds, _size_mb(spec.name), recipe))
        if state == "built":
            progress(f"built: {spec.name} in {seconds:.0f} s")
    # Images these builds replaced: remove them unless something still uses them.
    for image_id in reversed(replaced):
        subprocess.run([_docker(), "image", "rm", image_id], capture_output=True, check=False)
    return results
