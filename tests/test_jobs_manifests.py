"""gangsched.jobs.manifests: the objects training-operator would create for a TFJob / PyTorchJob (fast, no TF)."""

from __future__ import annotations

import json

import pytest

from gangsched.jobs.manifests import GPU, POD_GROUP_LABEL, PROCESS_NODES, as_native, pytorch_job, tf_job


def env_of(pod: dict) -> dict[str, str]:
    return {e["name"]: e["value"] for e in pod["spec"]["containers"][0]["env"]}


def test_tf_mwms_job() -> None:
    objs = tf_job("mnist", "team-a", workers=4, gpus_per_worker=2, deadline=90)
    group, pods = objs[0], objs[1:]
    assert group["apiVersion"] == "scheduling.x-k8s.io/v1alpha1" and group["kind"] == "PodGroup"
    assert group["metadata"] == {"name": "mnist", "namespace": "team-a",
                                 "labels": {"training.kubeflow.org/job-name": "mnist"}}
    assert group["spec"] == {"minMember": 4}
    assert [p["metadata"]["name"] for p in pods] == [f"mnist-worker-{i}" for i in range(4)]
    hosts = [f"mnist-worker-{i}.mnist.team-a.svc:2222" for i in range(4)]
    for i, pod in enumerate(pods):
        meta, spec = pod["metadata"], pod["spec"]
        assert meta["namespace"] == "team-a"
        assert meta["labels"][POD_GROUP_LABEL] == "mnist"
        assert meta["labels"]["training.kubeflow.org/job-name"] == "mnist"
        assert meta["labels"]["training.kubeflow.org/replica-type"] == "worker"
        assert meta["labels"]["training.kubeflow.org/replica-index"] == str(i)
        assert ("training.kubeflow.org/job-role" in meta["labels"]) == (i == 0)  # worker 0 leads without a chief
        assert spec["schedulerName"] == "gangsched" and spec["restartPolicy"] == "Never"
        assert spec["hostname"] == meta["name"] and spec["subdomain"] == "mnist"
        assert spec["nodeSelector"] == PROCESS_NODES
        c = spec["containers"][0]
        assert c["command"] == ["python", "-m", "gangsched.jobs.tf_mwms"]
        assert c["resources"]["requests"] == c["resources"]["limits"] == {GPU: "2", "cpu": "100m", "memory": "512Mi"}
        assert c["ports"] == [{"name": "tfjob-port", "containerPort": 2222}]
        env = env_of(pod)
        assert env["STARTUP_DEADLINE_SECONDS"] == "90"
        assert json.loads(env["TF_CONFIG"]) == {"cluster": {"worker": hosts}, "task": {"type": "worker", "index": i},
                                                "environment": "cloud"}


def test_a_job_as_native_podgroups() -> None:
    objs = tf_job("mnist", "team-a", workers=2)
    native = as_native(objs)
    group, pods = native[0], native[1:]
    assert group == {"apiVersion": "scheduling.k8s.io/v1beta1", "kind": "PodGroup",
                     "metadata": {"name": "mnist", "namespace": "team-a",
                                  "labels": {"training.kubeflow.org/job-name": "mnist"}},
                     "spec": {"schedulingPolicy": {"gang": {"minCount": 2}}}}
    for before, pod in zip(objs[1:], pods, strict=True):
        assert pod["spec"]["schedulingGroup"] == {"podGroupName": "mnist"}
        assert POD_GROUP_LABEL not in pod["metadata"]["labels"], "a pod naming both APIs is a conflict"
        assert {k: v for k, v in pod["spec"].items() if k != "schedulingGroup"} == before["spec"]
    assert POD_GROUP_LABEL in objs[1]["metadata"]["labels"], "the input is left as it was"


def test_tf_ps_job() -> None:
    objs = tf_job("ps1", "ns", workers=2, kind="ps", ps=2, scheduler_name="default-scheduler", port=3000,
                  distinct_ports=True, node_selector={})
    group, pods = objs[0], objs[1:]
    assert group["spec"]["minMember"] == 5
    names = [p["metadata"]["name"] for p in pods]
    assert names == ["ps1-chief-0", "ps1-ps-0", "ps1-ps-1", "ps1-worker-0", "ps1-worker-1"]
    cluster = json.loads(env_of(pods[0])["TF_CONFIG"])["cluster"]
    assert cluster == {
        "chief": ["ps1-chief-0.ps1.ns.svc:3000"],
        "ps": ["ps1-ps-0.ps1.ns.svc:3001", "ps1-ps-1.ps1.ns.svc:3002"],
        "worker": ["ps1-worker-0.ps1.ns.svc:3003", "ps1-worker-1.ps1.ns.svc:3004"],
    }
    for pod in pods:
        rt = pod["metadata"]["labels"]["training.kubeflow.org/replica-type"]
        task = json.loads(env_of(pod)["TF_CONFIG"])["task"]
        assert pod["metadata"]["name"] == f"ps1-{task['type']}-{task['index']}" and task["type"] == rt
        assert pod["spec"]["schedulerName"] == "default-scheduler"
        assert "nodeSelector" not in pod["spec"]
        assert pod["spec"]["containers"][0]["command"][-1] == "gangsched.jobs.tf_ps"
        assert (GPU in pod["spec"]["containers"][0]["resources"]["requests"]) == (rt == "worker")
    assert pods[0]["metadata"]["labels"]["training.kubeflow.org/job-role"] == "master"
    with pytest.raises(ValueError):
        tf_job("x", "ns", kind="allreduce")  # type: ignore[arg-type]


def test_pytorch_job() -> None:
    objs = pytorch_job("ddp", "ns", workers=2, gpus_per_worker=1, deadline=60, schedule_timeout=30)
    group, pods = objs[0], objs[1:]
    assert group["spec"] == {"minMember": 3, "scheduleTimeoutSeconds": 30}
    assert [p["metadata"]["name"] for p in pods] == ["ddp-master-0", "ddp-worker-0", "ddp-worker-1"]
    for rank, pod in enumerate(pods):
        env = env_of(pod)
        assert env["MASTER_ADDR"] == "ddp-master-0.ddp.ns.svc" and env["MASTER_PORT"] == "23456"
        assert env["WORLD_SIZE"] == "3" and env["RANK"] == str(rank) and env["STARTUP_DEADLINE_SECONDS"] == "60"
        assert pod["metadata"]["labels"][POD_GROUP_LABEL] == "ddp"
        assert pod["spec"]["hostname"] == pod["metadata"]["name"] and pod["spec"]["subdomain"] == "ddp"
        assert pod["spec"]["containers"][0]["command"] == ["python", "-m", "gangsched.jobs.torch_ddp"]
        assert pod["spec"]["containers"][0]["resources"]["limits"][GPU] == "1"
