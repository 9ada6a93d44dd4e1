"""Score plugins: each returns a raw score per selected node (higher is better) and normalises to 0..100."""
