"""The Kubernetes base in k8s/: rendered with the real `kubectl kustomize`, validated
with `kubernetes-validate --strict` against every Kubernetes version we support, then
checked for what a schema cannot know (restricted Pod Security, probes, the shutdown
budget, workers matched to the CPU limit, no `latest`, whose X-Forwarded-For is believed,
secrets as files). The opt-in NetworkPolicy component (k8s/components/network-policy/)
is rendered on top of the base, validated the same way, and its rules checked."""

from __future__ import annotations

import functools
import math
import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from app.proxy_trust import Listener, shared_identity_warning, trusted_networks
from app.settings import SECRET_FIELDS, Settings
from parity.harness.repo import REPO_ROOT
from tests.deploy_tools import load_yaml_documents, require, run_tool

# Floor: the preStop `sleep` action is on by default from 1.30 (GA in 1.34). Ceiling: the
# newest schemas kubernetes-validate ships. docs/kubernetes.md lists the same range.
SUPPORTED_VERSIONS = [f"1.{minor}.0" for minor in range(30, 38)]
SECRET_EXAMPLE = REPO_ROOT / "k8s" / "examples" / "secret.example.yaml"
MULTIPROC_DIR = "/run/parity/metrics"  # the Dockerfile's PROMETHEUS_MULTIPROC_DIR
KUBERNETES_DOC = REPO_ROOT / "docs" / "kubernetes.md"
NETWORK_POLICY = REPO_ROOT / "k8s" / "components" / "network-policy"


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


def secret_references() -> tuple[set[str], set[str]]:
    """The Secrets the rendered base uses (by variable or volume) and the keys it names."""
    names: set[str] = set()
    keys: set[str] = set()
    for document in resources().values():
        for ref in find_values(document, "secretKeyRef"):
            names.add(ref["name"])
            keys.add(ref["key"])
        for volume in find_values(document, "secret"):
            names.add(volume["secretName"])
            keys |= {item["key"] for item in volume.get("items", [])}
    return names, keys


