"""deploy/: the Kubernetes manifests and the systemd unit.

The manifests are validated offline, in strict mode, against a fixed Kubernetes version, and
checked against what the gateway really does: its port, its /ready and /health routes, its admin
token variable, its drain time on SIGTERM and the user and cache folder of the Docker image.
"""

from __future__ import annotations

import configparser
import dataclasses
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from basic_inference_server.config import GatewayConfig, read_config_file
from basic_inference_server.gateway.auth import ENV_VAR as TOKEN_ENV_VAR
from basic_inference_server.gateway.cli import EXIT_CONFIG, build_parser

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
UNIT = ROOT / "deploy" / "systemd" / "basic-inference-server.service"
KUSTOMIZATION = "kustomization.yaml"
SECRET_EXAMPLE = "secret.yaml"  # kept out of the kustomization: applying it would reset the user's Secret

# A fixed version, so that a new kubernetes-validate release cannot change the verdict; the schemas
# ship inside the package. 1.30 is the oldest release these manifests claim to support.
KUBERNETES_VERSION = "1.30"

# FlaskGateway._shutdown: after SHUTDOWN_GRACE for the requests in flight, at least 1 s for the
# model servers to stop and up to 2 s to flush the last answers.
DRAIN_OVERHEAD_S = 3.0

MANIFESTS = sorted(p.name for p in K8S.glob("*.yaml") if p.name != KUSTOMIZATION)
REDIS = K8S / "redis"  # the optional Redis of the job store: an overlay of deploy/k8s/
REDIS_MANIFESTS = ("redis-statefulset.yaml", "redis-service.yaml")


def load(name: str) -> dict[str, Any]:
    """The one resource of ``deploy/k8s/<name>``."""
    docs = [d for d in yaml.safe_load_all((K8S / name).read_text(encoding="utf-8")) if d]
    assert len(docs) == 1, f"{name}: expected one resource per file, found {len(docs)}"
    return docs[0]


def by_kind(kind: str) -> dict[str, Any]:
    found = [doc for doc in map(load, MANIFESTS) if doc["kind"] == kind]
    assert len(found) == 1, f"expected one {kind} in deploy/k8s, found {len(found)}"
    return found[0]


def gateway_container() -> dict[str, Any]:
    containers = by_kind("Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def container_port(container: dict[str, Any], port: int | str) -> int:
    """Resolve a probe's or a Service's port (a number or a port name) to the container's port."""
    ports = {p["containerPort"]: p["containerPort"] for p in container["ports"]}
    ports.update({p["name"]: p["containerPort"] for p in container["ports"] if "name" in p})
    assert port in ports, f"port {port!r} is not a port of the container"
    return ports[port]


def shutdown_grace() -> float:
    """SHUTDOWN_GRACE as the image runs it: config_gateway.txt's value, else the default."""
    default = next(f.default for f in dataclasses.fields(GatewayConfig) if f.name == "shutdown_grace")
    return float(read_config_file(ROOT / "config_gateway.txt").get("SHUTDOWN_GRACE", default))


def dockerfile() -> str:
    return (ROOT / "Dockerfile").read_text(encoding="utf-8")


# -- Kubernetes: schema validation ---------------------------------------------------------------


def test_the_folder_holds_the_expected_resources() -> None:
    kinds = sorted(load(name)["kind"] for name in MANIFESTS)
    assert kinds == ["Deployment", "HorizontalPodAutoscaler", "Secret", "Service"]


@pytest.mark.parametrize("name", [*MANIFESTS, *(f"redis/{name}" for name in REDIS_MANIFESTS)])
def test_manifest_is_valid_for_the_kubernetes_version(name: str, no_network: None) -> None:
    resource = load(name)
    try:
        checked = kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        where = ".".join(str(part) for part in exc.path)
        raise AssertionError(f"{name}: {where}: {exc.message}") from None  # the schema dump is too long to show
    assert checked == KUBERNETES_VERSION


def test_strict_validation_rejects_unknown_fields_and_wrong_types(no_network: None) -> None:
    """The check above can fail: a misspelt field or a wrong type is an error, offline."""

    def service(**spec: Any) -> dict[str, Any]:
        return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"},
                "spec": {"ports": [{"port": 5002}], **spec}}

    kubernetes_validate.validate(service(), KUBERNETES_VERSION, strict=True)
    with pytest.raises(kubernetes_validate.ValidationError) as misspelt:
        kubernetes_validate.validate(service(selecter={"a": "b"}), KUBERNETES_VERSION, strict=True)
    assert "'selecter' was unexpected" in misspelt.value.message
    with pytest.raises(kubernetes_validate.ValidationError) as wrong_type:
        kubernetes_validate.validate(service(type=["ClusterIP"]), KUBERNETES_VERSION, strict=True)
    assert "is not of type" in wrong_type.value.message


