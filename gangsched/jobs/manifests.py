"""The Kubernetes objects of one training job, as Kubeflow's training-operator creates them for a TFJob or a
PyTorchJob with gang scheduling (scheduler-plugins' PodGroup): a PodGroup whose minMember is every replica, and one
pod per replica, all labelled with the group. No operator runs here; tests and the demo create these objects
directly, and the process-node agent runs each pod's command with this machine's Python (the image is informative).

Names follow training-operator: pods `<job>-<replica type>-<index>`, with `hostname` = pod name and `subdomain` =
job name, so a peer is `<pod>.<job>.<namespace>.svc` (the process-node agent puts those names in its hosts files;
in a real cluster a headless Service named after the job gives them).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Literal

from gangsched.devcluster.procnode import PROCESS_NODE_LABEL
from gangsched.live.podgroups import PODGROUP_API
from gangsched.live.translate import NATIVE_PODGROUP_API, POD_GROUP_LABEL

GPU = "nvidia.com/gpu"
TF_IMAGE = "tensorflow/tensorflow:2.21.0"
TORCH_IMAGE = "pytorch/pytorch:2.13.0"
# Pods of these jobs must land where processes really run, not on KWOK's fake nodes; {} drops the selector.
PROCESS_NODES: dict[str, str] = {PROCESS_NODE_LABEL: "true"}

Obj = dict[str, Any]


def podgroup(name: str, namespace: str, min_member: int, schedule_timeout: int | None = None) -> Obj:
    spec: Obj = {"minMember": min_member}
    if schedule_timeout is not None:
        spec["scheduleTimeoutSeconds"] = schedule_timeout
    return {"apiVersion": PODGROUP_API, "kind": "PodGroup",
            "metadata": {"name": name, "namespace": namespace, "labels": {"training.kubeflow.org/job-name": name}},
            "spec": spec}


def native_podgroup(name: str, namespace: str | None, min_count: int, labels: Mapping[str, str] | None = None) -> Obj:
    """Kubernetes' own PodGroup: a gang of `min_count` (kube-scheduler >= 1.37 with GenericWorkload, or
    gangsched), which its pods name in spec.schedulingGroup.podGroupName."""
    meta: Obj = {"name": name, **({"namespace": namespace} if namespace else {}), "labels": dict(labels or {})}
    return {"apiVersion": NATIVE_PODGROUP_API, "kind": "PodGroup", "metadata": meta,
            "spec": {"schedulingPolicy": {"gang": {"minCount": min_count}}}}


def as_native(objs: list[Obj]) -> list[Obj]:
    """A job's objects with its gang in the native API instead of scheduler-plugins': each PodGroup as a
    native one of minCount = minMember, and each pod naming it in spec.schedulingGroup (the label dropped)."""
    out: list[Obj] = []
    for o in objs:
        meta = o["metadata"]
        if o["kind"] == "PodGroup":
            out.append(native_podgroup(meta["name"], meta.get("namespace"), o["spec"]["minMember"],
                                       meta.get("labels")))
            continue
        labels = dict(meta.get("labels") or {})
        group = labels.pop(POD_GROUP_LABEL, None)
        spec = dict(o["spec"], schedulingGroup={"podGroupName": group}) if group else o["spec"]
        out.append({**o, "metadata": {**meta, "labels": labels}, "spec": spec})
    return out


def peer_address(job: str, namespace: str, pod: str, port: int) -> str:
    """`<hostname>.<subdomain>.<namespace>.svc:<port>`: the stable name a peer has under the job's headless Service."""
    return f"{pod}.{job}.{namespace}.svc:{port}"


def _pod(job: str, namespace: str, operator: str, replica_type: str, index: int, *, command: list[str],
         image: str, container: str, port_name: str, port: int, env: Mapping[str, str], gpus: int,
         scheduler_name: str, cpu: str, memory: str, node_selector: Mapping[str, str] | None,
         master: bool, grace: int) -> Obj:
    name = f"{job}-{replica_type}-{index}"
    labels = {
        POD_GROUP_LABEL: job,
        "training.kubeflow.org/job-name": job,
        "training.kubeflow.org/operator-name": operator,
        "training.kubeflow.org/replica-type": replica_type,
        "training.kubeflow.org/replica-index": str(index),
    }
    if master:
        labels["training.kubeflow.org/job-role"] = "master"
    resources = {"cpu": cpu, "memory": memory}
    if gpus:
        resources[GPU] = str(gpus)
    spec: Obj = {
        "schedulerName": scheduler_name,
        "restartPolicy": "Never",
        "hostname": name,
        "subdomain": job,
        # Short: deleting a job's pods (to free its GPUs for the next) should not wait 30 s per process.
        "terminationGracePeriodSeconds": grace,
        "containers": [{
            "name": container,
            "image": image,
            "command": command,
            "env": [{"name": k, "value": v} for k, v in env.items()],
            "ports": [{"name": port_name, "containerPort": port}],
            "resources": {"requests": dict(resources), "limits": dict(resources)},
        }],
    }
    if node_selector:
        spec["nodeSelector"] = dict(node_selector)
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "labels": labels}, "spec": spec}


