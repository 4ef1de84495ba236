"""The Streamlit feature explorer (built on sae_core; never imported by it)."""
