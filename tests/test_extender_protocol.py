"""The extender's wire types: what kube-scheduler's HTTPExtender sends (pkg/scheduler/extender.go) in and out."""

from __future__ import annotations

import pytest

from gangsched.extender import protocol as wire
from gangsched.extender.run import scheduler_config

POD = {"metadata": {"name": "p", "namespace": "ns", "uid": "u1"}, "spec": {}}
NODE = {"metadata": {"name": "n1"}, "status": {}}


def test_node_cache_capable_args_and_result_use_node_names():
    args = wire.node_args({"Pod": POD, "Nodes": None, "NodeNames": ["n1", "n2"]})
    assert args.cached and args.names == ["n1", "n2"]
    out = wire.filter_result(args, wire.FilterVerdict(nodes=["n2"], failed={"n1": "no"}))
    assert out == {"NodeNames": ["n2"], "FailedNodes": {"n1": "no"}, "FailedAndUnresolvableNodes": {}, "Error": ""}


def test_full_node_args_and_result_use_node_objects():
    other = {"metadata": {"name": "n2"}}
    args = wire.node_args({"Pod": POD, "Nodes": {"items": [NODE, other]}, "NodeNames": None})
    assert not args.cached and args.names == ["n1", "n2"]
    out = wire.filter_result(args, wire.FilterVerdict.only("n2"))
    assert out["Nodes"]["items"] == [other] and "NodeNames" not in out


def test_no_node_verdicts_name_every_node():
    v = wire.FilterVerdict.none(["a", "b"], "gang x: 3 of minMember=4 pods exist", unresolvable=True)
    assert v.unresolvable == {"a": "gang x: 3 of minMember=4 pods exist", "b": "gang x: 3 of minMember=4 pods exist"}
    assert not v.failed and not v.nodes


def test_priorities_name_the_scored_candidates_within_0_to_10():
    assert wire.priorities(["a", "b", "c"], {"a": 10, "b": 99, "c": 0, "x": 10}) == [
        {"Host": "a", "Score": 10}, {"Host": "b", "Score": 10}]


def test_binding_args():
    args = wire.bind_args({"PodName": "p", "PodNamespace": "ns", "PodUID": "u1", "Node": "n1"})
    assert (args.key, args.uid, args.node) == ("ns/p", "u1", "n1")
    assert wire.bind_result(None) == {"Error": ""} and wire.bind_result("x") == {"Error": "x"}


@pytest.mark.parametrize("body,field", [({"PodNamespace": "ns", "Node": "n"}, "PodName"),
                                        ({"PodName": "p", "PodNamespace": "ns", "Node": ""}, "Node"),
                                        ("text", "ExtenderBindingArgs")])
def test_bad_binding_args_name_the_field(body, field):
    with pytest.raises(wire.ProtocolError, match=field):
        wire.bind_args(body)


def test_preemption_args_in_both_forms_and_the_result():
    meta = wire.preempt_args({"Pod": POD, "NodeNameToMetaVictims": {"n1": {"Pods": [{"UID": "v1"}],
                                                                             "NumPDBViolations": 0}}})
    assert meta.cached and meta.victims == {"n1": ["v1"]}
    full = wire.preempt_args({"Pod": POD, "NodeNameToVictims": {"n1": {"Pods": [{"metadata": {"uid": "v2"}}]}}})
    assert not full.cached and full.victims == {"n1": ["v2"]}
    assert wire.preempt_result({"n1": ["v1", "v2"], "n2": []}) == {
        "NodeNameToMetaVictims": {"n1": {"Pods": [{"UID": "v1"}, {"UID": "v2"}], "NumPDBViolations": 0}}}


@pytest.mark.parametrize("body", [{"NodeNames": []}, {"Pod": {"metadata": {}}, "NodeNames": []},
                                  {"Pod": POD}, {"Pod": POD, "NodeNames": [1]}])
def test_bad_node_args(body):
    with pytest.raises(wire.ProtocolError):
        wire.node_args(body)


def test_scheduler_config_has_the_extenders_stanza():
    cfg = scheduler_config("gs", "https://127.0.0.1:8888", ca_file="/ca.crt", cert_file="/c.crt", key_file="/c.key")
    (ext,) = cfg["extenders"]
    assert ext["managedResources"] == [{"name": "nvidia.com/gpu", "ignoredByScheduler": False}]
    assert ext["nodeCacheCapable"] is True and ext["ignorable"] is False and ext["enableHTTPS"] is True
    assert ext["tlsConfig"] == {"caFile": "/ca.crt", "certFile": "/c.crt", "keyFile": "/c.key"}
    assert {ext[v] for v in ("filterVerb", "prioritizeVerb", "bindVerb", "preemptVerb")} == {
        "filter", "prioritize", "bind", "preempt"}
    assert cfg["profiles"] == [{"schedulerName": "gs"}] and cfg["percentageOfNodesToScore"] == 100


def test_deploy_config_matches_the_generated_stanza_and_the_configmap():
    import yaml

    from tests.test_deploy_manifests import DEPLOY

    shipped = yaml.safe_load((DEPLOY / "extender" / "kube-scheduler-config.yaml").read_text())
    (ext,) = shipped["extenders"]
    generated = scheduler_config("gangsched-extender", "https://127.0.0.1:8888")["extenders"][0]
    assert {k: v for k, v in ext.items() if k != "tlsConfig"} == {k: v for k, v in generated.items()}
    assert ext["ignorable"] is False and ext["nodeCacheCapable"] is True
    docs = list(yaml.safe_load_all((DEPLOY / "extender" / "kube-scheduler.yaml").read_text()))
    (cm,) = [d for d in docs if d["kind"] == "ConfigMap"]
    assert yaml.safe_load(cm["data"]["config.yaml"]) == shipped
    (dep,) = [d for d in docs if d["kind"] == "Deployment"]
    containers = {c["name"]: c for c in dep["spec"]["template"]["spec"]["containers"]}
    args = containers["extender"]["args"]
    assert "--scheduler-name=gangsched-extender" in args and "--port=8888" in args