def test_the_secret_example_validates_and_provides_every_referenced_key() -> None:
    validate = require("kubernetes-validate", "`make venv` installs it")
    result = run_tool(
        [validate, "--strict", "--quiet", "-k", SUPPORTED_VERSIONS[-1], str(SECRET_EXAMPLE)]
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (example,) = load_yaml_documents(SECRET_EXAMPLE.read_text())
    provided = set(example["stringData"])  # type: ignore[call-overload]
    names, keys = secret_references()
    assert names == {example["metadata"]["name"]}  # type: ignore[index]
    assert keys <= provided
    assert {"DATABASE_URL", "REDIS_URL"} <= provided  # the API mounts every key
    # Each key becomes a file named after a setting (app/settings.py, SECRETS_DIR): a
    # misspelt key would be ignored silently, like a misspelt variable.
    assert provided <= set(Settings.model_fields)
    assert provided <= SECRET_FIELDS


def secret_mount(pod: dict[str, Any], container: dict[str, Any]) -> dict[str, Any]:
    """The container's mount of the Secret volume (exactly one)."""
    secret_volumes = {v["name"] for v in pod.get("volumes", []) if "secret" in v}
    (mount,) = [m for m in container.get("volumeMounts", []) if m["name"] in secret_volumes]
    return mount


@pytest.mark.parametrize("workload", ["Deployment/parity-api", "Job/parity-migrate"])
def test_secrets_are_files_in_the_secrets_dir_the_app_reads(workload: str) -> None:
    """The Secret is mounted read-only where the container's SECRETS_DIR says, readable
    by the app's group only (fsGroup, 0440); no secret is passed as a variable (where
    child processes and /proc/<pid>/environ would see it)."""
    pod = pod_templates()[workload]
    (container,) = pod["containers"]
    mount = secret_mount(pod, container)
    assert mount["readOnly"] is True
    if workload.startswith("Deployment/"):
        secrets_dir = container_variable("SECRETS_DIR")
    else:
        (entry,) = [e for e in container["env"] if e["name"] == "SECRETS_DIR"]
        secrets_dir = entry["value"]
    assert secrets_dir == mount["mountPath"]
    # Not /run/secrets itself: /var/run/secrets/kubernetes.io (the service-account
    # token, /var/run being /run in the image) must stay mountable.
    assert mount["mountPath"] != "/run/secrets"
    assert mount["mountPath"].startswith("/run/secrets/")
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert volume["secret"]["defaultMode"] == 0o440
    assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsUser"]
    assert not find_values(pod, "secretKeyRef")
    assert not {e["name"] for e in container.get("env", [])} & SECRET_FIELDS


def test_the_migration_job_gets_only_the_database_url() -> None:
    pod = pod_templates()["Job/parity-migrate"]
    (container,) = pod["containers"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == secret_mount(pod, container)["name"]]
    assert volume["secret"]["items"] == [{"key": "DATABASE_URL", "path": "DATABASE_URL"}]


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
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
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


# --- the NetworkPolicy component (k8s/components/network-policy/) ----------------------


def base_with_component(directory: Path) -> str:
    """An overlay of the base plus the NetworkPolicy component, as docs/kubernetes.md
    tells a user to write it; returns the directory, for `kubectl kustomize`."""
    directory.mkdir(parents=True, exist_ok=True)
    base = os.path.relpath(REPO_ROOT / "k8s", directory)
    component = os.path.relpath(NETWORK_POLICY, directory)
    (directory / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\n"
        "kind: Kustomization\n"
        f"resources:\n  - {base}\n"
        f"components:\n  - {component}\n"
    )
    return str(directory)


@pytest.fixture(scope="module")
def with_policies(tmp_path_factory: pytest.TempPathFactory) -> str:
    return base_with_component(tmp_path_factory.mktemp("network-policy"))


def policies(kustomization: str) -> dict[str, dict[str, Any]]:
    return {
        key.split("/", 1)[1]: document
        for key, document in resources(kustomization).items()
        if key.startswith("NetworkPolicy/")
    }


def test_the_base_has_no_network_policy() -> None:
    """Opt-in: a cluster whose CNI enforces none would accept it and do nothing, and its
    peers are cluster-specific."""
    assert not [key for key in resources() if key.startswith("NetworkPolicy/")]
    assert (NETWORK_POLICY / "kustomization.yaml").is_file()
    assert "kind: Component" in (NETWORK_POLICY / "kustomization.yaml").read_text()


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_base_with_network_policies_validates_strictly(version: str, with_policies: str) -> None:
    validate = require("kubernetes-validate", "`make venv` installs it")
    result = run_tool(
        [validate, "--strict", "--quiet", "-k", version, "-"], input=rendered(with_policies)
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_component_adds_only_network_policies(with_policies: str) -> None:
    base = resources()
    combined = resources(with_policies)
    added = {key.split("/")[0] for key in set(combined) - set(base)}
    assert added == {"NetworkPolicy"}
    for key, document in base.items():
        assert combined[key] == document, key


def test_every_pod_of_the_base_is_isolated_both_ways(with_policies: str) -> None:
    """Each workload's pods are selected by a policy with both policyTypes: whatever
    its rules do not admit is dropped, in and out."""
    found = policies(with_policies)
    for key in pod_templates():
        labels = resource(*key.split("/"))["spec"]["template"]["metadata"]["labels"]
        selecting = [
            p
            for p in found.values()
            if p["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
        ]
        assert selecting, f"{key}: no NetworkPolicy selects its pods"
        for policy in selecting:
            assert sorted(policy["spec"]["policyTypes"]) == ["Egress", "Ingress"]


def peers_and_ports(rules: list[dict[str, Any]], side: str) -> list[tuple[Any, set[Any]]]:
    """(peers, {(protocol, port)}) of each rule; neither may be empty (an empty `from`/
    `to` or `ports` means any peer or any port)."""
    found = []
    for rule in rules:
        peers = rule.get(side)
        ports = {(p.get("protocol", "TCP"), p["port"]) for p in rule.get("ports", [])}
        assert peers, f"a rule admits every peer: {rule}"
        assert ports, f"a rule admits every port: {rule}"
        for peer in peers:
            assert peer, f"an empty peer admits everything: {rule}"
            for selector in ("namespaceSelector", "podSelector"):
                if selector in peer:
                    assert peer[selector].get("matchLabels") or peer[selector].get(
                        "matchExpressions"
                    ), f"an empty {selector} selects everything: {rule}"
            if "ipBlock" in peer:
                assert peer["ipBlock"]["cidr"] not in ("0.0.0.0/0", "::/0"), rule
        found.append((peers, ports))
    return found


def namespace_of(peer: dict[str, Any]) -> str | None:
    """The namespace a peer's namespaceSelector names (None: the policy's own)."""
    if "namespaceSelector" not in peer:
        return None
    name: str = peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
    return name


def url_port(url: str, default: int) -> int:
    """The port a URL connects to (its scheme's default when it names none)."""
    return urlsplit(url).port or default


def test_the_api_policy_admits_the_ingress_and_prometheus_only(with_policies: str) -> None:
    """Ingress: the public port from the ingress controller's namespace, the internal
    port (metrics, readiness) from Prometheus' pods; the ports are the container's."""
    policy = policies(with_policies)["parity-api"]
    deployment = resource("Deployment", "parity-api")
    assert policy["spec"]["podSelector"] == deployment["spec"]["selector"]
    ports = {p["name"]: p["containerPort"] for p in api_container()["ports"]}
    (public, internal) = peers_and_ports(policy["spec"]["ingress"], "from")
    assert public[1] == {("TCP", ports["http"])} == {("TCP", 8000)}
    assert internal[1] == {("TCP", ports["internal"])} == {("TCP", 9000)}
    assert [namespace_of(peer) for peer in public[0]] == ["ingress-nginx"]
    (prometheus,) = internal[0]
    assert namespace_of(prometheus) == "monitoring"
    assert prometheus["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "prometheus"}


def test_the_api_policy_lets_out_dns_postgres_redis_and_the_collector(
    with_policies: str,
) -> None:
    """Egress: DNS (UDP and TCP) to the cluster DNS, then the ports the configuration
    actually uses: the Secret example's URLs and the collector endpoint."""
    policy = policies(with_policies)["parity-api"]
    (dns, postgres, redis, collector) = peers_and_ports(policy["spec"]["egress"], "to")
    assert dns[1] == {("UDP", 53), ("TCP", 53)}
    assert [namespace_of(peer) for peer in dns[0]] == ["kube-system"]
    (example,) = load_yaml_documents(SECRET_EXAMPLE.read_text())
    urls: dict[str, str] = example["stringData"]  # type: ignore[assignment]
    assert postgres[1] == {("TCP", url_port(urls["DATABASE_URL"], 5432))} == {("TCP", 5432)}
    assert redis[1] == {("TCP", url_port(urls["REDIS_URL"], 6379))} == {("TCP", 6379)}
    endpoint = config_values()["OTEL_EXPORTER_OTLP_ENDPOINT"]
    assert collector[1] == {("TCP", url_port(endpoint, 4318))} == {("TCP", 4318)}


def test_the_migration_policy_admits_nothing_and_reaches_postgres_only(
    with_policies: str,
) -> None:
    policy = policies(with_policies)["parity-migrate"]
    job = resource("Job", "parity-migrate")
    labels = job["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    assert policy["spec"].get("ingress", []) == []
    (dns, postgres) = peers_and_ports(policy["spec"]["egress"], "to")
    assert dns[1] == {("UDP", 53), ("TCP", 53)}
    assert postgres[1] == {("TCP", 5432)}


def json_pointer(document: Any, pointer: str) -> Any:
    for part in pointer.lstrip("/").split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        document = document[int(part)] if isinstance(document, list) else document[part]
    return document


def test_the_documented_network_policy_overlay_sets_the_peers(tmp_path: Path) -> None:
    """docs/kubernetes.md's overlay (base, component, a patch naming the cluster's
    namespaces) renders and validates, and each value its patch writes is in the
    rendered policy."""
    section = KUBERNETES_DOC.read_text().split("## Network policy", 1)[1].split("\n## ", 1)[0]
    (block,) = [b for b in re.findall(r"```yaml\n(.*?)```", section, re.S) if "components" in b]
    directory = tmp_path / "overlays" / "prod"
    directory.mkdir(parents=True)
    base = os.path.relpath(REPO_ROOT / "k8s", directory)
    assert "  - ../../k8s\n" in block
    assert "  - ../../k8s/components/network-policy\n" in block
    (directory / "kustomization.yaml").write_text(block.replace("../../k8s", base))
    overlay = str(directory)

    validate = require("kubernetes-validate", "`make venv` installs it")
    result = run_tool(
        [validate, "--strict", "--quiet", "-k", SUPPORTED_VERSIONS[-1], "-"],
        input=rendered(overlay),
    )
    assert result.returncode == 0, result.stdout + result.stderr

    found = policies(overlay)
    replaced = 0
    for patch in yaml.safe_load(block)["patches"]:
        policy = found[patch["target"]["name"]]
        for operation in yaml.safe_load(patch["patch"]):
            if operation["op"] in ("replace", "add"):
                assert json_pointer(policy, operation["path"]) == operation["value"]
                replaced += 1
    assert replaced >= 2  # the ingress controller's namespace and Prometheus'
    default = policies(base_with_component(tmp_path / "default"))["parity-api"]
    assert found["parity-api"]["spec"]["ingress"] != default["spec"]["ingress"]
