"""The live scheduler: the scheduling core driven by a real Kubernetes API server (`gangsched run`)."""
