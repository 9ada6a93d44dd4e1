"""Integration tests against a real local control plane (a package, so its conftest does not shadow tests/conftest)."""
