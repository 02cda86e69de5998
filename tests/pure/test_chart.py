"""The Helm chart (charts/iot-orchestrator): linted, rendered, and what it renders checked as plain data.

No Kubernetes API server can run here: `helm template` renders the objects, and the official schemas of the oldest
and newest Kubernetes versions the project targets check them, as for the runtime's own builders.
"""

from __future__ import annotations

import base64
import functools
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from cryptography.fernet import Fernet

from orchestrator.cluster import templates_fingerprint
from orchestrator.config import PROJECT_ROOT, Settings
from orchestrator.templates import TemplateRegistry, load_template

CHART = PROJECT_ROOT / "charts" / "iot-orchestrator"
TEMPLATES = PROJECT_ROOT / "integration_templates"
CHART_TEMPLATES = CHART / "files" / "templates"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
VERSIONS = ["1.30.0", "1.37.0"]
RELEASE, NAMESPACE = "demo", "iot"
FULLNAME = "demo-iot-orchestrator"
Docs = Sequence[dict[str, Any]]

# Exactly what orchestrator/runtime/kubernetes.py calls: (apiGroup, resource) -> verbs.
RUNTIME_RULES = {
    ("apps", "statefulsets"): {"get", "list", "create", "update", "delete"},
    ("", "secrets"): {"create", "update", "delete"},
    ("", "pods"): {"list", "delete"},
    ("", "pods/log"): {"get"},
}
CONTAINER_SECURITY = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
    "capabilities": {"drop": ["ALL"]},
}
# Secrets set in the tests' own values: none may show outside a Secret.
BUNDLED_SECRETS = {
    "adminToken": "test-admin-token-5f0c7e9a1b2d",
    "secretKey": "tF7wJPU7cAZxOBl5LNXJ0jdR5twRnQlZ6KDw0PinzKM=",
    "mosquitto": {"auth": {"password": "test-broker-password-61d2"}},
    "postgresql": {"auth": {"password": "test-database-password-93ab"}},
}
EXTERNAL_SECRETS = {
    "adminToken": "test-admin-token-external-7c41",
    "secretKey": "0fo7gugMVuUzmrvgwzJwyFDv0l-CB4VUDDU0ZhKm5HA=",
    "mosquitto": {"enabled": False},
    "externalBroker": {"url": "mqtts://mqtt.example.com:8883", "password": "test-external-broker-password-0e5f"},
    "postgresql": {"enabled": False},
    "externalDatabase": {"url": "postgresql+psycopg://iot:test-external-db-password-b7d4@db.example.com:5432/iot"},
}


def helm_binary() -> str:
    """helm from the virtualenv (scripts/install-helm) or PATH; a missing tool fails the test, never skips it."""
    local = PROJECT_ROOT / ".venv" / "bin" / "helm"
    if local.exists():
        return str(local)
    found = shutil.which("helm")
    if found is None:
        pytest.fail("helm is not installed: run scripts/install-helm (it installs .venv/bin/helm)")
    return found


def run_helm(*args: str, values: dict[str, Any] | None = None) -> subprocess.CompletedProcess[str]:
    """helm with `args`, plus `values` as one more values file."""
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as extra:
        command = [helm_binary(), *args]
        if values is not None:
            yaml.safe_dump(values, extra)
            extra.flush()
            command += ["--values", extra.name]
        return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


def template(
    *files: Path, values: dict[str, Any] | None = None, release: str = RELEASE
) -> subprocess.CompletedProcess[str]:
    arguments = ["template", release, str(CHART), "--namespace", NAMESPACE]
    for path in files:
        arguments += ["--values", str(path)]
    return run_helm(*arguments, values=values)


def render(*files: Path, values: dict[str, Any] | None = None, release: str = RELEASE) -> list[dict[str, Any]]:
    """The objects `helm template` renders (it fails the test with helm's message if it cannot)."""
    result = template(*files, values=values, release=release)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@functools.cache
def render_ci(name: str) -> tuple[dict[str, Any], ...]:
    return tuple(render(CHART / "ci" / name))


