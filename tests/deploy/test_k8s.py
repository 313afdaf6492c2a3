"""The Kubernetes manifests (deploy/k8s), checked offline: every object against the Kubernetes
OpenAPI schemas that kubernetes-validate ships (strict: an unknown or misspelt field fails), the
KServe InferenceService against the fields of KServe's v1beta1 CRD it uses (its pod spec against
Kubernetes' own PodSpec), and what the objects must agree on (names, selectors, probes, grace)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.conftest import ROOT

K8S = ROOT / "deploy" / "k8s"
# The oldest Kubernetes still supported upstream when this was written, and the newest schemas
# kubernetes-validate ships: the manifests must be valid for both.
K8S_VERSIONS = ("1.31", kubernetes_validate.utils.latest_version())
VARIANTS = ("gpu", "cpu")


def documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def kubernetes_objects() -> list[tuple[str, dict[str, Any]]]:
    objects = []
    for path in sorted(K8S.rglob("*.yaml")):
        for doc in documents(path):
            if doc["apiVersion"].startswith(("kustomize.config.k8s.io/", "serving.kserve.io/")):
                continue
            objects.append((f"{path.relative_to(K8S)}:{doc['kind']}", doc))
    return objects


def variant(name: str) -> dict[str, dict[str, Any]]:
    """The objects `kubectl apply -k deploy/k8s/<name>` creates, by kind (one of each here)."""
    folder = K8S / name
    found: dict[str, dict[str, Any]] = {}
    for entry in yaml.safe_load((folder / "kustomization.yaml").read_text())["resources"]:
        target = (folder / entry).resolve()
        for path in sorted(target.glob("*.yaml")) if target.is_dir() else [target]:
            if path.name == "kustomization.yaml":
                resources = yaml.safe_load(path.read_text())["resources"]
                assert sorted(resources) == sorted(p.name for p in path.parent.glob("*.yaml") if p != path), path
                continue
            for doc in documents(path):
                assert doc["kind"] not in found, doc["kind"]
                found[doc["kind"]] = doc
    return found


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize(("where", "obj"), kubernetes_objects(), ids=lambda v: v if isinstance(v, str) else "")
def test_objects_match_the_kubernetes_schemas(where: str, obj: dict[str, Any], version: str) -> None:
    kubernetes_validate.validate(obj, version, strict=True)


def test_the_schemas_catch_a_wrong_field() -> None:
    """The check above can fail: a misspelt field and a wrong type are refused."""
    deployment = variant("gpu")["Deployment"]
    typo = copy.deepcopy(deployment)
    typo["spec"]["template"]["spec"]["containers"][0]["readinessprobe"] = typo["spec"]["template"]["spec"]["containers"][0].pop(
        "readinessProbe"
    )
    wrong_type = copy.deepcopy(deployment)
    wrong_type["spec"]["replicas"] = "two"
    for bad in (typo, wrong_type):
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(bad, K8S_VERSIONS[-1], strict=True)


def _container(pod_spec: dict[str, Any]) -> dict[str, Any]:
    (container,) = pod_spec["containers"]
    return container


def _env(container: dict[str, Any], configmap: dict[str, Any] | None = None) -> dict[str, str]:
    env = dict(configmap["data"]) if configmap else {}
    env.update({e["name"]: e["value"] for e in container.get("env", [])})
    return env


@pytest.mark.parametrize("name", VARIANTS)
def test_deployment_serves_safely(name: str) -> None:
    objs = variant(name)
    deployment, service, pdb, hpa, configmap = (
        objs[k] for k in ("Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler", "ConfigMap")
    )
    pod = deployment["spec"]["template"]
    spec = pod["spec"]
    container = _container(spec)
    env = _env(container, configmap)
    # probes: started and ready on /readyz (warm, every decode worker, storage, not draining), alive on
    # /healthz (the event loop answers, start-up has not failed)
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["startupProbe"]["httpGet"]["path"] == "/readyz"
    # resources: requests for everything; one GPU for the GPU variant, none for the CPU one
    resources = container["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"])
    assert resources["limits"].get("nvidia.com/gpu") == (1 if name == "gpu" else None)
    assert int(env["MLA_DECODE_WORKERS"]) <= float(resources["limits"]["cpu"])  # not the node's cores
    assert env["MLA_PROVIDERS"] == ("cuda,cpu" if name == "gpu" else "cpu")
    # SIGTERM drains: the grace period covers the preStop pause and the longest request
    pause = float(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert spec["terminationGracePeriodSeconds"] > pause + float(env["MLA_REQUEST_TIMEOUT_SECONDS"])
    # the model: read-only, from the shared claim, where MLA_MODEL_DIR looks
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert mounts["models"]["readOnly"] is True
    assert volumes["models"]["persistentVolumeClaim"]["readOnly"] is True
    assert volumes["models"]["persistentVolumeClaim"]["claimName"] == objs["PersistentVolumeClaim"]["metadata"]["name"]
    assert env["MLA_MODEL_DIR"].startswith(mounts["models"]["mountPath"] + "/")
    assert env["MLA_TMP_DIR"].startswith(mounts["tmp"]["mountPath"] + "/")  # the one writable place
    # non-root, as the image's USER, nothing to escalate to, read-only root filesystem
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] == 10001
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    # the Service, the PDB and the HPA point at this Deployment's pods
    labels = pod["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items()
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["ports"][0]["targetPort"] in {p["name"] for p in container["ports"]}
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert hpa["spec"]["minReplicas"] >= 2  # the PDB's one disruption at a time leaves one serving
    assert pdb["spec"]["maxUnavailable"] == 1
    namespaces = {o["metadata"].get("namespace") for k, o in objs.items() if k != "Namespace"}
    assert namespaces == {objs["Namespace"]["metadata"]["name"]}


def test_cpu_deployment_is_the_gpu_one_without_the_gpu() -> None:
    """Two files, one Deployment: they may differ only in what the variant changes."""
    gpu, cpu = (copy.deepcopy(variant(v)["Deployment"]) for v in VARIANTS)
    for dep, tag, providers in ((gpu, "gpu", "cuda,cpu"), (cpu, "cpu", "cpu")):
        spec = dep["spec"]["template"]["spec"]
        container = _container(spec)
        assert container["image"].endswith(f"-{tag}")
        container["image"] = "IMAGE"
        assert _env(container)["MLA_PROVIDERS"] == providers
        container["env"] = [e for e in container["env"] if e["name"] != "MLA_PROVIDERS"]
        for section in ("requests", "limits"):
            container["resources"][section].pop("nvidia.com/gpu", None)
        spec.pop("tolerations", None)
    assert gpu == cpu


# The fields of KServe's InferenceService (serving.kserve.io/v1beta1 CRD) used here, as that CRD
# types them; the predictor's pod-spec fields are checked against Kubernetes' PodSpec below.
PREDICTOR_EXTENSION = {
    "minReplicas": {"type": "integer", "minimum": 0},
    "maxReplicas": {"type": "integer", "minimum": 0},
    "scaleMetric": {"enum": ["cpu", "memory", "concurrency", "rps"]},
    "scaleTarget": {"type": "integer", "minimum": 1},
    "containerConcurrency": {"type": "integer", "minimum": 0},
    "timeout": {"type": "integer", "minimum": 0},
    "canaryTrafficPercent": {"type": "integer", "minimum": 0, "maximum": 100},
}
INFERENCE_SERVICE = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "serving.kserve.io/v1beta1"},
        "kind": {"const": "InferenceService"},
        "metadata": {
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": {"type": "string", "pattern": "^[a-z]([-a-z0-9]*[a-z0-9])?$", "maxLength": 45},
                "namespace": {"type": "string"},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                "annotations": {
                    "type": "object",
                    "additionalProperties": {"type": "string"},
                    "properties": {
                        "serving.kserve.io/deploymentMode": {"enum": ["Serverless", "RawDeployment", "ModelMesh"]},
                        "serving.kserve.io/autoscalerClass": {"enum": ["hpa", "external", "keda", "none"]},
                    },
                },
            },
        },
        "spec": {
            "type": "object",
            "required": ["predictor"],
            "additionalProperties": False,
            "properties": {"predictor": {"type": "object", "required": ["containers"]}},
        },
    },
}


def check_inference_service(isvc: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Validate an InferenceService; return its predictor's KServe fields and its pod spec."""
    jsonschema.validate(isvc, INFERENCE_SERVICE)
    predictor = isvc["spec"]["predictor"]
    extension = {k: v for k, v in predictor.items() if k in PREDICTOR_EXTENSION}
    jsonschema.validate(extension, {"type": "object", "properties": PREDICTOR_EXTENSION})
    # what is left is KServe's inlined PodSpec: Kubernetes' own schema, strict
    pod_spec = {k: v for k, v in predictor.items() if k not in PREDICTOR_EXTENSION}
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "predictor"}, "spec": pod_spec}
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(pod, version, strict=True)
    return extension, pod_spec


