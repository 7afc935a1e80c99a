"""deploy/ checked offline: compose parses and runs our commands; the Kubernetes manifests pass
a strict schema validator (with the schemas it carries); the Dockerfile keeps its promises.
No Docker engine or cluster runs here: see deploy/README.md for what is not exercised."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from sluiceway.cli import build_parser

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
K8S_VERSION = "1.30.0"


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
    assert ["RUN", "pip install . && rm -rf /src"] in instructions
    users = [rest for word, *rest in instructions if word == "USER"]
    assert users and users[-1] != ["root"] and users[-1] != ["0"]
    assert ["EXPOSE", "8000 8001"] in instructions
    assert re.search(r"HEALTHCHECK .*\n?.*127\.0\.0\.1:8000/healthz", dockerfile)