def tf_job(name: str, namespace: str, workers: int = 4, gpus_per_worker: int = 1, scheduler_name: str = "gangsched",
           kind: Literal["mwms", "ps"] = "mwms", ps: int = 1, port: int = 2222, deadline: int = 120, *,
           distinct_ports: bool = False, cpu: str = "100m", memory: str = "512Mi",
           node_selector: Mapping[str, str] | None = PROCESS_NODES, schedule_timeout: int | None = None,
           extra_env: Mapping[str, str] | None = None, grace: int = 5) -> list[Obj]:
    """A TFJob's PodGroup and pods: `workers` MWMS workers (`kind="mwms"`, gangsched.jobs.tf_mwms), or a chief,
    `ps` parameter servers and `workers` workers (`kind="ps"`, gangsched.jobs.tf_ps). GPUs go to the workers only
    (the PS chief only coordinates, the ps only hold variables).

    `distinct_ports` gives replica k of the job port+k: for process nodes in loopback mode, where every pod shares
    the machine's ports and a TF server always binds all addresses.
    """
    if kind not in ("mwms", "ps"):
        raise ValueError(f"tf_job kind must be 'mwms' or 'ps', not {kind!r}")
    if workers < 1 or (kind == "ps" and ps < 1):
        raise ValueError("a TF job needs at least one worker (and, for kind='ps', one ps)")
    replicas = [("chief", 1), ("ps", ps), ("worker", workers)] if kind == "ps" else [("worker", workers)]
    pods = [(rt, i) for rt, count in replicas for i in range(count)]
    ports = {p: port + k if distinct_ports else port for k, p in enumerate(pods)}
    cluster: dict[str, list[str]] = {}
    for rt, i in pods:
        cluster.setdefault(rt, []).append(peer_address(name, namespace, f"{name}-{rt}-{i}", ports[rt, i]))
    module = "gangsched.jobs.tf_mwms" if kind == "mwms" else "gangsched.jobs.tf_ps"
    objs = [podgroup(name, namespace, len(pods), schedule_timeout)]
    for rt, i in pods:
        # training-operator's TF_CONFIG: the whole cluster, this task, and environment "cloud".
        tf_config = {"cluster": cluster, "task": {"type": rt, "index": i}, "environment": "cloud"}
        env = {"TF_CONFIG": json.dumps(tf_config, separators=(",", ":")),
               "STARTUP_DEADLINE_SECONDS": str(deadline), "PYTHONUNBUFFERED": "1", **(extra_env or {})}
        objs.append(_pod(
            name, namespace, "tfjob-controller", rt, i, command=["python", "-m", module], image=TF_IMAGE,
            container="tensorflow", port_name="tfjob-port", port=ports[rt, i], env=env,
            gpus=gpus_per_worker if rt == "worker" else 0, scheduler_name=scheduler_name, cpu=cpu, memory=memory,
            node_selector=node_selector, master=rt == "chief" or (kind == "mwms" and i == 0), grace=grace))
    return objs


def pytorch_job(name: str, namespace: str, workers: int = 2, gpus_per_worker: int = 1,
                scheduler_name: str = "gangsched", port: int = 23456, deadline: int = 120, *, cpu: str = "100m",
                memory: str = "512Mi", node_selector: Mapping[str, str] | None = PROCESS_NODES,
                schedule_timeout: int | None = None, extra_env: Mapping[str, str] | None = None,
                grace: int = 5) -> list[Obj]:
    """A PyTorchJob's PodGroup and pods, running gangsched.jobs.torch_ddp: one Master (rank 0, hosting the
    rendezvous store) and `workers` Workers (ranks 1..workers), as in a PyTorchJob spec; WORLD_SIZE = workers + 1.
    Every replica trains, so every pod gets `gpus_per_worker` GPUs.
    """
    if workers < 0:
        raise ValueError("workers must be >= 0")
    world = workers + 1
    master_addr = f"{name}-master-0.{name}.{namespace}.svc"
    objs = [podgroup(name, namespace, world, schedule_timeout)]
    for rt, i, rank in [("master", 0, 0)] + [("worker", i, i + 1) for i in range(workers)]:
        env = {"MASTER_ADDR": master_addr, "MASTER_PORT": str(port), "WORLD_SIZE": str(world), "RANK": str(rank),
               "STARTUP_DEADLINE_SECONDS": str(deadline), "PYTHONUNBUFFERED": "1", **(extra_env or {})}
        objs.append(_pod(
            name, namespace, "pytorchjob-controller", rt, i, command=["python", "-m", "gangsched.jobs.torch_ddp"],
            image=TORCH_IMAGE, container="pytorch", port_name="pytorchjob-port", port=port, env=env,
            gpus=gpus_per_worker, scheduler_name=scheduler_name, cpu=cpu, memory=memory, node_selector=node_selector,
            master=rt == "master", grace=grace))
    return objs