def test_kustomization_applies_everything_but_the_secret_example() -> None:
    kustomization = yaml.safe_load((K8S / KUSTOMIZATION).read_text(encoding="utf-8"))
    assert kustomization["kind"] == "Kustomization"
    listed = kustomization["resources"]
    assert len(listed) == len(set(listed))
    assert sorted(listed) == sorted(set(MANIFESTS) - {SECRET_EXAMPLE})


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kustomization_builds_with_kubectl() -> None:
    """``kubectl kustomize`` renders offline what ``kubectl apply -k deploy/k8s/`` would send."""
    done = subprocess.run(["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    kinds = sorted(doc["kind"] for doc in yaml.safe_load_all(done.stdout) if doc)
    assert kinds == ["Deployment", "HorizontalPodAutoscaler", "Service"]


# -- Kubernetes: the optional Redis of the job store (deploy/k8s/redis/) --------------------------



def test_the_redis_overlay_points_every_gateway_pod_at_its_redis() -> None:
    """The overlay adds Redis to deploy/k8s/ and gives the gateway container BIS_JOB_STORE naming
    the headless Service's name and port, which selects the StatefulSet's pods; Redis flushes its
    append-only file at every write, on a persistent volume."""
    from basic_inference_server.config import JOB_STORE_ENV

    kustomization = yaml.safe_load((REDIS / KUSTOMIZATION).read_text(encoding="utf-8"))
    assert sorted(kustomization["resources"]) == sorted(["../", *REDIS_MANIFESTS])
    patch = yaml.safe_load((REDIS / kustomization["patches"][0]["path"]).read_text(encoding="utf-8"))
    assert patch["kind"] == "Deployment" and patch["metadata"]["name"] == by_kind("Deployment")["metadata"]["name"]
    (container,) = patch["spec"]["template"]["spec"]["containers"]
    assert container["name"] == gateway_container()["name"]
    address = next(e["value"] for e in container["env"] if e["name"] == JOB_STORE_ENV)
    service, statefulset = load("redis/redis-service.yaml"), load("redis/redis-statefulset.yaml")
    assert service["spec"]["clusterIP"] == "None"  # headless: the pod's own address, no virtual IP
    assert address == f"redis://{service['metadata']['name']}:{service['spec']['ports'][0]['port']}/0"
    labels = statefulset["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    (redis,) = statefulset["spec"]["template"]["spec"]["containers"]
    args = " ".join(redis["args"])
    assert "--appendonly yes" in args and "--appendfsync always" in args
    assert redis["volumeMounts"][0]["mountPath"] == "/data" and statefulset["spec"]["volumeClaimTemplates"]
    assert statefulset["spec"]["replicas"] == 1


# -- Kubernetes: consistency with the gateway ------------------------------------------------------


def test_probes_use_the_gateway_routes_on_its_port() -> None:
    container = gateway_container()
    gateway_port = build_parser().get_default("port")
    assert [p["containerPort"] for p in container["ports"]] == [gateway_port]
    expected = {"readinessProbe": "/ready", "livenessProbe": "/health", "startupProbe": "/health"}
    for probe, path in expected.items():
        if probe == "startupProbe" and probe not in container:
            continue
        get = container[probe]["httpGet"]
        assert get["path"] == path, probe
        assert container_port(container, get["port"]) == gateway_port, probe
    liveness = container["livenessProbe"]
    # A gateway is restarted only after several missed probes, never on one slow answer.
    assert liveness["failureThreshold"] >= 3
    assert liveness["periodSeconds"] * liveness["failureThreshold"] >= 20


def test_admin_token_comes_from_the_secret_in_the_folder() -> None:
    env = {item["name"]: item for item in gateway_container()["env"]}
    token = env[TOKEN_ENV_VAR]
    assert "value" not in token, "the admin token must not be written in the Deployment"
    ref = token["valueFrom"]["secretKeyRef"]
    secret = by_kind("Secret")
    assert secret["metadata"]["name"] == ref["name"]
    assert ref["key"] in {**secret.get("data", {}), **secret.get("stringData", {})}


def test_service_sends_traffic_to_the_gateway_pods() -> None:
    deployment, service = by_kind("Deployment"), by_kind("Service")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert service["spec"]["type"] == "ClusterIP"
    gateway_port = build_parser().get_default("port")
    [port] = service["spec"]["ports"]
    assert port["port"] == gateway_port
    assert container_port(gateway_container(), port.get("targetPort", port["port"])) == gateway_port


def test_hpa_scales_the_deployment_on_cpu() -> None:
    deployment, hpa = by_kind("Deployment"), by_kind("HorizontalPodAutoscaler")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == (
        deployment["apiVersion"], "Deployment", deployment["metadata"]["name"])
    assert hpa["apiVersion"] == "autoscaling/v2"
    [metric] = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"
    assert metric["resource"]["target"]["type"] == "Utilization"
    assert 2 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    # The HPA owns the count: a `replicas` in the Deployment would reset it on every apply.
    assert "replicas" not in deployment["spec"]
    # CPU utilization is a percentage of the request: without one the HPA cannot act.
    assert "cpu" in gateway_container()["resources"]["requests"]


def test_resources_are_bounded() -> None:
    resources = gateway_container()["resources"]
    for kind in ("requests", "limits"):
        assert set(resources[kind]) >= {"cpu", "memory"}, kind


def test_pods_outlive_the_gateway_drain() -> None:
    pod = by_kind("Deployment")["spec"]["template"]["spec"]
    pre_stop = gateway_container().get("lifecycle", {}).get("preStop", {})
    pre_stop_s = 0.0
    if pre_stop:
        command = pre_stop["exec"]["command"]
        assert command[0] == "sleep" and len(command) == 2, command
        pre_stop_s = float(command[1])
    needed = pre_stop_s + shutdown_grace() + DRAIN_OVERHEAD_S
    assert pod["terminationGracePeriodSeconds"] > needed


def test_pod_runs_as_the_image_user_with_a_per_pod_cache() -> None:
    deployment = by_kind("Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = gateway_container()
    assert container["image"] == "basic_inference_server:latest"
    assert container["imagePullPolicy"] == "IfNotPresent"
    [uid] = re.findall(r"--uid (\d+)", dockerfile())
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == int(uid)
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    [volume_path] = re.findall(r"^VOLUME (\S+)$", dockerfile(), flags=re.MULTILINE)
    [mount] = container["volumeMounts"]
    assert mount["mountPath"] == volume_path
    [volume] = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert "emptyDir" in volume
    env = {item["name"]: item.get("value") for item in container["env"]}
    assert env["AID_APP_DOCKER"] == "Yes"  # what the Dockerfile sets; the start banner reports it


# -- systemd ---------------------------------------------------------------------------------------


def read_unit() -> configparser.ConfigParser:
    unit = configparser.ConfigParser(strict=False, interpolation=None, empty_lines_in_values=False)
    unit.optionxform = str  # systemd keys are case-sensitive
    unit.read_string(UNIT.read_text(encoding="utf-8"))
    return unit


def seconds(value: str) -> float:
    """A systemd time span of one unit: ``30``, ``30s``, ``2min``."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(s|sec|min)?", value.strip())
    assert match, f"unsupported time span {value!r}"
    return float(match[1]) * (60 if match[2] == "min" else 1)


def test_systemd_unit_runs_the_gateway_from_its_venv() -> None:
    service = read_unit()["Service"]
    workdir = service["WorkingDirectory"]
    command = shlex.split(service["ExecStart"])
    assert command[0] == f"{workdir}/.venv/bin/python"
    assert command[1] == "run_gateway.py"
    options = build_parser().parse_args(command[2:])  # the flags exist
    assert options.port == build_parser().get_default("port")
    assert service["User"] not in {"", "root"}
    assert service["EnvironmentFile"].startswith("/etc/")
    assert read_unit()["Install"]["WantedBy"] == "multi-user.target"


def test_systemd_unit_restarts_on_failure_and_drains_on_stop() -> None:
    service = read_unit()["Service"]
    assert service["Restart"] == "on-failure"
    assert seconds(service["RestartSec"]) >= 1
    assert str(EXIT_CONFIG) in service["RestartPreventExitStatus"].split()
    assert service["KillSignal"] == "SIGTERM"
    assert service["KillMode"] == "mixed"
    assert seconds(service["TimeoutStopSec"]) > shutdown_grace() + DRAIN_OVERHEAD_S


def test_systemd_unit_is_hardened_but_can_write_its_cache() -> None:
    service = read_unit()["Service"]
    assert service["NoNewPrivileges"] == "yes"
    assert service["ProtectSystem"] == "strict"
    assert service["PrivateTmp"] == "yes"
    assert f"{service['WorkingDirectory']}/_cache" in service["ReadWritePaths"].split()


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    """``systemd-analyze verify`` reports unknown keys and bad values (as warnings, exit code 0,
    so any output about the unit fails here). It also wants ExecStart's program to exist, so the
    unit is checked with its install folder moved to a temporary one holding this interpreter."""
    workdir = read_unit()["Service"]["WorkingDirectory"]
    app = tmp_path / "app"
    (app / ".venv" / "bin").mkdir(parents=True)
    (app / ".venv" / "bin" / "python").symlink_to(sys.executable)
    (app / "_cache").mkdir()
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text(encoding="utf-8").replace(workdir, str(app)), encoding="utf-8")
    done = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    about_unit = [line for line in (done.stdout + done.stderr).splitlines() if UNIT.name in line]
    assert done.returncode == 0 and not about_unit, done.stdout + done.stderr
