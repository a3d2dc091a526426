"""The Kubernetes base in k8s/: rendered with the real `kubectl kustomize`, validated
with `kubernetes-validate --strict` against every Kubernetes version we support, then
checked for what a schema cannot know (restricted Pod Security, probes, the shutdown
budget, workers matched to the CPU limit, no `latest`, whose X-Forwarded-For is believed)."""

from __future__ import annotations

import functools
import math
import os
import re
from pathlib import Path
from typing import Any

import pytest

from app.proxy_trust import Listener, shared_identity_warning, trusted_networks
from app.settings import Settings
from scripts.stack import REPO_ROOT
from tests.deploy_tools import load_yaml_documents, require, run_tool

# Floor: the preStop `sleep` action is on by default from 1.30 (GA in 1.34). Ceiling: the
# newest schemas kubernetes-validate ships. docs/kubernetes.md lists the same range.
SUPPORTED_VERSIONS = [f"1.{minor}.0" for minor in range(30, 38)]
SECRET_EXAMPLE = REPO_ROOT / "k8s" / "examples" / "secret.example.yaml"
MULTIPROC_DIR = "/run/parity/metrics"  # the Dockerfile's PROMETHEUS_MULTIPROC_DIR
KUBERNETES_DOC = REPO_ROOT / "docs" / "kubernetes.md"


@functools.cache
def rendered(kustomization: str = "k8s/") -> str:
    kubectl = require("kubectl", "install kubectl (it carries kustomize)")
    result = run_tool([kubectl, "kustomize", kustomization])
    assert result.returncode == 0, result.stderr
    return result.stdout


def find_values(tree: Any, key: str) -> list[Any]:
    """Every value stored under `key`, at any depth."""
    if isinstance(tree, dict):
        here = [tree[key]] if key in tree else []
        return here + [v for value in tree.values() for v in find_values(value, key)]
    if isinstance(tree, list):
        return [v for item in tree for v in find_values(item, key)]
    return []


def resources(kustomization: str = "k8s/") -> dict[str, dict[str, Any]]:
    """Rendered resources by `Kind/name`."""
    documents = load_yaml_documents(rendered(kustomization))
    return {f"{d['kind']}/{d['metadata']['name']}": d for d in documents}  # type: ignore[index]


def resource(kind: str, name_prefix: str, kustomization: str = "k8s/") -> dict[str, Any]:
    found = resources(kustomization).items()
    (match,) = [d for key, d in found if key.startswith(f"{kind}/{name_prefix}")]
    return match


def pod_templates() -> dict[str, dict[str, Any]]:
    found = {}
    for key, document in resources().items():
        spec = document.get("spec", {})
        if "template" in spec:
            found[key] = spec["template"]["spec"]
    return found


def api_container(kustomization: str = "k8s/") -> dict[str, Any]:
    deployment = resource("Deployment", "parity-api", kustomization)
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def container_variable(name: str, kustomization: str = "k8s/") -> str | None:
    """The value the api container gets for `name`, as the kubelet resolves it: an `env`
    entry wins over `envFrom`, and among `envFrom` sources the last one holding it."""
    container = api_container(kustomization)
    for entry in container.get("env", []):
        if entry["name"] == name:
            value: str | None = entry.get("value")  # a valueFrom is no literal setting
            return value
    config_maps = {
        key.split("/", 1)[1]: document.get("data", {})
        for key, document in resources(kustomization).items()
        if key.startswith("ConfigMap/")
    }
    value = None
    for source in container.get("envFrom", []):
        data = config_maps.get(source.get("configMapRef", {}).get("name"), {})
        prefix = source.get("prefix", "")
        value = next((v for k, v in data.items() if prefix + k == name), value)
    return value


def config_values() -> dict[str, str]:
    data: dict[str, str] = resource("ConfigMap", "parity-api-config")["data"]
    return data


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_manifests_validate_strictly(version: str) -> None:
    """No unknown field, no wrong type, for each supported Kubernetes version."""
    validate = require("kubernetes-validate", "`make venv` installs it")
    result = run_tool([validate, "--strict", "--quiet", "-k", version, "-"], input=rendered())
    assert result.returncode == 0, result.stdout + result.stderr


