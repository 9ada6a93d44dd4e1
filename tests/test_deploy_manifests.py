"""Static checks of the Kubernetes manifests in deploy/ (no cluster needed)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
CRD = DEPLOY / "crds" / "scheduling.x-k8s.io_podgroups.yaml"
# sha256 of config/crd/bases/scheduling.x-k8s.io_podgroups.yaml in sigs.k8s.io/scheduler-plugins v0.34.7.
# The CRD is shipped byte-for-byte; change this only together with a new upstream copy.
UPSTREAM_CRD_SHA256 = "e87980a29866bbf8a4df5452e03d876b6ae952c80b5443abdfaacee3b9adf60c"


def _yaml_files() -> list[Path]:
    # not manifests: Go source, the Helm chart (templates; tests/integration/test_helm_chart.py renders and
    # dry-runs it) and Prometheus rule files (tests/test_prometheus_rules.py runs promtool on them)
    skip = [DEPLOY / d for d in ("k8sbin", "helm", "prometheus")]
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yaml", ".yml")
                  and not any(d in p.parents for d in skip))


def _docs(path: Path) -> list[dict]:
    with path.open() as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def _one(path: Path, kind: str, name: str | None = None) -> dict:
    found = [d for d in _docs(path) if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"{path.name}: expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def test_deploy_has_yaml_files():
    names = {p.relative_to(DEPLOY).as_posix() for p in _yaml_files()}
    assert {
        "crds/scheduling.x-k8s.io_podgroups.yaml",
        "rbac.yaml",
        "gangsched.yaml",
        "kustomization.yaml",
        "coscheduler-config.yaml",
        "kube-scheduler-config.yaml",
    } <= names


@pytest.mark.parametrize("path", _yaml_files(), ids=lambda p: p.relative_to(DEPLOY).as_posix())
def test_yaml_parses(path):
    docs = _docs(path)
    assert docs, f"{path} holds no YAML document"
    for doc in docs:
        assert isinstance(doc, dict)
        assert doc.get("apiVersion") and doc.get("kind"), f"{path}: document without apiVersion/kind"


def test_kustomization_lists_existing_cluster_objects():
    kust = _one(DEPLOY / "kustomization.yaml", "Kustomization")
    resources = kust["resources"]
    assert resources == ["crds/scheduling.x-k8s.io_podgroups.yaml", "rbac.yaml", "gangsched.yaml"]
    for res in resources:
        assert (DEPLOY / res).is_file(), res


def test_crd_is_upstream_copy():
    assert hashlib.sha256(CRD.read_bytes()).hexdigest() == UPSTREAM_CRD_SHA256


def test_crd_podgroup():
    crd = _one(CRD, "CustomResourceDefinition")
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
    meta = crd["metadata"]
    assert meta["name"] == "podgroups.scheduling.x-k8s.io"
    # *.x-k8s.io is a protected group: the apiserver wants this annotation (or an "unapproved" marker).
    assert meta["annotations"]["api-approved.kubernetes.io"].startswith("https://")
    spec = crd["spec"]
    assert spec["group"] == "scheduling.x-k8s.io"
    assert spec["scope"] == "Namespaced"
    assert spec["names"]["kind"] == "PodGroup"
    assert spec["names"]["plural"] == "podgroups"
    (version,) = spec["versions"]
    assert version["name"] == "v1alpha1"
    assert version["served"] and version["storage"]
    assert version["subresources"]["status"] == {}

    schema = version["schema"]["openAPIV3Schema"]["properties"]
    spec_props = schema["spec"]["properties"]
    assert {"minMember", "minResources", "scheduleTimeoutSeconds"} <= set(spec_props)
    assert spec_props["minMember"]["type"] == "integer"
    assert spec_props["scheduleTimeoutSeconds"]["type"] == "integer"
    assert spec_props["minResources"]["type"] == "object"
    status_props = schema["status"]["properties"]
    assert {"phase", "occupiedBy", "running", "succeeded", "failed", "scheduleStartTime"} <= set(status_props)
    assert status_props["scheduleStartTime"]["format"] == "date-time"

    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert columns == {
        "Phase": ".status.phase",
        "MinMember": ".spec.minMember",
        "Running": ".status.running",
        "Succeeded": ".status.succeeded",
        "Failed": ".status.failed",
        "Age": ".metadata.creationTimestamp",
    }


def _cluster_role() -> dict:
    return _one(DEPLOY / "rbac.yaml", "ClusterRole", "gangsched")


def _grants(rules: list[dict], group: str, resource: str, verb: str) -> bool:
    return any(
        group in r.get("apiGroups", []) and resource in r.get("resources", []) and verb in r.get("verbs", [])
        for r in rules
    )


def test_cluster_role_grants_what_a_scheduler_needs():
    rules = _cluster_role()["rules"]
    assert _grants(rules, "", "pods/binding", "create")
    for group, resource in [
        ("", "pods"),
        ("", "nodes"),
        ("", "namespaces"),
        ("scheduling.x-k8s.io", "podgroups"),
        ("scheduling.k8s.io", "priorityclasses"),
    ]:
        for verb in ("list", "watch"):
            assert _grants(rules, group, resource, verb), (group, resource, verb)
    assert _grants(rules, "scheduling.x-k8s.io", "podgroups/status", "patch")
    assert _grants(rules, "", "pods", "delete")
    assert _grants(rules, "", "pods/status", "patch")  # preemption: DisruptionTarget, nominatedNodeName
    assert _grants(rules, "policy", "poddisruptionbudgets", "watch")
    for group in ("", "events.k8s.io"):
        assert _grants(rules, group, "events", "create")
        assert _grants(rules, group, "events", "patch")


def test_rbac_has_no_wildcards_and_nothing_extra():
    docs = _docs(DEPLOY / "rbac.yaml")
    for doc in docs:
        for rule in doc.get("rules", []):
            for key in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule.get(key, []), (doc["metadata"]["name"], rule)
            assert "nonResourceURLs" not in rule
    rules = _cluster_role()["rules"]
    # The scheduler never writes pods beyond binding/deleting, nor PodGroup specs, nor nodes.
    for group, resource, verb in [
        ("", "pods", "update"),
        ("", "pods", "patch"),
        ("", "pods", "create"),
        ("", "nodes", "patch"),
        ("scheduling.x-k8s.io", "podgroups", "update"),
        ("scheduling.x-k8s.io", "podgroups", "patch"),
        ("", "secrets", "get"),
        ("", "configmaps", "get"),
    ]:
        assert not _grants(rules, group, resource, verb), (group, resource, verb)
    # Leases only through the namespaced Role.
    assert not any("coordination.k8s.io" in r["apiGroups"] for r in rules)
    # No authn/authz delegation, hence no extension-apiserver-authentication reader binding.
    for doc in docs:
        assert doc["metadata"].get("namespace") != "kube-system"


def test_leader_election_role_and_bindings():
    path = DEPLOY / "rbac.yaml"
    role = _one(path, "Role")
    assert role["metadata"]["namespace"] == "gangsched-system"
    (rule,) = role["rules"]
    assert rule["apiGroups"] == ["coordination.k8s.io"]
    assert rule["resources"] == ["leases"]
    assert set(rule["verbs"]) == {"get", "create", "update"}

    sa = _one(path, "ServiceAccount", "gangsched")
    assert sa["metadata"]["namespace"] == "gangsched-system"
    for kind, role_kind, role_name in [
        ("ClusterRoleBinding", "ClusterRole", "gangsched"),
        ("RoleBinding", "Role", role["metadata"]["name"]),
    ]:
        binding = _one(path, kind)
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": role_kind,
            "name": role_name,
        }
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "gangsched", "namespace": "gangsched-system"}]


def test_gangsched_deployment():
    path = DEPLOY / "gangsched.yaml"
    assert _one(path, "Namespace", "gangsched-system")
    deploy = _one(path, "Deployment", "gangsched")
    assert deploy["metadata"]["namespace"] == "gangsched-system"
    spec = deploy["spec"]
    assert spec["replicas"] == 2
    pod = spec["template"]["spec"]
    assert set(spec["selector"]["matchLabels"].items()) <= set(spec["template"]["metadata"]["labels"].items())
    assert pod["serviceAccountName"] == "gangsched"
    assert pod["securityContext"]["runAsNonRoot"] is True
    (container,) = pod["containers"]
    args = container["args"]
    assert args[0] == "run"
    for flag, value in [
        ("--profile", "/etc/gangsched/profile.yaml"),
        ("--scheduler-name", "gangsched"),
        ("--lease-namespace", "gangsched-system"),
        ("--health-port", "8080"),
    ]:
        assert args[args.index(flag) + 1] == value
    assert "--leader-elect" in args
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["resources"]["requests"]
    (port,) = container["ports"]
    assert port["containerPort"] == 8080
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": port["name"]}

    # The profile is mounted where --profile points.
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    profile_volume = next(n for n, v in volumes.items() if "configMap" in v)
    assert mounts[profile_volume] == "/etc/gangsched"
    cm_name = volumes[profile_volume]["configMap"]["name"]
    cm = _one(path, "ConfigMap", cm_name)
    assert "profile.yaml" in cm["data"]


def test_configmap_profile_is_the_shipped_default():
    cm = _one(DEPLOY / "gangsched.yaml", "ConfigMap", "gangsched-profile")
    shipped = (ROOT / "gangsched" / "profiles" / "default.yaml").read_text()
    assert cm["data"]["profile.yaml"] == shipped


def _scheduler_config(name: str) -> dict:
    cfg = _one(DEPLOY / name, "KubeSchedulerConfiguration")
    assert cfg["apiVersion"] == "kubescheduler.config.k8s.io/v1"
    assert cfg["leaderElection"]["leaderElect"] is False
    # The harness writes the kubeconfig (flags are ignored with --config); nothing host-specific here.
    assert "kubeconfig" not in cfg.get("clientConnection", {})
    return cfg


def test_coscheduler_config():
    cfg = _scheduler_config("coscheduler-config.yaml")
    (profile,) = cfg["profiles"]
    assert profile["schedulerName"] == "coscheduler"
    plugins = profile["plugins"]
    assert set(plugins) == {"queueSort", "preFilter", "postFilter", "permit", "reserve"}
    for point, conf in plugins.items():
        assert conf["enabled"] == [{"name": "Coscheduling"}], point
    assert plugins["queueSort"]["disabled"] == [{"name": "*"}]
    (plugin_config,) = profile["pluginConfig"]
    assert plugin_config["name"] == "Coscheduling"


def test_kube_scheduler_config():
    cfg = _scheduler_config("kube-scheduler-config.yaml")
    assert [p["schedulerName"] for p in cfg["profiles"]] == ["default-scheduler"]
