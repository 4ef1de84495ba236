"""The app's pages in sidebar order: script, title, URL path, icon and what each is for (the landing page lists them).

No Streamlit here: `app.py` turns these into `st.Page`s, and tests read the list directly.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PageInfo:
    script: str  # relative to the app's folder
    title: str
    url_path: str
    icon: str
    what: str


HOME = PageInfo("pages/0_Home.py", "Home", "", ":material/home:", "what each page is for")
PAGES = (
    PageInfo("pages/1_Runs.py", "Runs", "Runs", ":material/table_chart:",
             "pick a run; its SAEs' held-out metrics (FVU, loss recovered, L0, dead latents) as a table and charts"),
    PageInfo("pages/2_Features.py", "Features", "Features", ":material/search:",
             "filter, sort and search features by meaning, label, explanation, token or id; a feature's page has its "
             "explanation and scores, histogram, logit effects, examples and neighbours"),
    PageInfo("pages/3_Prompt.py", "Prompt", "Prompt", ":material/edit_note:",
             "paste text and see which features fire on each token, at several sites at once"),
    PageInfo("pages/4_Layers.py", "Layers", "Layers", ":material/stacked_line_chart:",
             "the paper's comparison across layers and sites, and one prompt read across them"),
    PageInfo("pages/5_Attribution.py", "Attribution", "Attribution", ":material/account_tree:",
             "which (site, token, feature) triples drive a next-token logit, with an ablation check"),
    PageInfo("pages/6_Steering.py", "Steering", "Steering", ":material/tune:",
             "add or clamp features while the model answers; unsteered and steered side by side, and a sweep"),
)
