"""Filter plugins: each returns a bool mask over the selected nodes (True = the pod may run there)."""
