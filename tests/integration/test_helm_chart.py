"""The Helm chart deploy/helm/gangsched: `helm lint`, rendered with several value sets, and every object the
render holds applied to the dev cluster's real API server with server-side dry-run (validation, defaulting and
admission run; nothing is stored). helm is built from deploy/helmbin (cached)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from gangsched.devcluster.binaries import ensure_helm, ensure_prometheus_operator_crds
from gangsched.live.kube import ApiError, KubeClient
from tests.integration.live import wait_for

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "gangsched"
APPLY = "application/apply-patch+yaml"

VALUE_SETS = {
    "defaults": {},
    "single replica, no leader election, no preemption, binpack profile": {
        "scheduler": {"replicas": 1, "leaderElection": False, "preemption": False, "extraArgs": ["--no-events"]},
        "profile": (ROOT / "gangsched" / "profiles" / "binpack.yaml").read_text()},
    "everything on": {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}},
                      "prometheusRules": {"enabled": True}, "extender": {"enabled": True},
                      "devicePlugin": {"enabled": True, "metricsPort": 9400}},
    "own service account, no RBAC, no metrics service": {
        "rbac": {"create": False}, "serviceAccount": {"create": False, "name": "existing-sa"},
        "metrics": {"service": False}, "image": {"tag": "dev", "pullPolicy": "Always"}},
}


@pytest.fixture(scope="module")
def helm(pytestconfig: pytest.Config) -> Path:
    capman = pytestconfig.pluginmanager.getplugin("capturemanager")
    with capman.global_and_fixture_disabled():  # a first build takes minutes: show its progress
        return ensure_helm(progress=lambda msg: print(f"\n{msg}", end="", flush=True))


def run(helm: Path, *args: str) -> str:
    proc = subprocess.run([str(helm), *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def render(helm: Path, tmp_path: Path, namespace: str, values: dict, kube_version: str) -> list[dict]:
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    out = run(helm, "template", "gs", str(CHART), "--namespace", namespace, "-f", str(path), "--include-crds",
              "--kube-version", kube_version)  # the API server's: what `helm install` would read from it
    return [d for d in yaml.safe_load_all(out) if d]


class Resources:
    """apiVersion + kind -> (plural, namespaced), from the API server's discovery."""

    def __init__(self, client: KubeClient):
        self.client = client
        self.known: dict[tuple[str, str], tuple[str, bool]] = {}

    def path(self, obj: dict, namespace: str) -> str:
        api, kind = obj["apiVersion"], obj["kind"]
        if (api, kind) not in self.known:
            base = "/api/v1" if api == "v1" else f"/apis/{api}"
            for r in self.client.request("GET", base)["resources"]:
                if "/" not in r["name"]:
                    self.known[(api, r["kind"])] = (r["name"], r["namespaced"])
        plural, namespaced = self.known[(api, kind)]
        base = "/api/v1" if api == "v1" else f"/apis/{api}"
        ns = f"/namespaces/{obj['metadata'].get('namespace', namespace)}" if namespaced else ""
        return f"{base}{ns}/{plural}/{obj['metadata']['name']}"


def dry_run_apply(client: KubeClient, resources: Resources, obj: dict, namespace: str) -> dict:
    return client.request("PATCH", resources.path(obj, namespace), obj, content_type=APPLY,
                          query={"dryRun": "All", "fieldManager": "gangsched-chart-test", "force": "true"})


@pytest.fixture(scope="module")
def operator_crds(devcluster) -> None:
    """The prometheus-operator's own CRDs, so ServiceMonitor and PrometheusRule objects can be validated."""
    client = KubeClient.load(str(devcluster.kubeconfig), qps=0)
    crds = ensure_prometheus_operator_crds(progress=print)
    for f in sorted(crds.iterdir()):
        crd = yaml.safe_load(f.read_text())
        try:
            client.request("POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", crd)
        except ApiError as e:
            if e.status != 409:
                raise
        path = f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{crd['metadata']['name']}"
        wait_for(lambda p=path: any(c["type"] == "Established" and c["status"] == "True" for c in
                                    (client.request("GET", p).get("status") or {}).get("conditions") or []),
                 30, what=f"{crd['metadata']['name']} established")


