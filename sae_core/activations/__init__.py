"""Activations: harvested from the model at many sites in one pass, cached, outliers dropped."""
