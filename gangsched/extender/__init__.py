"""Extender mode: gang semantics inside a real kube-scheduler, through its extender protocol."""
