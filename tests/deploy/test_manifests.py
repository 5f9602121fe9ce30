"""deploy/kubernetes: every manifest is valid Kubernetes (the bundled schemas of
kubernetes-validate, strict: unknown fields are errors), and the manifests keep the promises
of issue 9 item 5 and docs/operations.md: three replicas spread across zones, a disruption
budget over the same pods, probes on /readyz and /livez, non-root and read-only, settings
from the ConfigMap and secrets from the Secret only, a grace period longer than the
shutdown. The ConfigMap's dragoman.toml is loaded with dragoman's own load_settings (the
Secret's values supplied as the environment the Deployment gives the container), so the
manifests cannot drift from the settings schema."""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import tomllib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pydantic import BaseModel

from dragoman.settings import Settings, load_settings

KUBE = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"
# The oldest Kubernetes minor the manifests are meant for (matchLabelKeys in spread
# constraints, the PDB's unhealthyPodEvictionPolicy) and the newest the package bundles.
KUBERNETES_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
NOT_IN_KUSTOMIZATION = {"secret.template.yaml", "job-db-upgrade.yaml"}
PLACEHOLDER = "REPLACE-ME"
# Environment values the pods may carry literally: none of them is a secret.
PLAIN_ENV = {"PGSSLMODE", "PGSSLROOTCERT", "HOME", "PYTHONDONTWRITEBYTECODE"}


def _key() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()


def _documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def _manifest_files() -> list[Path]:
    return sorted(p for p in KUBE.glob("*.yaml") if p.name != "kustomization.yaml")


def _all_documents() -> Iterator[tuple[Path, dict[str, Any]]]:
    for path in _manifest_files():
        for doc in _documents(path):
            yield path, doc


