"""Understanding features: explanations by an LLM, scores that say how far to trust them, search by meaning."""