def find(docs: Docs, kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [doc for doc in docs if doc["kind"] == kind and (name is None or doc["metadata"]["name"] == name)]


def one(docs: Docs, kind: str, name: str | None = None) -> dict[str, Any]:
    found = find(docs, kind, name)
    assert len(found) == 1, f"{len(found)} {kind} objects named {name}: {[doc['metadata']['name'] for doc in found]}"
    return found[0]


def orchestrator_pod(docs: Docs) -> dict[str, Any]:
    return one(docs, "Deployment")["spec"]["template"]["spec"]


def secret_strings(docs: Docs) -> dict[str, str]:
    """Every value of every rendered Secret, decoded."""
    found = {}
    for secret in find(docs, "Secret"):
        for key, value in (secret.get("data") or {}).items():
            found[key] = base64.b64decode(value).decode()
        found.update(secret.get("stringData") or {})
    return found


def pod_containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    spec = pod_spec(doc)
    if spec is None:
        return []
    return [*spec.get("initContainers", []), *spec["containers"]]


def pod_spec(doc: dict[str, Any]) -> dict[str, Any] | None:
    if doc["kind"] == "Pod":
        return doc["spec"]
    if doc["kind"] in ("Deployment", "StatefulSet"):
        return doc["spec"]["template"]["spec"]
    return None


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {item["name"]: item for item in container.get("env", [])}


# -- lint and schemas ----------------------------------------------------------------------------------------------


def test_the_ci_values_files_cover_the_shapes_that_matter() -> None:
    names = {path.name.removesuffix("-values.yaml") for path in CI_VALUES}
    assert {"default", "ha-external", "ingress", "minimal"} <= names


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda path: path.name)
def test_helm_lint_passes(values: Path) -> None:
    result = run_helm("lint", "--strict", str(CHART), "--namespace", NAMESPACE, "--values", str(values))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("values", CI_VALUES, ids=lambda path: path.name)
def test_every_rendered_object_passes_the_official_schemas(values: Path, version: str) -> None:
    docs = render_ci(values.name)
    assert docs
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)


def test_strict_validation_would_catch_a_misspelled_field() -> None:
    """The check above means something: a field the API does not know fails it."""
    deployment = json.loads(json.dumps(one(render_ci("default-values.yaml"), "Deployment")))
    deployment["spec"]["template"]["spec"]["containers"][0]["readOnlyRootFileSystem"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, VERSIONS[0], strict=True)


@pytest.mark.parametrize(
    ("setting", "named"),
    [
        ("replicaCount=two", "/replicaCount"),
        ("mosquitto.persistence.enabled=maybe", "/mosquitto/persistence/enabled"),
        ("runtime.imagePullPolicy=Sometimes", "/runtime/imagePullPolicy"),
        ("secretKey=not-a-fernet-key", "/secretKey"),
        ("externalDatabase.url=postgres://db/iot", "/externalDatabase/url"),
    ],
)
def test_the_values_schema_refuses_a_wrong_value(setting: str, named: str) -> None:
    result = run_helm("template", RELEASE, str(CHART), "--set", setting)
    assert result.returncode != 0
    assert named in result.stderr, result.stderr


@pytest.mark.parametrize("key", ["replicas", "mosquitto.storageSize"])
def test_the_values_schema_refuses_an_unknown_key(key: str) -> None:
    result = run_helm("template", RELEASE, str(CHART), "--set", f"{key}=3")
    assert result.returncode != 0
    assert f"'{key.rsplit('.', 1)[-1]}' not allowed" in result.stderr, result.stderr


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"mosquitto": {"enabled": False}}, "externalBroker.url is required"),
        (
            {"mosquitto": {"enabled": False}, "externalBroker": {"url": "mqtt://broker:1883"}},
            "externalBroker.password (or existingSecret) is required",
        ),
        ({"postgresql": {"enabled": False}}, "externalDatabase.url (or existingSecret) is required"),
        ({"externalDatabase": {"url": "postgresql+psycopg://a:b@db:5432/c"}}, "set postgresql.enabled=false"),
        ({"mosquitto": {"tls": {"enabled": True}}}, "mosquitto.tls.secretName is required"),
    ],
)
def test_what_the_schema_cannot_say_is_refused_by_name(values: dict[str, Any], named: str) -> None:
    result = template(values=values)
    assert result.returncode != 0
    assert named in result.stderr, result.stderr