def _one(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [
        doc
        for _, doc in _all_documents()
        if doc["kind"] == kind and (name is None or doc["metadata"]["name"] == name)
    ]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def _deployment() -> dict[str, Any]:
    return _one("Deployment", "dragoman")


def _pod(workload: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def _container(workload: dict[str, Any]) -> dict[str, Any]:
    containers = _pod(workload)["containers"]
    assert len(containers) == 1
    container: dict[str, Any] = containers[0]
    return container


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    assert set(selector) <= {"matchLabels"}, "only matchLabels selectors are used here"
    match = selector["matchLabels"]
    return bool(match) and all(labels.get(k) == v for k, v in match.items())


def _pod_labels() -> dict[str, str]:
    labels: dict[str, str] = _deployment()["spec"]["template"]["metadata"]["labels"]
    return labels


def _settings_text() -> str:
    text: str = _one("ConfigMap", "dragoman-config")["data"]["dragoman.toml"]
    return text


def _secrets() -> dict[str, dict[str, str]]:
    return {
        doc["metadata"]["name"]: doc["stringData"]
        for _, doc in _all_documents()
        if doc["kind"] == "Secret"
    }


def _test_secret_values(active_kek: str) -> dict[str, dict[str, str]]:
    """Valid stand-ins for every value of the Secret templates (never real secrets)."""
    pem = (
        ec.generate_private_key(ec.SECP256R1())
        .private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        .decode()
    )
    db = "postgres.internal.example:5432/dragoman"
    return {
        "dragoman": {
            "store-database-url": f"postgresql+asyncpg://dragoman:test-pw@{db}",
            "audit-database-url": f"postgresql+asyncpg://dragoman_audit:test-pw@{db}",
            "redis-url": "rediss://:test-pw@redis.internal.example:6380/0",
            "mapping-keks": json.dumps({active_kek: _key()}),
            "mapping-index-key": _key(),
            "csrf-key": _key(),
            "audit-checkpoint-key.pem": pem,
        },
        "dragoman-migrator": {
            "database-url": f"postgresql+asyncpg://dragoman_owner:test-pw@{db}",
        },
    }


def _strings(data: Any) -> Iterator[str]:
    if isinstance(data, str):
        yield data
    elif isinstance(data, dict):
        for value in data.values():
            yield from _strings(value)
    elif isinstance(data, list):
        for value in data:
            yield from _strings(value)


def _mounts(workload: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """mountPath -> the volume mounted there."""
    volumes = {v["name"]: v for v in _pod(workload)["volumes"]}
    return {m["mountPath"]: volumes[m["name"]] for m in _container(workload)["volumeMounts"]}


# Paths dragoman writes (the others it reads at start, and they must exist then).
WRITTEN_PATHS = {"audit.path", "reconcile.report_path"}


def _materialise(workload: dict[str, Any], root: Path, values: dict[str, dict[str, str]]) -> str:
    """Lay the workload's mounts out under ``root`` (Secret items with the test values) and
    return dragoman.toml with every path moved under ``root``. Every path the settings name
    lies on a mount of the container (the Job, which serves nothing, needs only the files
    read at start)."""
    text = _settings_text()
    mounts = _mounts(workload)
    settings = tomllib.loads(text)
    serving = workload["kind"] == "Deployment"
    for dotted in _fields(Settings, "Path"):
        path = _lookup(settings, dotted)
        if not isinstance(path, str) or (dotted in WRITTEN_PATHS and not serving):
            continue
        assert path.startswith("/"), f"{dotted} = {path}: relative to what?"
        assert any(PurePosixPath(path).is_relative_to(mount) for mount in mounts), (
            f"{dotted} = {path} is on no volume of the {workload['kind']}'s container"
        )
    for mount, volume in mounts.items():
        target = root / mount.lstrip("/")
        if "secret" in volume:
            target.mkdir(parents=True, exist_ok=True)
            for item in volume["secret"]["items"]:
                data = values[volume["secret"]["secretName"]][item["key"]]
                (target / item["path"]).write_text(data)
        elif "emptyDir" in volume:
            target.mkdir(parents=True, exist_ok=True)
    paths = _path_values(settings)
    return re.sub(
        r'"(/[^"]*)"',
        lambda m: f'"{root}{m.group(1)}"' if m.group(1) in paths else m.group(0),
        text,
    )


def _environment(workload: dict[str, Any], values: dict[str, dict[str, str]]) -> dict[str, str]:
    env = {}
    for var in _container(workload).get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
        else:
            ref = var["valueFrom"]["secretKeyRef"]
            env[var["name"]] = values[ref["name"]][ref["key"]]
    return env


def _load(
    workload: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[Settings, dict[str, dict[str, str]]]:
    """dragoman.toml as the workload's container sees it, loaded by load_settings."""
    active_kek = tomllib.loads(_settings_text())["mapping"]["encryption"]["active_kek"]
    values = _test_secret_values(active_kek)
    settings_file = tmp_path / "dragoman.toml"
    settings_file.write_text(_materialise(workload, tmp_path / "root", values))
    for name in list(os.environ):
        if name.startswith("DRAGOMAN_"):
            monkeypatch.delenv(name)
    for name, value in _environment(workload, values).items():
        monkeypatch.setenv(name, value)
    return load_settings(settings_file), values


# -- schema ---------------------------------------------------------------------------------


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("path", _manifest_files(), ids=lambda p: p.name)
def test_every_manifest_is_valid_kubernetes(path: Path, version: str) -> None:
    documents = _documents(path)
    assert documents
    for doc in documents:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = "/".join(str(p) for p in exc.path)
            pytest.fail(f"{path.name}: {doc['kind']} at {where}: {exc.message}", pytrace=False)


def test_the_kustomization_lists_every_manifest_but_the_template_and_the_job() -> None:
    kustomization = yaml.safe_load((KUBE / "kustomization.yaml").read_text())
    listed = kustomization["resources"]
    assert len(listed) == len(set(listed))
    assert set(listed) == {p.name for p in _manifest_files()} - NOT_IN_KUSTOMIZATION
    image = _container(_deployment())["image"]
    name, tag = image.rsplit(":", 1)
    assert [(i["name"], i["newTag"]) for i in kustomization["images"]] == [(name, tag)]
    assert _container(_one("Job"))["image"] == image


def test_manifests_name_no_namespace() -> None:
    for path, doc in _all_documents():
        assert "namespace" not in doc["metadata"], f"{path.name}: {doc['kind']}"


# -- availability ---------------------------------------------------------------------------


def test_at_least_three_replicas_spread_across_zones_and_nodes() -> None:
    deployment = _deployment()
    assert deployment["spec"]["replicas"] >= 3
    assert _selects(deployment["spec"]["selector"], _pod_labels())
    rolling = deployment["spec"]["strategy"]["rollingUpdate"]
    assert rolling["maxUnavailable"] == 0
    spread = {c["topologyKey"]: c for c in _pod(deployment)["topologySpreadConstraints"]}
    zone = spread["topology.kubernetes.io/zone"]
    assert zone["whenUnsatisfiable"] == "DoNotSchedule"
    assert zone["maxSkew"] == 1
    assert _selects(zone["labelSelector"], _pod_labels())
    assert _selects(spread["kubernetes.io/hostname"]["labelSelector"], _pod_labels())


def test_the_disruption_budget_keeps_two_of_the_deployments_pods() -> None:
    pdb = _one("PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 2
    assert pdb["spec"]["minAvailable"] < _deployment()["spec"]["replicas"]
    assert _selects(pdb["spec"]["selector"], _pod_labels())


def test_the_service_reaches_the_pods_on_their_named_ports() -> None:
    service = _one("Service")
    assert service["spec"]["selector"] == _deployment()["spec"]["selector"]["matchLabels"]
    ports = {p["name"]: p["containerPort"] for p in _container(_deployment())["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= set(ports)
    assert ports["metrics"] == 9464


def test_probes_ask_readyz_for_readiness_and_livez_for_liveness() -> None:
    container = _container(_deployment())
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}

    def target(probe: str) -> tuple[str, int]:
        get = container[probe]["httpGet"]
        return get["path"], ports.get(get["port"], get["port"])

    http = ports["http"]
    assert target("readinessProbe") == ("/readyz", http)
    assert target("livenessProbe") == ("/livez", http)
    assert target("startupProbe") == ("/livez", http)


# -- security -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["Deployment", "Job"])
def test_pods_run_as_non_root_on_a_read_only_root_without_capabilities(kind: str) -> None:
    workload = _one(kind)
    pod = _pod(workload)
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    context = _container(workload)["securityContext"]
    assert context["runAsNonRoot"] is True
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"]["drop"] == ["ALL"]
    assert "add" not in context["capabilities"]
    assert context["seccompProfile"]["type"] == "RuntimeDefault"
    mounts = _mounts(workload)
    assert "emptyDir" in mounts["/tmp"]


def test_the_service_account_mounts_no_token() -> None:
    account = _one("ServiceAccount")
    assert account["automountServiceAccountToken"] is False
    assert _pod(_deployment())["serviceAccountName"] == account["metadata"]["name"]


def test_the_network_policy_admits_the_gateway_and_monitoring_only() -> None:
    policy = _one("NetworkPolicy", "dragoman")
    assert _selects(policy["spec"]["podSelector"], _pod_labels())
    assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    ports = {p["name"]: p["containerPort"] for p in _container(_deployment())["ports"]}
    admitted = []
    for rule in policy["spec"]["ingress"]:
        assert rule["from"], "an ingress rule without sources admits everybody"
        for source in rule["from"]:
            assert "ipBlock" not in source
            assert source["namespaceSelector"]["matchLabels"]
        admitted += [p["port"] for p in rule["ports"]]
    assert sorted(admitted) == sorted([ports["http"], ports["metrics"]])
    egress_ports = {p["port"] for rule in policy["spec"]["egress"] for p in rule["ports"]}
    assert egress_ports == {53, 5432, 6380, 443}
    for rule in policy["spec"]["egress"]:
        assert rule["to"] and rule["ports"], "an egress rule without peers or ports is open"


@pytest.mark.parametrize("kind", ["Deployment", "Job"])
def test_secrets_come_from_the_secret_only(kind: str) -> None:
    workload = _one(kind)
    container = _container(workload)
    assert "envFrom" not in container
    templates = _secrets()
    for var in container["env"]:
        name = var["name"]
        if "value" in var:
            assert name in PLAIN_ENV, f"{name} is set literally; secrets come from the Secret"
            assert not re.search(r"://[^/@]*:[^/@]*@", var["value"]), name
        else:
            ref = var["valueFrom"]["secretKeyRef"]
            assert set(var["valueFrom"]) == {"secretKeyRef"}, name
            assert ref["key"] in templates[ref["name"]], f"{name}: no {ref['key']} in the Secret"
        if name.startswith("DRAGOMAN_"):
            assert "valueFrom" in var, f"{name}: settings that are not secret belong in the file"
    for volume in _pod(workload)["volumes"]:
        if "secret" in volume:
            for item in volume["secret"]["items"]:
                assert item["key"] in templates[volume["secret"]["secretName"]]


def test_the_secret_template_holds_placeholders_only() -> None:
    for name, data in _secrets().items():
        for key, value in data.items():
            assert PLACEHOLDER in value, f"Secret {name}: {key} is not a placeholder"
    assert _test_secret_values("k").keys() == _secrets().keys()
    for name, data in _test_secret_values("k").items():
        assert data.keys() == _secrets()[name].keys()


def _fields(model: type[BaseModel], kind: str, prefix: str = "") -> Iterator[str]:
    """Dotted names of the settings (tables, not lists of tables) whose type names ``kind``."""
    for name, field in model.model_fields.items():
        if kind in str(field.annotation):
            yield prefix + name
        for arg in (*getattr(field.annotation, "__args__", ()), field.annotation):
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                yield from _fields(arg, kind, f"{prefix}{name}.")


def _lookup(data: dict[str, Any], dotted: str) -> Any:
    node: Any = data
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def _path_values(settings: dict[str, Any]) -> set[str]:
    """The file and directory names the settings file sets."""
    found = {_lookup(settings, dotted) for dotted in _fields(Settings, "Path")}
    return {value for value in found if isinstance(value, str)}


def test_the_configmap_holds_no_secret() -> None:
    settings = tomllib.loads(_settings_text())
    fields = list(_fields(Settings, "SecretStr"))
    assert "keys.master_key" in fields and "mapping.encryption.keks" in fields
    for dotted in fields:
        assert _lookup(settings, dotted) is None, f"{dotted} is a secret: it belongs in the Secret"
    for value in _strings(settings):
        if "://" in value:
            assert urlsplit(value).password is None, f"a password in {value.split('@')[-1]}"


# -- settings -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["Deployment", "Job"])
def test_the_configmap_settings_load_with_the_secret(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    workload = _one(kind)
    settings, values = _load(workload, tmp_path, monkeypatch)
    config = next(m for m, v in _mounts(workload).items() if "configMap" in v)
    container = _container(workload)
    command = container.get("command", []) + container.get("args", [])
    assert command[command.index("--config") + 1] == config
    # The Secret's values won over the password-less URLs of the file; the Job migrates as
    # the schema owner.
    if kind == "Job":
        secret, key = "dragoman-migrator", "database-url"
    else:
        secret, key = "dragoman", "store-database-url"
    assert settings.store.database_url == values[secret][key]
    assert settings.audit.database_url == values["dragoman"]["audit-database-url"]
    assert settings.browser.session_redis_url == values["dragoman"]["redis-url"]


def test_the_deployment_logs_json_lines() -> None:
    args = _container(_deployment())["args"]
    assert args[args.index("--log-format") + 1] == "json"


def test_the_production_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    deployment = _deployment()
    settings, _ = _load(deployment, tmp_path, monkeypatch)
    file = tomllib.loads(_settings_text())
    # Shared state outside the pods.
    assert settings.store.database_url.startswith("postgresql+asyncpg://")
    assert (
        urlsplit(file["store"]["database_url"]).hostname
        == urlsplit(settings.store.database_url).hostname
    )
    assert settings.keys.provider in ("aws-kms", "pkcs11")
    assert settings.browser.session_backend == "redis"
    assert settings.limits.backend == "redis"
    assert settings.anomaly.backend == "redis"
    assert settings.audit.sink == "file" and settings.audit.chain
    assert settings.audit.database_url is not None
    assert settings.audit.checkpoint_key_file is not None
    assert "emptyDir" in _mounts(deployment)[str(PurePosixPath(file["audit"]["path"]).parent)]
    # Migrations run in the Job, not in the serving pods.
    assert settings.store.auto_migrate is False
    assert "upgrade" in _container(_one("Job"))["command"]
    # The listener is the container's port, on every interface of the pod.
    ports = {p["name"]: p["containerPort"] for p in _container(deployment)["ports"]}
    assert settings.server.host == "0.0.0.0"
    assert settings.server.port == ports["http"]
    assert settings.server.tls is None
    # Workers: fixed (0 would be one per core of the node), within the CPU limit.
    cpu = _container(deployment)["resources"]["limits"]["cpu"]
    assert 1 <= settings.server.workers <= float(cpu)


def test_the_grace_period_outlasts_the_shutdown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    deployment = _deployment()
    settings, _ = _load(deployment, tmp_path, monkeypatch)
    command = _container(deployment)["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pre_stop = float(command[1])
    assert pre_stop >= 5, "endpoint removal must reach every balancer before SIGTERM"
    # After the preStop, SIGTERM: in-flight requests get server.shutdown_timeout, the
    # supervisor waits 5 s more for its workers (server.py), the shipper drains the audit.
    needed = pre_stop + settings.server.shutdown_timeout + 5 + settings.audit.ship_drain_timeout
    assert _pod(deployment)["terminationGracePeriodSeconds"] > needed
    assert settings.server.shutdown_timeout >= settings.upstream.read_timeout


def test_the_settings_do_not_name_the_metrics_port_until_the_settings_know_it() -> None:
    # [metrics] (host/port 9464) is being added to the settings; once it exists the file must
    # set it to the container's metrics port.
    file = tomllib.loads(_settings_text())
    if "metrics" in Settings.model_fields:
        ports = {p["name"]: p["containerPort"] for p in _container(_deployment())["ports"]}
        assert file.get("metrics", {}).get("port") == ports["metrics"], (
            "set [metrics] port = 9464 (and host 0.0.0.0) in the ConfigMap"
        )
    else:
        assert "metrics" not in file
