"""Sparse feature circuits (Marks et al. 2024) over a run's SAEs: node effects by attribution patching and integrated
gradients, with every site's error term as a node, and faithfulness / completeness of the circuits they rank."""

from .ablation import circuit_metric, faithfulness_curve, keep_all_but, keep_nodes, ranked_nodes
from .edges import EDGE_COLUMNS, edge_weights
from .nodes import METHODS, CircuitError, NodeEffects, SiteMeans, SiteNodes, node_effects

__all__ = [
    "EDGE_COLUMNS", "METHODS", "CircuitError", "NodeEffects", "SiteMeans", "SiteNodes", "circuit_metric", "edge_weights",
    "faithfulness_curve", "keep_all_but", "keep_nodes", "node_effects", "ranked_nodes",
]
