"""deploy/k8s/kserve/: the gateway as a KServe custom serving runtime (Open Inference Protocol, V2).

No cluster with KServe is reachable here, so everything is checked offline:

- every document parses;
- what is plain Kubernetes in them (resources of core kinds, and the containers, probes and volumes
  that a ServingRuntime and an InferenceService's model carry) passes kubernetes-validate in strict
  mode, as deploy/k8s/ does in test_deploy_manifests.py;
- the two KServe kinds, which kubernetes-validate does not know, pass a small structural schema
  written here from KServe's API types (pkg/apis/serving/v1alpha1/servingruntime_types.go,
  pkg/apis/serving/v1beta1/{predictor,predictor_model,component}.go);
- the values match what the gateway does and what deploy/k8s/deployment.yaml runs: port 5002, the
  V2 health routes, the image, its user, env and cache folder; and the InferenceService finds the
  runtime the way KServe's controller matches them.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from basic_inference_server.config import read_config_file
from basic_inference_server.gateway.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
KSERVE = ROOT / "deploy" / "k8s" / "kserve"
DEPLOYMENT = ROOT / "deploy" / "k8s" / "deployment.yaml"
KUBERNETES_VERSION = "1.30"  # the version test_deploy_manifests.py validates deploy/k8s/ against

GATEWAY_PORT = 5002
READY_PATH = "/v2/health/ready"
LIVE_PATH = "/v2/health/live"
PREDICTOR_CONTAINER = "kserve-container"  # constants.InferenceServiceContainerName in KServe
KSERVE_GROUP = "serving.kserve.io"
PROTOCOLS = ["v1", "v2", "grpc-v1", "grpc-v2"]  # constants.InferenceServiceProtocol
KNATIVE_PORT_NAMES = {"http1", "h2c"}  # the only port names Knative Serving accepts

MANIFESTS = sorted(p.name for p in KSERVE.glob("*.yaml"))
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


# -- The structural schemas of the two KServe kinds ------------------------------------------------
# Written from KServe's Go types. Where a spec lists its fields, only real KServe fields are allowed
# (additionalProperties: false), so a misspelt field fails. Containers and volumes are only required
# to be objects here: they are core Kubernetes types, and kubernetes-validate checks them below.

_OBJECT = {"type": "object"}
_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_METADATA = {
    "type": "object",
    "required": ["name"],
    "properties": {"name": {"type": "string", "pattern": DNS_LABEL, "maxLength": 63},
                   "namespace": {"type": "string"}, "labels": _STRING_MAP, "annotations": _STRING_MAP},
}
_PROTOCOL = {"type": "string", "enum": PROTOCOLS}
_CONTAINER = {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}}

SERVING_RUNTIME_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": f"{KSERVE_GROUP}/v1alpha1"},
        "kind": {"const": "ServingRuntime"},
        "metadata": _METADATA,
        "spec": {
            "type": "object",
            "required": ["supportedModelFormats", "containers"],
            "additionalProperties": False,
            "properties": {
                # ServingRuntimeSpec
                "supportedModelFormats": {
                    "type": "array", "minItems": 1,
                    "items": {"type": "object", "required": ["name"], "additionalProperties": False,
                              "properties": {"name": {"type": "string", "minLength": 1},
                                             "version": {"type": "string"},
                                             "autoSelect": {"type": "boolean"},
                                             "priority": {"type": "integer", "minimum": 1}}},
                },
                "multiModel": {"type": "boolean"},
                "disabled": {"type": "boolean"},
                "protocolVersions": {"type": "array", "items": _PROTOCOL, "uniqueItems": True},
                "workerSpec": _OBJECT,
                "grpcEndpoint": {"type": "string"},
                "grpcDataEndpoint": {"type": "string"},
                "httpDataEndpoint": {"type": "string"},
                "replicas": {"type": "integer", "minimum": 0},
                "storageHelper": {"type": "object", "additionalProperties": False,
                                  "properties": {"disabled": {"type": "boolean"}}},
                "builtInAdapter": _OBJECT,
                # ServingRuntimePodSpec (inline)
                "containers": {"type": "array", "minItems": 1, "items": _CONTAINER},
                "volumes": {"type": "array", "items": _OBJECT},
                "nodeSelector": _STRING_MAP,
                "affinity": _OBJECT,
                "tolerations": {"type": "array", "items": _OBJECT},
                "labels": _STRING_MAP,
                "annotations": _STRING_MAP,
                "imagePullSecrets": {"type": "array", "items": _OBJECT},
                "hostIPC": {"type": "boolean"},
            },
        },
    },
}

# ModelSpec: its own fields, plus PredictorExtensionSpec's, plus an inline core Container (checked
# below with kubernetes-validate, so any other key is allowed here).
MODEL_FIELDS = {"modelFormat", "runtime", "storageUri", "runtimeVersion", "protocolVersion", "storage"}
_MODEL = {
    "type": "object",
    "required": ["modelFormat"],
    "properties": {
        "modelFormat": {"type": "object", "required": ["name"], "additionalProperties": False,
                        "properties": {"name": {"type": "string", "minLength": 1}, "version": {"type": "string"}}},
        "runtime": {"type": "string", "pattern": DNS_LABEL},
        "storageUri": {"type": "string"},
        "runtimeVersion": {"type": "string"},
        "protocolVersion": _PROTOCOL,
        "storage": _OBJECT,
    },
}

INFERENCE_SERVICE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": f"{KSERVE_GROUP}/v1beta1"},
        "kind": {"const": "InferenceService"},
        "metadata": _METADATA,
        "spec": {
            "type": "object",
            "required": ["predictor"],
            "additionalProperties": False,
            "properties": {"predictor": {"$ref": "#/$defs/predictor"},
                           "transformer": _OBJECT, "explainer": _OBJECT},
        },
    },
    "$defs": {
        # PredictorSpec, limited to `model` (no framework-specific predictor: the runtime is ours),
        # ComponentExtensionSpec and the PodSpec fields a custom runtime may want.
        "predictor": {
            "type": "object",
            "required": ["model"],
            "additionalProperties": False,
            "properties": {
                "model": _MODEL,
                "minReplicas": {"type": "integer", "minimum": 0},
                "maxReplicas": {"type": "integer", "minimum": 0},
                "scaleTarget": {"type": "integer"},
                "scaleMetric": {"enum": ["cpu", "memory", "concurrency", "rps"]},
                "containerConcurrency": {"type": "integer", "minimum": 0},
                "timeout": {"type": "integer"},
                "canaryTrafficPercent": {"type": "integer", "minimum": 0, "maximum": 100},
                "logger": _OBJECT,
                "batcher": _OBJECT,
                "labels": _STRING_MAP,
                "annotations": _STRING_MAP,
                "deploymentStrategy": _OBJECT,
                "serviceAccountName": {"type": "string"},
                "nodeSelector": _STRING_MAP,
                "tolerations": {"type": "array", "items": _OBJECT},
                "affinity": _OBJECT,
                "imagePullSecrets": {"type": "array", "items": _OBJECT},
            },
        },
    },
}

KSERVE_SCHEMAS = {"ServingRuntime": SERVING_RUNTIME_SCHEMA, "InferenceService": INFERENCE_SERVICE_SCHEMA}


# -- Helpers ---------------------------------------------------------------------------------------


def documents(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((KSERVE / name).read_text(encoding="utf-8")) if d is not None]


def all_documents() -> list[dict[str, Any]]:
    return [doc for name in MANIFESTS for doc in documents(name)]


def by_kind(kind: str) -> dict[str, Any]:
    found = [doc for doc in all_documents() if doc.get("kind") == kind]
    assert len(found) == 1, f"expected one {kind} in deploy/k8s/kserve, found {len(found)}"
    return found[0]


def is_kserve(doc: dict[str, Any]) -> bool:
    return str(doc.get("apiVersion", "")).startswith(f"{KSERVE_GROUP}/")


def runtime_container() -> dict[str, Any]:
    containers = by_kind("ServingRuntime")["spec"]["containers"]
    assert [c["name"] for c in containers] == [PREDICTOR_CONTAINER]
    return containers[0]


def deployment() -> dict[str, Any]:
    return yaml.safe_load(DEPLOYMENT.read_text(encoding="utf-8"))


def deployment_container() -> dict[str, Any]:
    [container] = deployment()["spec"]["template"]["spec"]["containers"]
    return container


def port_of(container: dict[str, Any], port: int | str) -> int:
    """A probe's port (number or name) as the container's port number."""
    ports = {p["containerPort"]: p["containerPort"] for p in container["ports"]}
    ports.update({p["name"]: p["containerPort"] for p in container["ports"] if "name" in p})
    assert port in ports, f"port {port!r} is not a port of the container"
    return ports[port]


def schema_errors(doc: dict[str, Any], kind: str | None = None) -> list[str]:
    """What the structural schema of ``kind`` (by default the document's own) finds wrong in it."""
    validator = jsonschema.Draft202012Validator(KSERVE_SCHEMAS[kind or doc["kind"]])
    return [f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in validator.iter_errors(doc)]


def validate_core(resource: dict[str, Any], what: str) -> None:
    try:
        checked = kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        where = ".".join(str(part) for part in exc.path)
        raise AssertionError(f"{what}: {where}: {exc.message}") from None  # the schema dump is too long to show
    assert checked == KUBERNETES_VERSION


def as_pod(pod_spec: dict[str, Any], name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": pod_spec}


def runtime_pod_spec(runtime: dict[str, Any]) -> dict[str, Any]:
    """The core PodSpec fields of a ServingRuntime (ServingRuntimePodSpec), as a PodSpec."""
    pod_fields = ("containers", "volumes", "nodeSelector", "affinity", "tolerations", "imagePullSecrets", "hostIPC")
    return {key: runtime["spec"][key] for key in pod_fields if key in runtime["spec"]}


def model_container(isvc: dict[str, Any]) -> dict[str, Any]:
    """The inline core Container of the InferenceService's model (its overrides of the runtime's)."""
    model = isvc["spec"]["predictor"]["model"]
    return {"name": PREDICTOR_CONTAINER, **{k: v for k, v in model.items() if k not in MODEL_FIELDS}}


def runtime_supports_model(runtime: dict[str, Any], model: dict[str, Any]) -> bool:
    """KServe's ModelSpec.RuntimeSupportsModel and IsProtocolVersionSupported, for one runtime."""
    spec = runtime["spec"]
    if spec.get("disabled") or spec.get("multiModel", False):
        return False
    labels = set()
    for fmt in spec["supportedModelFormats"]:
        if "runtime" in model or fmt.get("autoSelect") is True:
            labels.add(f"mt:{fmt['name']}")
            if "version" in fmt:
                labels.add(f"mt:{fmt['name']}:{fmt['version']}")
    wanted = model["modelFormat"]
    label = f"mt:{wanted['name']}" + (f":{wanted['version']}" if "version" in wanted else "")
    protocol = model.get("protocolVersion", "v1")  # ModelSpec.GetProtocol's default
    protocols = spec.get("protocolVersions") or []
    return label in labels and (not protocols or protocol in protocols)


def edited(doc: dict[str, Any], path: list[str | int]) -> tuple[dict[str, Any], Any]:
    """A deep copy of ``doc`` and the object at ``path`` inside the copy."""
    copy = yaml.safe_load(yaml.safe_dump(doc))
    target: Any = copy
    for part in path:
        target = target[part]
    return copy, target


def broken(doc: dict[str, Any], path: list[str | int], key: str, value: Any) -> dict[str, Any]:
    copy, target = edited(doc, path)
    target[key] = value
    return copy


def without(doc: dict[str, Any], path: list[str | int], key: str) -> dict[str, Any]:
    copy, target = edited(doc, path)
    del target[key]
    return copy


def endpoint_names() -> set[str]:
    return set(read_config_file(ROOT / "config_gateway.txt")["CONFIG_ENDPOINTS"])


# -- Parsing and schemas ---------------------------------------------------------------------------


def test_the_folder_holds_the_runtime_and_the_inference_service() -> None:
    assert MANIFESTS == ["inferenceservice.yaml", "servingruntime.yaml"]
    for name in MANIFESTS:
        docs = documents(name)
        assert len(docs) == 1, f"{name}: expected one resource per file, found {len(docs)}"
        assert isinstance(docs[0], dict) and {"apiVersion", "kind", "metadata"} <= docs[0].keys(), name
    assert sorted(doc["kind"] for doc in all_documents()) == ["InferenceService", "ServingRuntime"]
    assert (KSERVE / "README.md").is_file()


@pytest.mark.parametrize("kind", sorted(KSERVE_SCHEMAS))
def test_kserve_resource_matches_its_structural_schema(kind: str) -> None:
    jsonschema.Draft202012Validator.check_schema(KSERVE_SCHEMAS[kind])
    errors = schema_errors(by_kind(kind))
    assert not errors, "\n".join(errors)


def test_core_kubernetes_parts_are_valid_for_the_kubernetes_version(no_network: None) -> None:
    """Resources of core kinds, and the core types inside the KServe resources, in strict mode."""
    for doc in all_documents():
        if not is_kserve(doc):
            validate_core(doc, f"{doc['kind']} {doc['metadata']['name']}")
    runtime = by_kind("ServingRuntime")
    validate_core(as_pod(runtime_pod_spec(runtime), "runtime"), "ServingRuntime spec (as a PodSpec)")
    validate_core(as_pod({"containers": [model_container(by_kind("InferenceService"))]}, "model"),
                  "InferenceService spec.predictor.model (as a Container)")


def test_the_checks_can_fail(no_network: None) -> None:
    """The schemas and the core validation reject what KServe or Kubernetes would reject."""
    runtime, isvc = by_kind("ServingRuntime"), by_kind("InferenceService")

    def rejected(doc: dict[str, Any], message: str, kind: str | None = None) -> bool:
        return any(message in error for error in schema_errors(doc, kind))

    assert rejected(broken(runtime, ["spec"], "protocolVersions", ["v3"]), "is not one of")
    assert rejected(broken(runtime, ["spec"], "multiModels", False), "'multiModels' was unexpected")
    assert rejected(without(runtime, ["spec"], "containers"), "'containers' is a required property")
    assert rejected(broken(runtime, [], "kind", "Runtime"), "'ServingRuntime' was expected", "ServingRuntime")
    assert rejected(broken(isvc, [], "apiVersion", "serving.kserve.io/v1"), "'serving.kserve.io/v1beta1' was expected")
    assert rejected(broken(isvc, ["spec", "predictor"], "minReplica", 2), "'minReplica' was unexpected")
    assert rejected(without(isvc, ["spec", "predictor", "model"], "modelFormat"), "'modelFormat' is a required")
    assert rejected(broken(isvc, ["spec", "predictor", "model"], "protocolVersion", "V2"), "is not one of")

    no_probe_port = broken(runtime, ["spec", "containers", 0], "readinessProbe", {"httpGet": {"path": READY_PATH}})
    with pytest.raises(AssertionError, match="'port' is a required property"):
        validate_core(as_pod(runtime_pod_spec(no_probe_port), "runtime"), "broken runtime")
    misspelt = broken(runtime, ["spec", "containers", 0], "imagePullPolice", "IfNotPresent")
    with pytest.raises(AssertionError, match="'imagePullPolice' was unexpected"):
        validate_core(as_pod(runtime_pod_spec(misspelt), "runtime"), "broken runtime")


# -- The runtime: the gateway's port and its V2 routes ---------------------------------------------


def test_runtime_serves_v2_rest_on_the_gateway_port() -> None:
    spec = by_kind("ServingRuntime")["spec"]
    assert spec["protocolVersions"] == ["v2"]  # REST only: the gateway has no gRPC server
    assert spec.get("multiModel", False) is False
    container = runtime_container()
    assert build_parser().get_default("port") == GATEWAY_PORT
    [port] = container["ports"]  # Knative routes to one port only
    assert port["containerPort"] == GATEWAY_PORT
    assert port["name"] in KNATIVE_PORT_NAMES and port["name"] == "http1"
    assert port.get("protocol", "TCP") == "TCP"


def test_runtime_probes_are_the_v2_health_routes() -> None:
    container = runtime_container()
    for probe, path in {"readinessProbe": READY_PATH, "livenessProbe": LIVE_PATH}.items():
        get = container[probe]["httpGet"]
        assert get["path"] == path, probe
        assert port_of(container, get["port"]) == GATEWAY_PORT, probe
        assert get.get("scheme", "HTTP") == "HTTP", probe
    liveness = container["livenessProbe"]
    # A gateway is restarted only after several missed probes, never on one slow answer, and with
    # no startupProbe the first check leaves the gateway time to start listening.
    assert liveness["failureThreshold"] >= 3
    assert liveness["periodSeconds"] * liveness["failureThreshold"] >= 20
    assert liveness["initialDelaySeconds"] >= 20
    # Knative Serving rejects these container fields.
    assert "startupProbe" not in container
    assert "lifecycle" not in container


def test_runtime_runs_the_image_of_the_other_manifests() -> None:
    container, reference = runtime_container(), deployment_container()
    assert container["image"] == reference["image"] == "basic_inference_server:latest"
    assert container["imagePullPolicy"] == reference["imagePullPolicy"]
    assert container["env"] == reference["env"]  # same variables, same admin-token Secret
    assert container["resources"] == reference["resources"]
    for kind in ("requests", "limits"):
        assert set(container["resources"][kind]) >= {"cpu", "memory"}, kind


def test_runtime_runs_as_the_image_user_with_a_per_pod_cache() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    [uid] = re.findall(r"--uid (\d+)", dockerfile)
    [volume_path] = re.findall(r"^VOLUME (\S+)$", dockerfile, flags=re.MULTILINE)
    security = runtime_container()["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["runAsUser"] == int(uid)
    assert security["runAsGroup"] == int(uid)
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert security["seccompProfile"]["type"] == "RuntimeDefault"
    # The same settings as deploy/k8s/deployment.yaml, where some are on the pod.
    pod = deployment()["spec"]["template"]["spec"]
    reference = {**pod["securityContext"], **deployment_container()["securityContext"]}
    for key in ("runAsNonRoot", "runAsUser", "runAsGroup", "allowPrivilegeEscalation", "capabilities",
                "seccompProfile"):
        assert security[key] == reference[key], key
    [mount] = runtime_container()["volumeMounts"]
    assert mount["mountPath"] == volume_path
    [volume] = [v for v in by_kind("ServingRuntime")["spec"]["volumes"] if v["name"] == mount["name"]]
    assert "emptyDir" in volume


# -- The InferenceService: it gets this runtime ----------------------------------------------------


def test_inference_service_uses_the_runtime_by_name_and_format() -> None:
    runtime, isvc = by_kind("ServingRuntime"), by_kind("InferenceService")
    model = isvc["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime["metadata"]["name"] == "basic-inference-server"
    formats = [(f["name"], f.get("version")) for f in runtime["spec"]["supportedModelFormats"]]
    assert (model["modelFormat"]["name"], model["modelFormat"].get("version")) in formats
    assert model["protocolVersion"] == "v2"
    assert runtime_supports_model(runtime, model)
    # The endpoints are in the image: nothing for KServe's storage initializer to download.
    assert "storageUri" not in model and "storage" not in model
    # The matching rule above can fail: another format, or another protocol, is not supported.
    assert not runtime_supports_model(runtime, {**model, "modelFormat": {"name": "sklearn"}})
    assert not runtime_supports_model(runtime, {**model, "protocolVersion": "grpc-v2"})
    without_runtime = {k: v for k, v in model.items() if k != "runtime"}
    autoselect = any(f.get("autoSelect") for f in runtime["spec"]["supportedModelFormats"])
    assert runtime_supports_model(runtime, without_runtime) is autoselect


def test_inference_service_keeps_at_least_two_pods() -> None:
    predictor = by_kind("InferenceService")["spec"]["predictor"]
    assert 2 <= predictor["minReplicas"] <= predictor["maxReplicas"]


def test_documented_v2_calls_name_real_endpoints_and_routes() -> None:
    """The calls shown in the README and the InferenceService's comment name endpoints of
    config_gateway.txt, on the V2 routes the gateway serves."""
    texts = {"README.md": (KSERVE / "README.md").read_text(encoding="utf-8"),
             "inferenceservice.yaml": (KSERVE / "inferenceservice.yaml").read_text(encoding="utf-8")}
    endpoints = endpoint_names()
    routes = re.compile(r"^/v2(/health/(live|ready)|/models/[^/]+(/ready|/infer)?)?$")
    for name, text in texts.items():
        paths = re.findall(r"/v2/[\w./<>{}-]*", text)
        assert any(p.endswith("/infer") for p in paths), f"{name}: shows no infer call"
        for path in paths:
            if path == "/v2/...":  # "any V2 route" in prose
                continue
            path = path.rstrip(".")
            assert routes.match(path), f"{name}: {path} is not a V2 route of the gateway"
            model = re.match(r"/v2/models/([^/]+)", path)
            if model and model[1] not in {"<endpoint>"}:
                assert model[1] in endpoints, f"{name}: {model[1]} is not an endpoint of config_gateway.txt"
        for model in re.findall(r"""(?:is_model_ready|infer)\(\s*["']([^"']+)["']""", text):
            assert model in endpoints, f"{name}: {model} is not an endpoint of config_gateway.txt"
    assert "kubectl apply -f deploy/k8s/kserve/" in texts["README.md"]
