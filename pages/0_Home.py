"""Home: what SAE Explorer is and what each page is for, with a link to each (carrying the run)."""

import streamlit as st

from explorer.feature_view import LINK_PARAMS
from explorer.navigation import PAGES
from explorer.state import page_header

page_header("SAE Explorer")
st.write("Browse the features of sparse autoencoders trained with `sae-explorer train` (or imported with "
         "`sae-explorer import`). Pages that show features need the run's feature file "
         "(`sae-explorer precompute RUN`); Prompt, Attribution and Steering run the model live.")
for page in PAGES:
    st.page_link(page.path, label=page.title, icon=page.icon, query_params=dict(LINK_PARAMS.get()))
    st.caption(page.what)
