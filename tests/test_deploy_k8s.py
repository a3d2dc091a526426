"""The Kubernetes base in k8s/: rendered with the real `kubectl kustomize`, validated
with `kubernetes-validate --strict` against every Kubernetes version we support, then
checked for what a schema cannot know (restricted Pod Security, probes, the shutdown
budget, workers matched to the CPU limit, no `latest`)."""

from __future__ import annotations

import functools
import math
import re
from typing import Any

import pytest

from app.settings import Settings
from scripts.stack import REPO_ROOT
from tests.deploy_tools import load_yaml_documents, require, run_tool

# Floor: the preStop `sleep` action is on by default from 1.30 (GA in 1.34). Ceiling: the
# newest schemas kubernetes-validate ships. docs/kubernetes.md lists the same range.
SUPPORTED_VERSIONS = [f"1.{minor}.0" for minor in range(30, 38)]
SECRET_EXAMPLE = REPO_ROOT / "k8s" / "examples" / "secret.example.yaml"
MULTIPROC_DIR = "/run/parity/metrics"  # the Dockerfile's PROMETHEUS_MULTIPROC_DIR


@functools.cache
def rendered() -> str:
    kubectl = require("kubectl", "install kubectl (it carries kustomize)")
    result = run_tool([kubectl, "kustomize", "k8s/"])
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


def resources() -> dict[str, dict[str, Any]]:
    """Rendered resources by `Kind/name`."""
    return {f"{d['kind']}/{d['metadata']['name']}": d for d in load_yaml_documents(rendered())}  # type: ignore[index]


def resource(kind: str, name_prefix: str) -> dict[str, Any]:
    (match,) = [d for key, d in resources().items() if key.startswith(f"{kind}/{name_prefix}")]
    return match


def pod_templates() -> dict[str, dict[str, Any]]:
    found = {}
    for key, document in resources().items():
        spec = document.get("spec", {})
        if "template" in spec:
            found[key] = spec["template"]["spec"]
    return found


def api_container() -> dict[str, Any]:
    (container,) = resource("Deployment", "parity-api")["spec"]["template"]["spec"]["containers"]
    return container


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