def test_helm_lint(helm):
    out = run(helm, "lint", str(CHART), "--strict")
    assert "1 chart(s) linted, 0 chart(s) failed" in out
    out = run(helm, "lint", str(CHART), "--strict", "--set",
              "serviceMonitor.enabled=true,prometheusRules.enabled=true,extender.enabled=true,devicePlugin.enabled=true")
    assert "0 chart(s) failed" in out


def test_lint_fails_on_a_broken_template(helm, tmp_path):
    """The lint above can fail: a copy of the chart with a template error does."""
    broken = tmp_path / "gangsched"
    subprocess.run(["cp", "-r", str(CHART), str(broken)], check=True)
    (broken / "templates" / "broken.yaml").write_text("kind: ConfigMap\nmetadata: {{ .Values.nope.deeper }}\n")
    proc = subprocess.run([str(helm), "lint", str(broken)], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "nil pointer" in proc.stdout + proc.stderr


def test_chart_copies_match_deploy(helm):
    """The chart carries deploy/'s CRD and rules (a chart cannot reach outside its directory): kept equal."""
    assert (CHART / "crds" / "scheduling.x-k8s.io_podgroups.yaml").read_bytes() == \
        (ROOT / "deploy" / "crds" / "scheduling.x-k8s.io_podgroups.yaml").read_bytes()
    assert (CHART / "files" / "gangsched-rules.yaml").read_bytes() == \
        (ROOT / "deploy" / "prometheus" / "gangsched-rules.yaml").read_bytes()
    defaults = yaml.safe_load(yaml.safe_load((CHART / "values.yaml").read_text())["profile"])
    shipped = yaml.safe_load((ROOT / "gangsched" / "profiles" / "default.yaml").read_text())
    assert defaults == shipped


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_render_and_server_side_dry_run(helm, tmp_path, devcluster, namespace, operator_crds, name):
    values = VALUE_SETS[name]
    client = KubeClient.load(str(devcluster.kubeconfig), qps=0)
    objs = render(helm, tmp_path, namespace, values, client.request("GET", "/version")["gitVersion"])
    kinds = sorted({o["kind"] for o in objs})
    resources = Resources(client)
    for obj in objs:
        answer = dry_run_apply(client, resources, obj, namespace)
        assert answer["metadata"]["name"] == obj["metadata"]["name"]
        if obj["kind"] == "Deployment" and obj["metadata"]["name"] == "gs-gangsched":
            # defaulted by the API server, as a real apply would store it
            assert answer["spec"]["strategy"]["type"] == "RollingUpdate"
            args = answer["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "CustomResourceDefinition" in kinds and "Deployment" in kinds and "ConfigMap" in kinds
    profile = yaml.safe_load(next(o for o in objs if o["kind"] == "ConfigMap" and
                                  o["metadata"]["name"] == "gs-gangsched-profile")["data"]["profile.yaml"])
    from gangsched.profile import parse_profile
    assert parse_profile(profile).name == yaml.safe_load(values.get("profile", "name: default"))["name"]
    if name == "defaults":
        assert "--leader-elect" in args and "--no-preemption" not in args
        assert {"ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "ServiceAccount", "Service"} <= set(kinds)
    elif name.startswith("single replica"):
        assert "--leader-elect" not in args and "--no-preemption" in args and "--no-events" in args
        assert "Role" not in kinds
    elif name == "everything on":
        assert {"ServiceMonitor", "PrometheusRule", "DaemonSet"} <= set(kinds)
        assert sum(o["kind"] == "Deployment" for o in objs) == 2  # the scheduler and kube-scheduler + extender
    else:
        assert not {"ClusterRole", "ServiceAccount", "Service"} & set(kinds)
        assert answer is not None and "gs-gangsched" in {o["metadata"]["name"] for o in objs}


def test_dry_run_rejects_an_invalid_render(helm, tmp_path, devcluster, namespace):
    """The dry-run really validates: a render with an impossible value is refused by the API server."""
    client = KubeClient.load(str(devcluster.kubeconfig), qps=0)
    objs = render(helm, tmp_path, namespace, {"scheduler": {"replicas": -1}},
                  client.request("GET", "/version")["gitVersion"])
    deployment = next(o for o in objs if o["kind"] == "Deployment")
    with pytest.raises(ApiError) as err:
        dry_run_apply(client, Resources(client), deployment, namespace)
    assert err.value.status == 422 and "spec.replicas" in str(err.value)
