"""SAE Explorer core: train, evaluate and run sparse autoencoders on any Hugging Face causal LM."""

__version__ = "0.1.0"
