"""deploy/ checked offline: compose parses and runs our commands; the Kubernetes manifests pass
a strict schema validator (with the schemas it carries); the Dockerfile keeps its promises.
No Docker engine or cluster runs here: see deploy/README.md for what is not exercised."""

from __future__ import annotations

import copy
import re
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import pytest
import yaml

from sluiceway.cli import build_parser
from sluiceway.config import Settings

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S_VERSION = "1.30.0"
SCALED_OBJECT = DEPLOY / "keda" / "worker-scaledobject.yaml"
KEDA_SCHEMA = ROOT / "tests" / "fixtures" / "keda_scaledobject_schema.yaml"
BUILTIN_MODELS = ("knn", "birds", "imagenet", "caption")
# What KEDA's redis-streams trigger reads from its metadata (pkg/scalers/redis_streams_scaler.go
# and the redis address parser of kedacore/keda); anything else would be ignored silently.
REDIS_STREAMS_KEYS = {
    "address", "host", "port", "username", "password", "usernameFromEnv", "passwordFromEnv",
    "addressFromEnv", "hostFromEnv", "portFromEnv", "stream", "consumerGroup",
    "pendingEntriesCount", "streamLength", "lagCount", "activationLagCount", "databaseIndex",
    "enableTLS", "unsafeSsl",
}  # fmt: skip


def manifests() -> list[dict[str, Any]]:
    docs = []
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        docs += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return docs


def by_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for doc in manifests() if doc["kind"] == kind}


def parses(command: list[str]) -> str:
    """The sluiceway subcommand a container runs, checked against our own CLI parser."""
    assert command[0] == "sluiceway"
    args = build_parser().parse_args(command[1:])
    return str(args.command)


def test_compose_runs_redis_an_api_node_and_scalable_workers() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"redis", "api", "worker"}
    assert parses(services["api"]["command"]) == "serve"
    assert parses(services["worker"]["command"]) == "worker"
    for name in ("api", "worker"):
        url = services[name]["environment"]["SLUICEWAY_BROKER_URL"]
        assert re.fullmatch(r"redis://redis:6379/\d+", url), url
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy"
    # `--scale worker=N` needs no fixed host port and no fixed container name.
    assert "ports" not in services["worker"] and "container_name" not in services["worker"]
    assert services["api"]["build"]["dockerfile"] == "deploy/Dockerfile"
    assert "8001/healthz" in " ".join(services["worker"]["healthcheck"]["test"])


@pytest.mark.parametrize("doc", manifests(), ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_manifest_passes_the_kubernetes_schema(doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_the_validator_rejects_a_broken_manifest() -> None:
    broken = copy.deepcopy(by_kind("Deployment")["sluiceway-api"])
    broken["spec"]["template"]["spec"]["containers"][0]["livenessprobe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_deployments_run_our_commands_with_probes_on_healthz_and_readyz() -> None:
    deployments = by_kind("Deployment")
    expected = {"sluiceway-api": "serve", "sluiceway-worker": "worker"}
    for name, command in expected.items():
        container = deployments[name]["spec"]["template"]["spec"]["containers"][0]
        assert parses(container["args"]) == command
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        env = {item["name"]: item["value"] for item in container["env"]}
        assert env["SLUICEWAY_BROKER_URL"].startswith("redis://sluiceway-redis:6379/")
    assert set(by_kind("Service")) == {"sluiceway-api", "sluiceway-worker", "sluiceway-redis"}


def test_workers_scale_horizontally() -> None:
    hpa = by_kind("HorizontalPodAutoscaler")["sluiceway-worker"]["spec"]
    assert hpa["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "sluiceway-worker",
    }
    assert 1 <= hpa["minReplicas"] < hpa["maxReplicas"]


def test_the_image_installs_the_package_and_runs_unprivileged() -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    instructions = [line.split(maxsplit=1) for line in dockerfile.splitlines() if line.strip()]
    # With the grpc extra, so SLUICEWAY_GRPC_PORT works in the image as documented.
    assert ["RUN", 'pip install ".[grpc]" && rm -rf /src'] in instructions
    users = [rest for word, *rest in instructions if word == "USER"]
    assert users and users[-1] != ["root"] and users[-1] != ["0"]
    assert ["EXPOSE", "8000 8001 8081"] in instructions
    assert re.search(r"HEALTHCHECK .*\n?.*127\.0\.0\.1:8000/healthz", dockerfile)


def strict(schema: Any) -> Any:
    """The schema with unknown fields refused, as ``kubectl apply --validate=strict`` does: a
    CRD's structural schema lists every field, and the API server drops any other."""
    if isinstance(schema, dict):
        schema = {key: strict(value) for key, value in schema.items()}
        if schema.get("type") == "object" and "properties" in schema:
            schema.setdefault("additionalProperties", False)
    elif isinstance(schema, list):
        schema = [strict(item) for item in schema]
    return schema


def scaled_object() -> dict[str, Any]:
    docs = [doc for doc in yaml.safe_load_all(SCALED_OBJECT.read_text()) if doc]
    assert len(docs) == 1
    return docs[0]


def keda_validate(doc: dict[str, Any]) -> None:
    schema = strict(yaml.safe_load(KEDA_SCHEMA.read_text()))
    jsonschema.Draft7Validator(schema).validate(doc)


def test_the_scaledobject_passes_kedas_crd_schema() -> None:
    doc = scaled_object()
    assert (doc["apiVersion"], doc["kind"]) == ("keda.sh/v1alpha1", "ScaledObject")
    keda_validate(doc)


@pytest.mark.parametrize(
    "breakage",
    ["a misspelled field", "a number where KEDA takes a string", "no scale target"],
)
def test_the_keda_validator_rejects_a_broken_scaledobject(breakage: str) -> None:
    broken = copy.deepcopy(scaled_object())
    spec = broken["spec"]
    if breakage == "a misspelled field":
        spec["minReplicas"] = spec.pop("minReplicaCount")
    elif breakage == "a number where KEDA takes a string":
        spec["triggers"][0]["metadata"]["databaseIndex"] = 0
    else:
        del spec["scaleTargetRef"]
    with pytest.raises(jsonschema.ValidationError):
        keda_validate(broken)


def test_the_scaledobject_is_what_its_script_generates() -> None:
    generated = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "keda_scaledobject.py")],
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": "/usr/bin:/bin"},  # the defaults, whatever SLUICEWAY_* the suite has set
    ).stdout
    assert SCALED_OBJECT.read_text() == generated, "run scripts/keda_scaledobject.py"


