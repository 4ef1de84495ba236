"""Live work on one prompt: SAE activations, attribution of a logit to features, steering."""
