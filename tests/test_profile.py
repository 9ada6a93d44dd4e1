"""Profiles: every shipped profile loads and schedules; a bad profile is refused with a ProfileError that names the
offending field."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import gang, gpu_node, pod, scheduler

from gangsched.devices import FgdDevice, TopologyDevice
from gangsched.filters.resources import ResourceFit
from gangsched.profile import FILTERS, ProfileError, load_profile, parse_profile, shipped_profiles
from gangsched.queue import PriorityFifo, SmallestFirst
from gangsched.scores.fgd import Fgd
from gangsched.scores.gang_locality import GangLocality

CORE_PROFILES = {"binpack", "default", "paper-bestfit", "paper-dotprod", "paper-fgd", "paper-gpu-clustering",
                 "paper-gpu-packing", "paper-random", "spread"}


def test_shipped_profiles_are_listed() -> None:
    assert set(shipped_profiles()) >= CORE_PROFILES
    assert shipped_profiles() == sorted(shipped_profiles())


@pytest.mark.parametrize("name", shipped_profiles())
def test_every_shipped_profile_loads_and_places_a_gang(name: str) -> None:
    profile = load_profile(name)
    assert profile.name == name
    assert [f.name for f in profile.filters] == list(FILTERS)
    assert profile.scores and all(w >= 0 for _, w in profile.scores)
    assert profile.tie_break in ("random", "first")
    sched = scheduler([gpu_node("n0"), gpu_node("n1", gpus=4)], name, pods=[pod("p", gpus=1)])
    result = sched.schedule_gang(gang("job", [pod("a", gpus=2), pod("b", gpus=1, gpu_milli=500)]))
    assert result.ok and len(result.placed) == 2


def test_default_profile_contents() -> None:
    p = load_profile("default")  # fragmentation-aware, gangs kept close, starvation protection
    assert {s.name for s, w in p.scores if w > 0} >= {"fgd", "gang-locality"}
    assert isinstance(p.scores[0][0], Fgd)
    assert isinstance(p.devices, FgdDevice) and p.needs_workload
    assert isinstance(p.queue_sort, PriorityFifo) and p.starvation_seconds and p.backfill
    assert isinstance(load_profile("paper-fgd").devices, FgdDevice) and load_profile("paper-fgd").devices.quantize
    assert isinstance(load_profile("binpack").devices, TopologyDevice) and not load_profile("binpack").needs_workload


def test_minimal_profile_defaults() -> None:
    p = parse_profile({})
    assert [f.name for f in p.filters] == list(FILTERS)  # all filters, in registry order
    assert p.scores == [] and p.devices.name == "best" and p.queue_sort.name == "priority-fifo"
    assert p.tie_break == "random" and p.starvation_seconds is None and p.backfill


def test_plugin_args_and_mapping_forms() -> None:
    p = parse_profile({"name": "x", "filters": ["resources"], "queueSort": {"name": "smallest-first"},
                       "scores": [{"name": "gang-locality", "weight": 2.5,
                                   "args": {"topology_key": "zone", "domain_score": 10}}],
                       "devices": {"name": "fgd", "args": {"quantize": True}}, "tieBreak": "first",
                       "starvationSeconds": 0, "backfill": False})
    assert isinstance(p.filters[0], ResourceFit) and len(p.filters) == 1
    plugin, weight = p.scores[0]
    assert isinstance(plugin, GangLocality) and weight == 2.5
    assert (plugin.topology_key, plugin.domain_score) == ("zone", 10)
    assert isinstance(p.queue_sort, SmallestFirst) and p.devices.quantize
    assert p.tie_break == "first" and p.starvation_seconds == 0 and not p.backfill


def test_load_profile_from_a_path(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text("name: mine\nscores: [{name: most-allocated, weight: 3}]\n")
    p = load_profile(str(path))
    assert p.name == "mine" and [(s.name, w) for s, w in p.scores] == [("most-allocated", 3.0)]


@pytest.mark.parametrize(("doc", "message"), [
    ({"scores": [{"name": "fgdd"}]}, r"scores\[0\]: unknown score 'fgdd'; known: .*best-fit, dotprod, fgd"),
    ({"scores": ["least-allocated", {"weight": 1}]}, r"scores\[1\]: expected a score name or a mapping with 'name'"),
    ({"filters": ["resources", "gpu-modle"]}, r"filters\[1\]: unknown filter 'gpu-modle'"),
    ({"devices": "nvlink"}, r"devices: unknown device picker 'nvlink'; known: best, fgd, random, topology"),
    ({"queueSort": "lifo"}, r"queueSort: unknown queue sort 'lifo'"),
    ({"scores": [{"name": "fgd", "weight": -1}]}, r"scores\[0\]\.weight=-1 must be a number >= 0"),
    ({"scores": [{"name": "fgd", "weight": "high"}]}, r"scores\[0\]\.weight='high' must be a number >= 0"),
    ({"scores": [{"name": "fgd", "weight": True}]}, r"scores\[0\]\.weight=True must be a number >= 0"),
    ({"scores": [{"name": "fgd", "args": {"quantise": True}}]}, r"scores\[0\]\.args: .*quantise"),
    ({"devices": {"name": "best", "args": {"quantize": True}}}, r"devices\.args: BestDevice\(\) takes no arguments"),
    ({"scores": ["fgd"], "tiebreak": "first"}, r"unknown field\(s\) \['tiebreak'\]"),
    ({"tieBreak": "last"}, r"tieBreak='last' must be 'random' or 'first'"),
    ({"starvationSeconds": -5}, r"starvationSeconds=-5 must be a number >= 0"),
    ({"scores": [{"name": "fgd", "wieght": 2}]}, r"scores\[0\]: unknown field\(s\) \['wieght'\]"),
    ({"filters": [{"name": "resources", "weight": 2}]}, r"filters\[0\]: unknown field\(s\) \['weight'\]"),
    (["not", "a", "mapping"], r"a profile is a mapping"),
])
def test_bad_profile_names_the_field(doc, message: str) -> None:
    with pytest.raises(ProfileError, match=message):
        parse_profile(doc, "bad.yaml")


def test_bad_profile_files(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match=r"no profile 'nope': .* shipped profiles are binpack, default"):
        load_profile("nope")
    broken = tmp_path / "broken.yaml"
    broken.write_text("scores: [fgd\n")
    with pytest.raises(ProfileError, match=r"broken.yaml: not valid YAML"):
        load_profile(str(broken))
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    with pytest.raises(ProfileError, match=r"empty.yaml: a profile is a mapping"):
        load_profile(str(empty))
