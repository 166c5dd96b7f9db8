"""deploy/kubernetes/: the manifests validate offline against the Kubernetes API schemas (kubernetes-validate's
bundled JSON schemas, strict: unknown fields are errors), and what they say agrees with pyturn: the ConfigMap's
reTurnServer.config loads with pyturn's loader (with the Secret's values as its secret files), the probes and the
scrape annotations use MetricsPort, the preStop hook drains the mounted config, the grace period outlasts
DrainTimeout."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from requirements import require_module

from pyturn.files.configfile import load_config

kubernetes_validate = require_module("kubernetes_validate")

MANIFESTS = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"
KUBERNETES_VERSION = "1.30.0"  # a version the bundled schemas cover; the manifests use only long-stable APIs


def _kustomization() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())
    return loaded


def _resources() -> list[dict[str, Any]]:
    documents: list[dict[str, Any]] = []
    for name in _kustomization()["resources"]:
        documents.extend(doc for doc in yaml.safe_load_all((MANIFESTS / name).read_text()) if doc)
    return documents


def _one(kind: str) -> dict[str, Any]:
    found = [doc for doc in _resources() if doc["kind"] == kind]
    assert len(found) == 1, kind
    return found[0]


def test_kustomization_lists_every_manifest() -> None:
    kustomization = _kustomization()
    assert kustomization["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert kustomization["kind"] == "Kustomization"
    listed = set(kustomization["resources"])
    on_disk = {path.name for path in MANIFESTS.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk
    assert {doc["kind"] for doc in _resources()} == {"Namespace", "ConfigMap", "Secret", "DaemonSet"}


@pytest.mark.parametrize("name", sorted(_kustomization()["resources"]))
def test_manifest_validates_against_the_api_schema(name: str) -> None:
    from kubernetes_validate import utils

    for document in yaml.safe_load_all((MANIFESTS / name).read_text()):
        if document:
            # ValidationError (with the path of the offending field) on any problem; strict: no unknown fields.
            utils.validate(document, KUBERNETES_VERSION, strict=True)


def test_validator_catches_a_broken_daemonset() -> None:
    from kubernetes_validate import utils

    broken = _one("DaemonSet")
    broken["spec"]["template"]["spec"]["hostNetwork"] = "yes"
    with pytest.raises(utils.ValidationError):
        utils.validate(broken, KUBERNETES_VERSION, strict=True)
    broken = _one("DaemonSet")
    broken["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"]["paht"] = "/healthz"
    with pytest.raises(utils.ValidationError):
        utils.validate(broken, KUBERNETES_VERSION, strict=True)


def _config_in_tmp(tmp_path: Path) -> tuple[Any, dict[str, Any]]:
    """The ConfigMap's config loaded by pyturn, its secret files taken from the Secret's values."""
    text = _one("ConfigMap")["data"]["reTurnServer.config"]
    (tmp_path / "reTurnServer.config").write_text(text)
    secret = _one("Secret")["stringData"]
    overrides = []
    for key, value in secret.items():
        (tmp_path / key).write_text(value + "\n")
    mounted = {"AuthSharedSecretFile": "auth-secret", "NonceSecretFile": "nonce-secret"}
    for config_key, secret_key in mounted.items():
        assert f"{config_key} = /etc/pyturn/secrets/{secret_key}" in text
        overrides.append(f"--{config_key}={tmp_path / secret_key}")
    config, warnings = load_config(tmp_path / "reTurnServer.config", overrides)
    assert warnings == []
    return config, secret


def test_configmap_config_loads_with_pyturns_loader(tmp_path: Path) -> None:
    config, _ = _config_in_tmp(tmp_path)
    assert config.turn_address == "0.0.0.0"
    assert config.uses_shared_secrets
    assert len(config.alternate_servers) >= 2
    assert config.metrics_port == 9641 and config.metrics_address == "0.0.0.0"
    assert config.pid_file == "/run/pyturn/pyturn.pid"
    assert not config.daemonize
    # Outside Linux's default ephemeral range 32768-60999: no other socket on the node takes relay ports.
    assert config.allocation_port_range_min > 60999


def test_daemonset_agrees_with_the_config(tmp_path: Path) -> None:
    config, _ = _config_in_tmp(tmp_path)
    pod = _one("DaemonSet")["spec"]["template"]
    spec = pod["spec"]
    assert spec["hostNetwork"] is True
    assert spec["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert spec["terminationGracePeriodSeconds"] > config.drain_timeout
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(config.metrics_port)
    assert annotations["prometheus.io/path"] == "/metrics"
    (container,) = spec["containers"]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": config.metrics_port}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": config.metrics_port}
    mounts = {mount["name"]: mount["mountPath"] for mount in container["volumeMounts"]}
    config_path = mounts["config"]
    assert container["args"][0] == config_path
    assert container["lifecycle"]["preStop"]["exec"]["command"] == ["pyturn", "drain", "-c", config_path, "--wait"]
    assert mounts["secrets"] == "/etc/pyturn/secrets"
    assert mounts["run"] == "/run/pyturn"
    ports = {(port["containerPort"], port["protocol"]) for port in container["ports"]}
    assert {(config.turn_port, "UDP"), (config.turn_port, "TCP"), (config.metrics_port, "TCP")} <= ports
    volumes = {volume["name"]: volume for volume in spec["volumes"]}
    assert volumes["config"]["configMap"]["name"] == _one("ConfigMap")["metadata"]["name"]
    assert volumes["secrets"]["secret"]["secretName"] == _one("Secret")["metadata"]["name"]