# -- RBAC ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda path: path.name)
def test_the_role_grants_exactly_what_the_runtime_calls(values: Path) -> None:
    docs = render_ci(values.name)
    role, binding = one(docs, "Role"), one(docs, "RoleBinding")
    rules = role["rules"]
    granted = {
        (group, resource): set(rule["verbs"])
        for rule in rules
        for group in rule["apiGroups"]
        for resource in rule["resources"]
    }
    assert granted == RUNTIME_RULES
    # One rule per resource, none of them wide.
    assert len(rules) == len(RUNTIME_RULES)
    assert all(len(rule["apiGroups"]) == 1 and len(rule["resources"]) == 1 for rule in rules)
    assert all("resourceNames" not in rule and "nonResourceURLs" not in rule for rule in rules)
    assert not find(docs, "ClusterRole") and not find(docs, "ClusterRoleBinding")
    # Bound to the orchestrator's account, in the namespace where workers run.
    account = one(docs, "ServiceAccount")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": NAMESPACE}
    ]
    pod = orchestrator_pod(docs)
    assert pod["serviceAccountName"] == account["metadata"]["name"]
    workers = env_of(pod["containers"][0])["ORCH_RUNTIME__KUBERNETES__NAMESPACE"]["value"]
    assert role["metadata"]["namespace"] == binding["metadata"]["namespace"] == workers


def test_workers_in_another_namespace_get_the_role_there() -> None:
    docs = render_ci("ha-external-values.yaml")
    assert one(docs, "Role")["metadata"]["namespace"] == "iot-workers"
    assert one(docs, "ServiceAccount")["metadata"]["namespace"] == NAMESPACE
    env = env_of(orchestrator_pod(docs)["containers"][0])
    assert env["ORCH_RUNTIME__KUBERNETES__IMAGE_PULL_POLICY"]["value"] == "Always"
    assert json.loads(env["ORCH_RUNTIME__KUBERNETES__IMAGE_PULL_SECRETS"]["value"]) == ["regcred"]


# -- secrets -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (
            BUNDLED_SECRETS,
            ["test-admin-token-5f0c7e9a1b2d", "test-broker-password-61d2", "test-database-password-93ab"],
        ),
        (
            EXTERNAL_SECRETS,
            ["test-admin-token-external-7c41", "test-external-broker-password-0e5f", "test-external-db-password-b7d4"],
        ),
    ],
    ids=["bundled", "external"],
)
def test_secret_values_appear_only_in_the_secret(values: dict[str, Any], expected: list[str]) -> None:
    docs = render(values=values)
    secret = secret_strings(docs)
    stored = "\n".join(secret.values())
    for value in [*expected, values["secretKey"]]:
        assert value in stored
        for doc in docs:
            if doc["kind"] != "Secret":
                assert value not in json.dumps(doc), f"{value} is in {doc['kind']} {doc['metadata']['name']}"
    # The pods read them from the Secret.
    env = env_of(orchestrator_pod(docs)["containers"][0])
    for name, key in [
        ("ORCH_DATABASE_URL", "database-url"),
        ("ORCH_ADMIN_TOKEN", "admin-token"),
        ("ORCH_SECRET_KEY", "secret-key"),
        ("ORCH_BROKER__PASSWORD", "broker-password"),
    ]:
        assert env[name] == {"name": name, "valueFrom": {"secretKeyRef": {"name": FULLNAME, "key": key}}}


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda path: path.name)
def test_no_rendered_secret_value_appears_outside_a_secret(values: Path) -> None:
    """Also the generated ones (empty values): every value of every Secret, in every other object."""
    docs = render_ci(values.name)
    others = json.dumps([doc for doc in docs if doc["kind"] != "Secret"])
    for key, value in secret_strings(docs).items():
        assert value not in others, f"the Secret's {key} shows outside it"


