"""Evaluation on held-out text: every metric, a run's metrics.json, tables and the per-layer report."""