def test_kserve_inference_service() -> None:
    (isvc,) = documents(K8S / "kserve" / "inferenceservice.yaml")
    extension, predictor = check_inference_service(isvc)
    container = _container(predictor)
    env = _env(container)
    assert container["name"] == "kserve-container"  # the name KServe looks for in a custom predictor
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "RawDeployment"
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert env["STORAGE_URI"].startswith("pvc://")
    assert env["MLA_MODEL_DIR"] == "/mnt/models"  # where KServe mounts STORAGE_URI
    pause = float(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert predictor["terminationGracePeriodSeconds"] > pause + float(env["MLA_REQUEST_TIMEOUT_SECONDS"])
    assert predictor["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert extension["minReplicas"] >= 2
    # the same image and settings as the Deployment
    deployment = _container(variant("gpu")["Deployment"]["spec"]["template"]["spec"])
    assert container["image"] == deployment["image"]
    for key in ("MLA_PROVIDERS", "MLA_DECODE_WORKERS", "MLA_INTRA_OP_THREADS"):
        assert env[key] == _env(deployment)[key]
    assert container["resources"] == deployment["resources"]


def test_the_kserve_check_catches_a_wrong_field() -> None:
    (isvc,) = documents(K8S / "kserve" / "inferenceservice.yaml")
    wrong_metric, misspelt, pod_field = (copy.deepcopy(isvc) for _ in range(3))
    wrong_metric["spec"]["predictor"]["scaleMetric"] = "gpu"
    misspelt["spec"]["predicter"] = misspelt["spec"].pop("predictor")
    pod_field["spec"]["predictor"]["containers"][0]["imagePullPolice"] = "Always"
    for bad in (wrong_metric, misspelt):
        with pytest.raises(jsonschema.ValidationError):
            check_inference_service(bad)
    with pytest.raises(kubernetes_validate.ValidationError):
        check_inference_service(pod_field)
