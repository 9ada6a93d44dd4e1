"""`gangsched status` from plain API objects (livekit's dicts): queue positions as the scheduler's queue orders
them, the latest FailedScheduling reason, running gangs and the per-device GPU map; text and JSON."""

from __future__ import annotations

import json

from livekit import T0, node, pod, podgroup, stamp

from gangsched.status import Style, age, books, build_report, latest_reasons, render, to_json


def event(kind: str, name: str, message: str, at: float, ns: str = "default") -> dict:
    return {"reason": "FailedScheduling", "message": message, "lastTimestamp": stamp(at),
            "involvedObject": {"kind": kind, "namespace": ns, "name": name}}


def scene() -> tuple[list[dict], list[dict], list[dict], list[dict]]:
    nodes = [node("n0", gpus=4), node("n1", gpus=4)]
    groups = [podgroup("train", 2), podgroup("big", 3), podgroup("short", 3), podgroup("vip", 1)]
    pods = [pod("solo", gpus=0, node_name="n1", phase="Running"),
            pod("train-0", gpus=2, group="train", node_name="n0", phase="Running", devices="0,1"),
            pod("train-1", gpus=2, group="train", node_name="n0", phase="Running", devices="2,3"),
            pod("other", gpus=1, scheduler="default-scheduler", node_name="n1", phase="Running", devices="1"),
            *(pod(f"big-{i}", gpus=4, group="big", created=T0 - 300) for i in range(3)),
            *(pod(f"short-{i}", gpus=1, group="short", created=T0 - 50) for i in range(2)),
            pod("vip-0", gpus=8, group="vip", priority=1000, created=T0 - 10),
            pod("lone", gpus=1, created=T0 - 20)]
    events = [event("PodGroup", "big", "old message", T0 - 200),
              event("PodGroup", "big", "0/2 nodes are available: 2 Insufficient nvidia.com/gpu.", T0 - 100),
              event("Pod", "lone", "lone's reason", T0 - 5)]
    return nodes, groups, pods, events


def report():
    nodes, groups, pods, events = scene()
    return build_report(books(nodes, groups, [], pods, "gangsched"), events, "default", now=T0)


def test_waiting_gangs_in_queue_order_with_their_latest_reason():
    r = report()
    by = {w.gang: w for w in r.waiting}
    # priority-fifo: the priority-1000 gang first, then by age: big (T0-300), lone (T0-20)
    assert [(w.gang, w.position) for w in r.waiting] == [
        ("default/vip", 1), ("default/big", 2), ("default/lone", 3), ("default/short", None)]
    assert by["default/big"].reason == "0/2 nodes are available: 2 Insufficient nvidia.com/gpu."
    assert by["default/big"].age_seconds == 300 and by["default/big"].gpus == 12
    assert (by["default/big"].min_member, by["default/big"].members) == (3, 3)
    assert by["default/vip"].priority == 1000 and by["default/vip"].reason == "not tried yet"
    assert by["default/lone"].kind == "Pod" and by["default/lone"].reason == "lone's reason"
    # below minMember: not queued, and says why
    assert by["default/short"].reason == "gang default/short: 2 of minMember=3 pods exist"


def test_running_gangs_and_the_gpu_map():
    r = report()
    running = {g.gang: g for g in r.running}
    assert running["default/train"].pods == 2 and running["default/train"].gpus == 4
    assert running["default/train"].nodes == ["n0"]
    assert set(running) == {"default/train", "default/solo"}  # not another scheduler's pod: it is only on the map
    assert running["default/solo"].kind == "Pod" and running["default/solo"].gpus == 0
    n0, n1 = r.nodes
    assert [d["pods"] for d in n0.devices] == [["default/train-0"]] * 2 + [["default/train-1"]] * 2
    assert n0.free == 0
    assert [d["pods"] for d in n1.devices] == [[], ["default/other"], [], []] and n1.free == 3
    # typical pods (1, 2, 4 and 8 GPUs) vs 3 idle GPUs on n1: the 4- and 8-GPU ones cannot use them
    assert 0 < n1.fragmentation <= 3 and 0 < r.fragmentation_ratio <= 1


def test_text_output_plain_when_piped():
    text = render(report(), Style(colour=False, width=None))
    assert "\033[" not in text
    lines = text.splitlines()
    assert lines[0] == "Waiting gangs (4, all namespaces)"
    assert lines[1].split() == ["POS", "GANG", "PRIORITY", "AGE", "GPUS", "MEMBERS", "REASON"]
    assert lines[2].split()[:6] == ["1", "default/vip", "1000", "10s", "8", "1/1"]
    assert "0-1 default/train-0; 2-3 default/train-1" in text
    assert "0 free; 1 default/other; 2-3 free" in text


def test_text_output_on_a_terminal_is_coloured_and_cut_to_width():
    text = render(report(), Style(colour=True, width=60))
    assert "\033[1;33mWaiting gangs" in text
    assert all(len(line.replace("\033[0m", "").split("\033[")[0]) <= 200 for line in text.splitlines())
    assert "…" in text  # the long reason was cut


def test_json_output():
    data = json.loads(to_json(report()))
    assert set(data) == {"namespace", "waiting", "running", "nodes", "fragmentation_ratio"}
    assert data["waiting"][0] == {"gang": "default/vip", "kind": "PodGroup", "position": 1, "priority": 1000,
                                  "age_seconds": 10.0, "gpus": 8.0, "min_member": 1, "members": 1, "bound": 0,
                                  "reason": "not tried yet"}
    assert data["nodes"][1]["devices"][1] == {"index": 1, "model": "", "pods": ["default/other"], "free_milli": 0}


def test_a_namespace_filter():
    nodes, groups, pods, events = scene()
    pods.append(pod("elsewhere", gpus=1, ns="team-b"))
    cache = books(nodes, groups, [], pods, "gangsched")
    assert [w.gang for w in build_report(cache, events, now=T0, namespace="team-b").waiting] == ["team-b/elsewhere"]
    assert "team-b/elsewhere" in {w.gang for w in build_report(cache, events, now=T0).waiting}


def test_latest_reason_and_age_format():
    assert latest_reasons([event("Pod", "p", "a", T0), event("Pod", "p", "b", T0 + 1),
                           event("Pod", "p", "c", T0 - 1)]) == {("Pod", "default", "p"): "b"}
    assert [age(s) for s in (5, 75, 600, 7300, 200000)] == ["5s", "1m", "10m", "2h", "2d"]