def test_workers_scale_on_the_jobs_of_every_partition_of_every_model() -> None:
    spec = scaled_object()["spec"]
    settings = Settings()
    worker = by_kind("Deployment")["sluiceway-worker"]
    assert spec["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": worker["metadata"]["name"],
    }
    # The triggers read the Redis the workers use.
    container = worker["spec"]["template"]["spec"]["containers"][0]
    broker = urlsplit({e["name"]: e["value"] for e in container["env"]}["SLUICEWAY_BROKER_URL"])
    triggers = spec["triggers"]
    for trigger in triggers:
        assert trigger["type"] == "redis-streams"
        metadata = trigger["metadata"]
        assert set(metadata) <= REDIS_STREAMS_KEYS, (
            f"KEDA ignores {set(metadata) - REDIS_STREAMS_KEYS}"
        )
        assert metadata["address"] == broker.netloc
        assert metadata["databaseIndex"] == broker.path.strip("/")
        # Without a consumer group the trigger measures XLEN: jobs waiting or running (a
        # worker deletes each job it acknowledges), what admission counts.
        assert "consumerGroup" not in metadata
    streams = [trigger["metadata"]["stream"] for trigger in triggers]
    assert len(set(streams)) == len(streams) == settings.broker_partitions * len(BUILTIN_MODELS)
    for model in BUILTIN_MODELS:
        partitions = {s for s in streams if s.startswith(f"{settings.broker_prefix}:jobs:{model}:")}
        assert len(partitions) == settings.broker_partitions, model
    # One metric, their sum: KEDA's autoscaler would otherwise follow the busiest partition.
    modifiers = spec["advanced"]["scalingModifiers"]
    terms = [term.strip() for term in modifiers["formula"].split("+")]
    assert sorted(terms) == sorted(trigger["name"] for trigger in triggers)
    assert modifiers["metricType"] == "AverageValue"
    # A model's full queue (what admission lets in) asks for the most workers.
    assert int(modifiers["target"]) * spec["maxReplicaCount"] <= settings.broker_max_queue
    assert 1 <= spec["minReplicaCount"] < spec["maxReplicaCount"]


def test_the_cpu_autoscaler_and_the_keda_one_are_never_applied_together() -> None:
    # KEDA refuses to scale a target another HorizontalPodAutoscaler scales: the CPU one has a
    # file of its own in k8s/, and the ScaledObject lives outside k8s/.
    assert by_kind("HorizontalPodAutoscaler")["sluiceway-worker"]
    hpa_files = [
        path.name
        for path in (DEPLOY / "k8s").glob("*.yaml")
        if any(doc["kind"] == "HorizontalPodAutoscaler" for doc in yaml.safe_load_all(path.open()))
    ]
    assert hpa_files == ["worker-hpa.yaml"]
    assert not any(doc["kind"] == "ScaledObject" for doc in manifests())
    readme = (DEPLOY / "README.md").read_text()
    assert "keda/worker-scaledobject.yaml" in readme and "k8s/worker-hpa.yaml" in readme
