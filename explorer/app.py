"""SAE Explorer — the Streamlit app's entry point: the pages and their order. Start it with `sae-explorer app RUN…`
(or `--runs-dir FOLDER`)."""

import streamlit as st

from explorer.navigation import HOME, PAGES

home = st.Page(HOME.path, title=HOME.title, icon=HOME.icon, default=True)
st.navigation([home, *(st.Page(p.path, title=p.title, url_path=p.url_path, icon=p.icon) for p in PAGES)]).run()
