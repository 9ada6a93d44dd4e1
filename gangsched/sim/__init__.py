"""The simulator: the scheduling core driven by trace events instead of an API server."""