def test_strict_validation_rejects_a_misspelt_field() -> None:
    """The validator is not a no-op: one typo in a field name fails it."""
    validate = require("kubernetes-validate", "`make venv` installs it")
    broken = rendered().replace("terminationGracePeriodSeconds", "terminationGracePeriod", 1)
    result = run_tool(
        [validate, "--strict", "--quiet", "-k", SUPPORTED_VERSIONS[0], "-"], input=broken
    )
    assert result.returncode != 0
    assert "terminationGracePeriod" in result.stdout + result.stderr


def test_the_secret_example_validates_and_provides_every_referenced_key() -> None:
    validate = require("kubernetes-validate", "`make venv` installs it")
    result = run_tool(
        [validate, "--strict", "--quiet", "-k", SUPPORTED_VERSIONS[-1], str(SECRET_EXAMPLE)]
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (example,) = load_yaml_documents(SECRET_EXAMPLE.read_text())
    provided = set(example["stringData"])  # type: ignore[call-overload]
    references = [ref for d in resources().values() for ref in find_values(d, "secretKeyRef")]
    assert {ref["name"] for ref in references} == {example["metadata"]["name"]}  # type: ignore[index]
    assert {ref["key"] for ref in references} <= provided


def test_base_contains_what_a_production_rollout_needs() -> None:
    kinds = {key.split("/")[0] for key in resources()}
    assert kinds == {
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "Job",
        "ConfigMap",
    }
    assert "kind: Secret" not in rendered()  # referenced, never committed


@pytest.mark.parametrize("workload", ["Deployment/parity-api", "Job/parity-migrate"])
def test_pod_security_restricted(workload: str) -> None:
    """The "restricted" Pod Security Standard, for every pod the base creates."""
    pod = pod_templates()[workload]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        assert not pod.get(key)
    for volume in pod.get("volumes", []):
        assert set(volume) <= {"name", "emptyDir", "configMap", "secret", "projected"}
    for container in pod["containers"]:
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False
        assert context["readOnlyRootFilesystem"] is True
        assert context["capabilities"] == {"drop": ["ALL"]}
        assert not context.get("privileged")


def test_images_are_pinned() -> None:
    images = re.findall(r"image: (\S+)", rendered())
    assert images
    for image in images:
        assert re.search(r":[\w.-]+$", image), f"{image} has no tag"
        assert not image.endswith(":latest"), image


def test_probes_are_split() -> None:
    """Liveness asks /health (the process), readiness /ready (dependencies); a startup
    probe gives boot time without a long liveness delay."""
    container = api_container()
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert container["startupProbe"]["httpGet"]["path"] == "/health"
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 30


def test_workers_follow_the_cpu_limit() -> None:
    """GUNICORN_WORKERS is read from limits.cpu (rounded up), or equals it."""
    container = api_container()
    cpu_limit = container["resources"]["limits"]["cpu"]
    cpus = int(cpu_limit[:-1]) / 1000 if cpu_limit.endswith("m") else float(cpu_limit)
    (workers,) = [e for e in container["env"] if e["name"] == "GUNICORN_WORKERS"]
    if "valueFrom" in workers:
        field = workers["valueFrom"]["resourceFieldRef"]
        assert (field["resource"], str(field.get("divisor", "1"))) == ("limits.cpu", "1")
    else:
        assert int(workers["value"]) == math.ceil(cpus)
    assert "GUNICORN_WORKERS" not in config_values()
    assert {"cpu", "memory"} <= set(container["resources"]["limits"])
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])


def test_prometheus_multiprocess_dir_is_a_writable_memory_volume() -> None:
    container = api_container()
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert MULTIPROC_DIR in mounts
    pod = resource("Deployment", "parity-api")["spec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mounts[MULTIPROC_DIR]]
    assert volume["emptyDir"]["medium"] == "Memory"


def test_rollouts_and_disruptions_keep_capacity() -> None:
    deployment = resource("Deployment", "parity-api")
    assert "replicas" not in deployment["spec"]  # the HPA owns it
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    hpa = resource("HorizontalPodAutoscaler", "parity-api")
    assert hpa["spec"]["minReplicas"] >= 2
    pdb = resource("PodDisruptionBudget", "parity-api")
    assert pdb["spec"]["selector"] == deployment["spec"]["selector"]
    service = resource("Service", "parity-api")
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]


