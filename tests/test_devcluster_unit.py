"""Devcluster pieces that need no running control plane: manifests, certificates, cache keys, guards."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509

from gangsched.devcluster import DevCluster, DevClusterError, gpu_node_manifest, pki
from gangsched.devcluster.binaries import module_cache_dir
from gangsched.devcluster.cluster import free_ports


def test_gpu_node_manifest() -> None:
    n = gpu_node_manifest("n1", gpus=4, gpu_model="H100", cpu="64", memory="512Gi", zone="z1", rack="r7")
    assert n["metadata"]["annotations"]["kwok.x-k8s.io/node"] == "fake"
    labels = n["metadata"]["labels"]
    assert labels["kubernetes.io/hostname"] == "n1" and labels["nvidia.com/gpu.product"] == "H100"
    assert labels["nvidia.com/gpu.count"] == "4" and labels["topology.kubernetes.io/zone"] == "z1"
    assert labels["gangsched.io/rack"] == "r7"
    for key in ("capacity", "allocatable"):
        assert n["status"][key] == {"cpu": "64", "memory": "512Gi", "pods": "110", "nvidia.com/gpu": "4"}
    assert not n["spec"].get("taints")


def test_certificates(tmp_path: Path) -> None:
    p = pki.generate(tmp_path)
    ca = x509.load_pem_x509_certificate(p.ca_crt.read_bytes())
    srv = x509.load_pem_x509_certificate(p.apiserver_crt.read_bytes())
    adm = x509.load_pem_x509_certificate(p.admin_crt.read_bytes())
    srv.verify_directly_issued_by(ca)
    adm.verify_directly_issued_by(ca)
    sans = srv.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in sans.get_values_for_type(x509.DNSName)
    assert "127.0.0.1" in {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)}
    assert "O=system:masters" in adm.subject.rfc4514_string()
    assert p.admin_key.stat().st_mode & 0o077 == 0


def test_cache_key_follows_go_sum(tmp_path: Path) -> None:
    (tmp_path / "go.mod").write_text("module x\nrequire k8s.io/kubernetes v1.34.4\n")
    (tmp_path / "go.sum").write_text("a\n")
    before = module_cache_dir(tmp_path, "k8s", "v1.34.4")
    (tmp_path / "go.sum").write_text("b\n")
    assert module_cache_dir(tmp_path, "k8s", "v1.34.4") != before


def test_free_ports_distinct() -> None:
    ports = free_ports(5)
    assert len(set(ports)) == 5


def test_refuses_foreign_directory(tmp_path: Path) -> None:
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(DevClusterError, match="holds no devcluster"):
        DevCluster(tmp_path).up()
    DevCluster(tmp_path).down()
    assert (tmp_path / "precious.txt").exists()


def test_the_control_plane_module_is_switchable_and_the_coscheduler_keeps_its_own_pin(monkeypatch) -> None:
    from gangsched.devcluster import binaries as b

    default = b.k8s_cache_dir()
    assert default.name.startswith("k8s-v1.37.2-")
    monkeypatch.setenv(b.K8SBIN_ENV, "deploy/coschedbin")  # any module pinning k8s.io/kubernetes: here 1.34
    assert b.k8sbin_dir() == b.REPO / "deploy" / "coschedbin"
    assert b.k8s_cache_dir() != default and b.k8s_cache_dir().name.startswith("k8s-v1.34.4-")
    cosched = (b.COSCHEDBIN_DIR / "go.mod").read_text()
    assert b._pinned_version(cosched, "sigs.k8s.io/scheduler-plugins") == "v0.34.7"
    assert b._k8s_version(cosched) == "v1.34.4"  # the release scheduler-plugins v0.34.7 was built against


def test_the_go_bind_ceiling_uses_the_client_go_the_control_plane_modules_are_replaced_with() -> None:
    from gangsched.devcluster import binaries as b

    k8s = (b.K8SBIN_DIR / "go.mod").read_text()
    ceiling = (b.CEILINGBIN_DIR / "go.mod").read_text()
    for mod in ("k8s.io/client-go", "k8s.io/api", "k8s.io/apimachinery"):
        assert b._pinned_version(ceiling, mod) == b._pinned_version(k8s, mod) == "v0.37.2", mod
    assert (b.CEILINGBIN_DIR / "bind-ceiling" / "main.go").exists()


def test_the_workload_api_is_switched_on_from_1_37(tmp_path: Path) -> None:
    from gangsched.devcluster import Binaries

    def cluster(version: str) -> DevCluster:
        return DevCluster(tmp_path, binaries=Binaries(*(tmp_path / n for n in "abcde"), k8s_version=version))

    new, old = cluster("v1.37.2"), cluster("v1.34.4")
    assert new.workload_api and not old.workload_api
    assert new._workload_api_flags(runtime_config=True) == ["--feature-gates=GenericWorkload=true",
                                                            "--runtime-config=scheduling.k8s.io/v1beta1=true"]
    assert old._workload_api_flags(runtime_config=True) == []
    with pytest.raises(DevClusterError, match=r"needs Kubernetes >= 1\.37"):
        old.start_kube_scheduler("native", gangs=True)


def test_a_kubelet_node_installs_its_debian_packages_on_first_use(tmp_path, monkeypatch) -> None:
    import shutil

    import pytest

    from gangsched.devcluster import DevClusterError
    from gangsched.devcluster import kubeletnode as kn

    installed: list[tuple[str, ...]] = []
    monkeypatch.setattr(kn.os, "geteuid", lambda: 0)
    monkeypatch.setattr(kn.shutil, "which", lambda tool: None if tool == "containerd" else shutil.which("sh"))
    monkeypatch.setattr(kn, "_apt_install", installed.append)
    node = kn.KubeletNode(tmp_path / "kubeconfig", tmp_path / "kubelet", base=tmp_path)
    with pytest.raises(DevClusterError, match="needs containerd: apt-get install containerd runc busybox-static"):
        node.start(lock_timeout=1)
    assert installed == [kn.DEBIAN_PACKAGES]  # tried first; the error only once it did not help
