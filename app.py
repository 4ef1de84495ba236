"""SAE Explorer — the Streamlit app's entry page. Start it with `sae-explorer app RUN…` (or `--runs-dir FOLDER`)."""

import streamlit as st

from explorer.state import page_header

page_header("SAE Explorer")
st.write(
    "Browse sparse autoencoders trained with `sae-explorer train`. "
    "Open **Runs** in the sidebar to see each run's SAEs and their held-out metrics, and **Features** to "
    "search and browse the features of a precomputed run (`sae-explorer precompute RUN`), **Prompt** to see "
    "which features fire on your own text, **Layers** to compare the SAEs across layers and sites, and "
    "**Attribution** to see which features drive a prediction, and **Steering** to change the model's answers "
    "with features."
)
