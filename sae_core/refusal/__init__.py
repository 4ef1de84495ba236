"""The refusal case study: contrast sets, refusal features, steering, measuring, report."""