def test_generated_secrets_are_usable_and_the_database_url_names_the_bundled_database() -> None:
    secret = secret_strings(render_ci("default-values.yaml"))
    Fernet(secret["secret-key"].encode())  # a valid key
    assert len(secret["admin-token"]) >= 32
    assert len(secret["broker-password"]) >= 24 and len(secret["postgres-password"]) >= 24
    assert secret["database-url"] == (
        f"postgresql+psycopg://orchestrator:{secret['postgres-password']}@{FULLNAME}-postgresql.{NAMESPACE}.svc:5432/orchestrator"
    )


def test_an_existing_secret_is_used_with_its_own_key_names_and_none_is_made() -> None:
    docs = render_ci("existing-secret-values.yaml")
    assert not find(docs, "Secret")
    env = env_of(orchestrator_pod(docs)["containers"][0])
    assert env["ORCH_SECRET_KEY"]["valueFrom"]["secretKeyRef"] == {
        "name": "iot-orchestrator-credentials",
        "key": "ORCH_SECRET_KEY",
    }
    postgres = one(docs, "StatefulSet", f"{FULLNAME}-postgresql")["spec"]["template"]["spec"]["containers"][0]
    assert env_of(postgres)["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"]["key"] == "POSTGRES_PASSWORD"


def test_a_changed_secret_or_template_rolls_the_pods() -> None:
    def annotations(values: dict[str, Any]) -> dict[str, str]:
        return one(render(values=values), "Deployment")["spec"]["template"]["metadata"]["annotations"]

    base = annotations(BUNDLED_SECRETS)
    assert base == annotations(BUNDLED_SECRETS)  # stable when nothing changes
    other_token = annotations({**BUNDLED_SECRETS, "adminToken": "another-admin-token-1234"})
    assert other_token["checksum/secret"] != base["checksum/secret"]
    assert other_token["checksum/templates"] == base["checksum/templates"]
    more_templates = annotations({**BUNDLED_SECRETS, "extraTemplates": {"x.yaml": "id: x\n"}})
    assert more_templates["checksum/templates"] != base["checksum/templates"]


# -- pods ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda path: path.name)
def test_the_orchestrator_pods_are_hardened(values: Path) -> None:
    docs = render_ci(values.name)
    pod = orchestrator_pod(docs)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 65532
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["enableServiceLinks"] is False
    [container] = pod["containers"]
    assert container["securityContext"] == CONTAINER_SECURITY
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    # The root file system is read-only: /tmp and /data are emptyDirs (each replica its own data directory).
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
    assert "emptyDir" in volumes[mounts["/tmp"]] and "emptyDir" in volumes[mounts["/data"]]
    env = env_of(container)
    assert env["ORCH_DATA_DIR"]["value"] == "/data"
    assert container["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda path: path.name)
def test_every_pod_of_the_chart_is_hardened(values: Path) -> None:
    """The bundled broker and database and the test pod too: non-root, read-only, no capabilities."""
    for doc in render_ci(values.name):
        spec = pod_spec(doc)
        if spec is None:
            continue
        where = f"{doc['kind']} {doc['metadata']['name']}"
        assert spec["securityContext"]["runAsNonRoot"] is True, where
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, where
        for container in pod_containers(doc):
            assert container["securityContext"] == CONTAINER_SECURITY, f"{where}: {container['name']}"
            assert container["resources"]["limits"]["memory"], f"{where}: {container['name']}"


def test_the_orchestrator_environment() -> None:
    env = env_of(orchestrator_pod(render_ci("default-values.yaml"))["containers"][0])
    plain = {name: item["value"] for name, item in env.items() if "value" in item}
    assert plain == {
        "ORCH_ENVIRONMENT": "production",
        "ORCH_HOST": "0.0.0.0",
        "ORCH_PORT": "8080",
        "ORCH_DATA_DIR": "/data",
        "ORCH_TEMPLATES_DIR": "/etc/iot-orchestrator/templates",
        "ORCH_PUBLIC_URL": f"http://{FULLNAME}.{NAMESPACE}.svc:8080",
        "ORCH_LEASE_SECONDS": "10",
        "ORCH_LOG_LEVEL": "INFO",
        "ORCH_BROKER__MODE": "external",
        "ORCH_BROKER__URL": f"mqtt://{FULLNAME}-mosquitto.{NAMESPACE}.svc:1883",
        "ORCH_BROKER__WORKER_URL": f"mqtt://{FULLNAME}-mosquitto.{NAMESPACE}.svc:1883",
        "ORCH_BROKER__USERNAME": "orchestrator",
        "ORCH_RUNTIME__KIND": "kubernetes",
        "ORCH_RUNTIME__KUBERNETES__NAMESPACE": NAMESPACE,
        "ORCH_RUNTIME__KUBERNETES__IMAGE_PULL_POLICY": "IfNotPresent",
    }
    deployment = one(render_ci("default-values.yaml"), "Deployment")
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == "iot-orchestrator/orchestrator:0.1.0"
    # A replica refuses to join others with other templates: a rolling update of them would never finish.
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}