def test_migration_job_runs_alembic_from_the_same_image() -> None:
    job = resource("Job", "parity-migrate")
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["alembic", "upgrade", "head"]
    assert container["image"] == api_container()["image"]
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"


def test_every_variable_given_to_the_app_is_a_setting() -> None:
    """Field name = variable name (app/settings.py): a misspelt variable would be
    ignored silently, so each one the base sets must be a setting, or read by the
    OpenTelemetry SDK (OTEL_*) or prometheus_client."""
    known = set(Settings.model_fields) | {"PROMETHEUS_MULTIPROC_DIR"}
    containers = [c for pod in pod_templates().values() for c in pod["containers"]]
    variables = set(config_values()) | {e["name"] for c in containers for e in c.get("env", [])}
    unknown = {v for v in variables if v not in known and not v.startswith("OTEL_")}
    assert not unknown


def documented_overlay(directory: Path) -> str:
    """The overlay docs/kubernetes.md tells a user to write (its "Trusted proxies"
    section), written to `directory` with its path to the base adjusted; returns the
    directory, for `kubectl kustomize`."""
    section = KUBERNETES_DOC.read_text().split("## Trusted proxies", 1)[1].split("\n## ", 1)[0]
    (block,) = [b for b in re.findall(r"```yaml\n(.*?)```", section, re.S) if "merge" in b]
    base = os.path.relpath(REPO_ROOT / "k8s", directory)
    assert "  - ../../k8s\n" in block
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "kustomization.yaml").write_text(block.replace("../../k8s", base))
    return str(directory)


def start_warning(config: dict[str, str], trusted: str) -> str | None:
    """The warning a pod's master logs at start (app/proxy_trust.py) for the IPv4 TCP bind
    of `config` and FORWARDED_ALLOW_IPS=`trusted`."""
    bind = config["GUNICORN_BIND"]
    return shared_identity_warning([Listener(bind.rsplit(":", 1)[0], bind)], trusted)


def test_the_base_trusts_no_proxy_by_default_and_says_so_at_start() -> None:
    """The base's FORWARDED_ALLOW_IPS, as the api container gets it, is never "*" and
    trusts loopback only: no peer in the cluster is believed until an overlay names the
    ingress, and until then every pod logs the warning of app/proxy_trust.py."""
    trusted = container_variable("FORWARDED_ALLOW_IPS")
    assert trusted is not None
    assert "*" not in trusted
    networks = trusted_networks(trusted)
    assert networks
    assert all(network.is_loopback for network in networks)
    assert start_warning(config_values(), trusted)


def test_the_documented_overlay_sets_the_trusted_proxy_range(tmp_path: Path) -> None:
    """The overlay of docs/kubernetes.md (one `behavior: merge` literal) renders, validates,
    and its range is what the api container gets as FORWARDED_ALLOW_IPS; the base's
    other settings are kept, the ConfigMap's name changes (so pods roll), and the
    start-up warning is gone."""
    overlay = documented_overlay(tmp_path / "overlays" / "prod")
    validate = require("kubernetes-validate", "`make venv` installs it")
    result = run_tool(
        [validate, "--strict", "--quiet", "-k", SUPPORTED_VERSIONS[-1], "-"],
        input=rendered(overlay),
    )
    assert result.returncode == 0, result.stdout + result.stderr

    trusted = container_variable("FORWARDED_ALLOW_IPS", overlay)
    (literal,) = re.findall(
        r"- FORWARDED_ALLOW_IPS=(\S+)", (Path(overlay) / "kustomization.yaml").read_text()
    )
    assert trusted == literal
    networks = trusted_networks(trusted)
    assert networks
    assert not any(network.is_loopback for network in networks)

    base = resource("ConfigMap", "parity-api-config")
    merged = resource("ConfigMap", "parity-api-config", overlay)
    assert merged["metadata"]["name"] != base["metadata"]["name"]
    assert merged["data"] == {**base["data"], "FORWARDED_ALLOW_IPS": trusted}
    assert start_warning(merged["data"], trusted) is None
