"""deploy/k8s/split/: the gateway and one endpoint's model servers as separate Deployments.

Validated offline in strict mode like deploy/k8s/, and checked against what the code does: the
shared configuration parses, the gateway's URLS name the endpoint's headless Service and port,
the servers run the image's ``endpoint`` command on that port with /health probes, both sides
take BIS_ENDPOINT_TOKEN from the same Secret, and each pod outlives its drain.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from test_deploy_manifests import DRAIN_OVERHEAD_S, KUBERNETES_VERSION

from basic_inference_server.config import parse_config
from basic_inference_server.gateway.cli import build_parser
from basic_inference_server.webutil import ENDPOINT_TOKEN_ENV

ROOT = Path(__file__).resolve().parents[2]
SPLIT = ROOT / "deploy" / "k8s" / "split"
MANIFESTS = sorted(p.name for p in SPLIT.glob("*.yaml") if p.name != "kustomization.yaml")


def load(name: str) -> dict[str, Any]:
    docs = [d for d in yaml.safe_load_all((SPLIT / name).read_text(encoding="utf-8")) if d]
    assert len(docs) == 1, name
    return docs[0]


def container(name: str) -> dict[str, Any]:
    [only] = load(name)["spec"]["template"]["spec"]["containers"]
    return only


def config() -> dict[str, Any]:
    return json.loads(load("configmap.yaml")["data"]["config_gateway.txt"])


def env_of(spec: dict[str, Any]) -> dict[str, Any]:
    return {item["name"]: item for item in spec["env"]}


@pytest.mark.parametrize("name", MANIFESTS)
def test_manifest_is_valid_for_the_kubernetes_version(name: str, no_network: None) -> None:
    try:
        kubernetes_validate.validate(load(name), KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        raise AssertionError(f"{name}: {'.'.join(map(str, exc.path))}: {exc.message}") from None


def test_kustomization_applies_everything_but_the_secret_example() -> None:
    listed = yaml.safe_load((SPLIT / "kustomization.yaml").read_text(encoding="utf-8"))["resources"]
    assert sorted(listed) == sorted(set(MANIFESTS) - {"secret.yaml"})


def test_the_shared_configuration_parses_and_points_at_the_headless_service() -> None:
    parsed = parse_config(config(), ROOT)
    remote = [e for e in parsed.endpoints if e.is_remote]
    assert [e.name for e in remote] == ["dummy_model_demo2"]
    service = load("endpoint-service.yaml")
    assert service["spec"]["clusterIP"] == "None"  # one address per pod, balanced by the gateways
    [(host, port)] = remote[0].urls
    assert host == service["metadata"]["name"]
    [service_port] = service["spec"]["ports"]
    assert port == service_port["port"]
    server = container("endpoint-deployment.yaml")
    assert server["args"][:2] == ["endpoint", "dummy_model_demo2"]
    assert server["args"][server["args"].index("--port") + 1] == str(port)
    assert server["args"][server["args"].index("--host") + 1] == "0.0.0.0"
    assert server["readinessProbe"]["httpGet"] == {"path": "/health", "port": port}
    pods = load("endpoint-deployment.yaml")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pods.items()


def test_both_sides_take_the_endpoint_secret_from_one_secret() -> None:
    refs = []
    for name in ("gateway-deployment.yaml", "endpoint-deployment.yaml"):
        variable = env_of(container(name))[ENDPOINT_TOKEN_ENV]
        assert "value" not in variable, name
        refs.append(variable["valueFrom"]["secretKeyRef"])
    assert refs[0] == refs[1]
    secret = load("secret.yaml")
    assert secret["metadata"]["name"] == refs[0]["name"] and refs[0]["key"] in secret["stringData"]


def test_gateway_serves_its_port_and_readiness() -> None:
    gateway = container("gateway-deployment.yaml")
    port = build_parser().get_default("port")
    assert [p["containerPort"] for p in gateway["ports"]] == [port]
    assert gateway["readinessProbe"]["httpGet"] == {"path": "/ready", "port": port}


@pytest.mark.parametrize("name", ["gateway-deployment.yaml", "endpoint-deployment.yaml"])
def test_pods_outlive_their_drain_and_update_one_at_a_time(name: str) -> None:
    deployment = load(name)
    pod = deployment["spec"]["template"]["spec"]
    pre_stop = float(container(name)["lifecycle"]["preStop"]["exec"]["command"][1])
    assert pod["terminationGracePeriodSeconds"] >= pre_stop + config()["SHUTDOWN_GRACE"] + DRAIN_OVERHEAD_S
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    for volume in pod["volumes"]:
        if "configMap" in volume:
            assert volume["configMap"]["name"] == load("configmap.yaml")["metadata"]["name"]