@pytest.mark.parametrize(
    "values", [path for path in CI_VALUES if "existing-secret" not in path.name], ids=lambda path: path.name
)
def test_the_rendered_environment_is_what_the_orchestrator_accepts(
    values: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Deployment's environment (secrets taken from the rendered Secret) passes the orchestrator's Settings."""
    docs = render_ci(values.name)
    secret = secret_strings(docs)
    container = orchestrator_pod(docs)["containers"][0]
    for name in [name for name in os.environ if name.startswith("ORCH_")]:
        monkeypatch.delenv(name)
    for name, item in env_of(container).items():
        monkeypatch.setenv(name, item["value"] if "value" in item else secret[item["valueFrom"]["secretKeyRef"]["key"]])
    # Files the pod mounts, here on the local disk.
    monkeypatch.setenv("ORCH_TEMPLATES_DIR", str(tmp_path))
    monkeypatch.setenv("ORCH_DATA_DIR", str(tmp_path / "data"))
    if "ORCH_BROKER__CA_FILE" in env_of(container):
        (tmp_path / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\n")
        monkeypatch.setenv("ORCH_BROKER__CA_FILE", str(tmp_path / "ca.crt"))
    settings = Settings()
    assert settings.environment == "production"
    assert settings.runtime.kind == "kubernetes" and settings.broker.mode == "external"
    assert settings.database_url is not None and settings.database_url.startswith("postgresql+psycopg://")
    assert settings.broker.password is not None
    assert settings.api_url == env_of(container)["ORCH_PUBLIC_URL"]["value"]


# -- toggles -------------------------------------------------------------------------------------------------------


def test_defaults_two_replicas_with_a_disruption_budget_and_a_network_policy() -> None:
    docs = render_ci("default-values.yaml")
    assert one(docs, "Deployment")["spec"]["replicas"] == 2
    pdb = one(docs, "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"] == one(docs, "Deployment")["spec"]["selector"]
    assert one(docs, "NetworkPolicy", FULLNAME)
    assert not find(docs, "Ingress")
    service = one(docs, "Service", FULLNAME)
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["ports"] == [{"name": "http", "port": 8080, "targetPort": "http", "protocol": "TCP"}]


def test_minimal_has_one_replica_and_neither_budget_nor_policy() -> None:
    docs = render_ci("minimal-values.yaml")
    assert one(docs, "Deployment")["spec"]["replicas"] == 1
    assert not find(docs, "PodDisruptionBudget")
    assert not find(docs, "NetworkPolicy")
    assert not find(docs, "Pod")  # tests.enabled: false
    # No volumes asked for: the bundled services use emptyDirs.
    assert all("volumeClaimTemplates" not in doc["spec"] for doc in find(docs, "StatefulSet"))


@pytest.mark.parametrize(("replicas", "budget"), [(1, False), (2, True), (5, True)])
def test_the_disruption_budget_follows_the_replicas(replicas: int, budget: bool) -> None:
    docs = render(values={"replicaCount": replicas})
    assert one(docs, "Deployment")["spec"]["replicas"] == replicas
    assert bool(find(docs, "PodDisruptionBudget")) is budget


def test_three_replicas_on_external_services() -> None:
    docs = render_ci("ha-external-values.yaml")
    assert one(docs, "Deployment")["spec"]["replicas"] == 3
    assert one(docs, "PodDisruptionBudget")["spec"]["minAvailable"] == 2
    assert not find(docs, "StatefulSet")  # neither bundled broker nor database
    env = env_of(orchestrator_pod(docs)["containers"][0])
    assert env["ORCH_BROKER__URL"]["value"] == "mqtts://mqtt.example.com:8883"
    assert env["ORCH_BROKER__WORKER_URL"]["value"] == "mqtt://mosquitto.mqtt.svc:1883"
    assert env["ORCH_BROKER__CA_FILE"]["value"] == "/etc/iot-orchestrator/broker-ca/ca.crt"
    assert one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["image"] == (
        "registry.example.com/iot/orchestrator:0.1.0"
    )


def test_the_ingress_routes_to_the_service_with_tls() -> None:
    docs = render_ci("ingress-values.yaml")
    ingress = one(docs, "Ingress")
    assert ingress["apiVersion"] == "networking.k8s.io/v1"
    assert ingress["spec"]["ingressClassName"] == "nginx"
    assert ingress["spec"]["tls"] == [{"secretName": "iot-example-com-tls", "hosts": ["iot.example.com"]}]
    [rule] = ingress["spec"]["rules"]
    assert rule["host"] == "iot.example.com"
    assert rule["http"]["paths"] == [
        {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": FULLNAME, "port": {"name": "http"}}}}
    ]
    assert ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"
    env = env_of(orchestrator_pod(docs)["containers"][0])
    assert env["ORCH_PUBLIC_URL"]["value"] == "https://iot.example.com"


def test_the_network_policy_lets_in_the_api_and_out_what_the_orchestrator_reaches() -> None:
    policy = one(render_ci("default-values.yaml"), "NetworkPolicy", FULLNAME)["spec"]
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    assert policy["ingress"] == [{"ports": [{"port": "http", "protocol": "TCP"}]}]
    egress = policy["egress"]
    ports = [sorted((port["port"], port["protocol"]) for port in rule["ports"]) for rule in egress]
    assert [(53, "TCP"), (53, "UDP")] in ports
    assert [(443, "TCP"), (6443, "TCP")] in ports
    selected = {
        rule["to"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/component"]: rule["ports"][0]["port"]
        for rule in egress
        if "to" in rule
    }
    assert selected == {"broker": 1883, "database": 5432, "orchestrator": 8080}


def test_the_network_policy_with_external_services_opens_their_ports() -> None:
    policy = one(render_ci("ha-external-values.yaml"), "NetworkPolicy")["spec"]
    rules = policy["egress"]
    assert {"ports": [{"port": 5432, "protocol": "TCP"}]} in rules
    assert {"ports": [{"port": 1883, "protocol": "TCP"}, {"port": 8883, "protocol": "TCP"}]} in rules
    api = next(rule for rule in rules if {"port": 6443, "protocol": "TCP"} in rule["ports"])
    assert api["to"] == [{"ipBlock": {"cidr": "10.0.0.1/32"}}]
    assert {"to": [{"ipBlock": {"cidr": "192.0.2.0/24"}}]} in rules  # extraEgress


# -- the bundled broker and database -------------------------------------------------------------------------------


def test_the_bundled_broker_loads_dynamic_security_and_keeps_its_data() -> None:
    docs = render_ci("default-values.yaml")
    conf = one(docs, "ConfigMap", f"{FULLNAME}-mosquitto")["data"]["mosquitto.conf"]
    lines = [line for line in conf.splitlines() if line and not line.startswith("#")]
    for line in [
        "per_listener_settings false",
        "allow_anonymous false",
        "plugin /usr/lib/mosquitto_dynamic_security.so",
        "plugin_opt_config_file /mosquitto/data/dynamic-security.json",
        "listener 1883",
        "persistence true",
        "persistence_location /mosquitto/data/",
        "max_queued_messages 1000000",
    ]:
        assert line in lines
    broker = one(docs, "StatefulSet", f"{FULLNAME}-mosquitto")
    assert broker["spec"]["template"]["spec"]["containers"][0]["image"] == "eclipse-mosquitto:2.0"
    [claim] = broker["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "1Gi"
    [init] = broker["spec"]["template"]["spec"]["initContainers"]
    script = init["command"][-1]
    assert "if [ ! -f /mosquitto/data/dynamic-security.json ]" in script
    assert (
        'mosquitto_ctrl dynsec init /mosquitto/data/dynamic-security.json "$DYNSEC_ADMIN_USERNAME" '
        '"$DYNSEC_ADMIN_PASSWORD"' in script
    )
    assert env_of(init)["DYNSEC_ADMIN_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": FULLNAME,
        "key": "broker-password",
    }
    assert {mount["mountPath"] for mount in init["volumeMounts"]} == {"/mosquitto/data"}
    service = one(docs, "Service", f"{FULLNAME}-mosquitto")
    assert [port["port"] for port in service["spec"]["ports"]] == [1883]


def test_the_bundled_broker_with_tls_exposes_only_tls_to_devices() -> None:
    docs = render_ci("broker-tls-values.yaml")
    conf = one(docs, "ConfigMap", "iot-mosquitto")["data"]["mosquitto.conf"]
    assert "listener 8883\ncertfile /mosquitto/certs/tls.crt\nkeyfile /mosquitto/certs/tls.key" in conf
    assert "listener 8084\nprotocol websockets" in conf
    assert conf.rstrip().endswith("max_connections 10000")
    devices = one(docs, "Service", "iot-mosquitto-devices")
    assert devices["spec"]["type"] == "LoadBalancer"
    assert [port["port"] for port in devices["spec"]["ports"]] == [8883, 8084]


def test_the_bundled_database() -> None:
    docs = render_ci("default-values.yaml")
    database = one(docs, "StatefulSet", f"{FULLNAME}-postgresql")
    [container] = database["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "postgres:16"
    env = env_of(container)
    assert env["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": FULLNAME, "key": "postgres-password"}
    assert env["PGDATA"]["value"].startswith("/var/lib/postgresql/data/")
    assert one(docs, "Service", f"{FULLNAME}-postgresql")["spec"]["ports"][0]["port"] == 5432
    # Only the orchestrator reaches it.
    policy = one(docs, "NetworkPolicy", f"{FULLNAME}-postgresql")["spec"]
    assert (
        policy["ingress"][0]["from"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "orchestrator"
    )


# -- names and labels ----------------------------------------------------------------------------------------------


RECOMMENDED_LABELS = {
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/component",
    "app.kubernetes.io/part-of",
    "app.kubernetes.io/managed-by",
    "helm.sh/chart",
}


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda path: path.name)
def test_every_object_carries_the_recommended_labels(values: Path) -> None:
    for doc in render_ci(values.name):
        assert set(doc["metadata"]["labels"]) >= RECOMMENDED_LABELS, f"{doc['kind']} {doc['metadata']['name']}"
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "iot-orchestrator"


def test_names_fit_with_the_longest_release_name() -> None:
    release = "r" * 53  # Helm's limit for a release name
    docs = render(values=BUNDLED_SECRETS, release=release)
    names = [(doc["kind"], doc["metadata"]["name"]) for doc in docs]
    assert len(set(names)) == len(names)
    for kind, name in names:
        assert len(name) <= (52 if kind == "StatefulSet" else 63), name
        assert not name.endswith("-")
    for doc in docs:
        assert all(len(value) <= 63 for value in doc["metadata"]["labels"].values())
    # Parts keep their suffix whole, so they never collide.
    assert {name for kind, name in names if kind == "StatefulSet"} == {
        f"{'r' * 42}-mosquitto",  # 52 characters
        f"{'r' * 41}-postgresql",
    }


def test_fullname_override_names_everything() -> None:
    docs = render(values={**BUNDLED_SECRETS, "fullnameOverride": "iot"})
    assert one(docs, "Deployment")["metadata"]["name"] == "iot"
    assert one(docs, "StatefulSet", "iot-mosquitto")


# -- integration templates -----------------------------------------------------------------------------------------


def expected_template_files() -> dict[str, Path]:
    """integration_templates/*.yaml and the local logos they reference, by path relative to the folder."""
    files = {path.name: path for path in sorted(TEMPLATES.glob("*.yaml"))}
    for path in list(files.values()):
        logo = str(yaml.safe_load(path.read_text()).get("logo") or "")
        if logo and not logo.startswith(("http://", "https://")):
            files[logo] = TEMPLATES / logo
    return files


def test_the_chart_templates_are_copies_of_integration_templates() -> None:
    """Byte for byte; refresh them as docs/kubernetes.md says (Refreshing the chart's templates)."""
    expected = expected_template_files()
    for relative, original in expected.items():
        copy = CHART_TEMPLATES / relative
        assert copy.is_file(), f"{copy} is missing: refresh the chart's templates (docs/kubernetes.md)"
        assert copy.read_bytes() == original.read_bytes(), f"{copy} differs from {original}: refresh it"
    for copy in CHART_TEMPLATES.rglob("*"):
        if copy.is_file():
            original = TEMPLATES / copy.relative_to(CHART_TEMPLATES)
            assert original.is_file(), f"{copy} is not in integration_templates/ any more: remove it"


def project_templates(docs: Docs, into: Path) -> None:
    """Write the templates ConfigMap as the pod's volume shows it (its items: key -> path)."""
    pod = orchestrator_pod(docs)
    [volume] = [volume for volume in pod["volumes"] if volume["name"] == "templates"]
    config_map = one(docs, "ConfigMap", volume["configMap"]["name"])
    for item in volume["configMap"]["items"]:
        target = into / item["path"]
        target.parent.mkdir(parents=True, exist_ok=True)
        if item["key"] in config_map.get("data", {}):
            target.write_text(config_map["data"][item["key"]])
        else:
            target.write_bytes(base64.b64decode(config_map["binaryData"][item["key"]]))
    # Every key is mounted.
    keys = {item["key"] for item in volume["configMap"]["items"]}
    assert keys == set(config_map.get("data", {})) | set(config_map.get("binaryData", {}))


def test_the_mounted_templates_are_those_of_the_image(tmp_path: Path) -> None:
    """The volume holds the same files as integration_templates/, so the orchestrator loads the same templates."""
    project_templates(render_ci("default-values.yaml"), tmp_path)
    for relative, original in expected_template_files().items():
        assert (tmp_path / relative).read_bytes() == original.read_bytes()
    mounted = TemplateRegistry(tmp_path).load()
    assert not mounted.broken
    shipped = TemplateRegistry(TEMPLATES).load()
    assert templates_fingerprint(mounted.templates) == templates_fingerprint(shipped.templates)


def test_extra_templates_are_mounted_beside_the_built_in_ones(tmp_path: Path) -> None:
    project_templates(render_ci("broker-tls-values.yaml"), tmp_path)
    template = load_template(tmp_path / "my-webhook.yaml")
    assert template.image.reference == "registry.example.com/iot/webhook:0.1.0"
    assert (tmp_path / "webhook.yaml").is_file() and (tmp_path / "logos" / "webhook.svg").is_file()


def test_an_extra_template_replaces_a_built_in_one_of_the_same_name(tmp_path: Path) -> None:
    text = (
        (TEMPLATES / "webhook.yaml")
        .read_text()
        .replace("repository: iot-orchestrator/webhook", "repository: registry.example.com/webhook")
    )
    project_templates(render(values={**BUNDLED_SECRETS, "extraTemplates": {"webhook.yaml": text}}), tmp_path)
    assert load_template(tmp_path / "webhook.yaml").image.reference == "registry.example.com/webhook:0.1.0"
