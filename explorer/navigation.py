"""The app's pages in sidebar order: script, title, URL path, icon and what each is for (the landing page lists them).

No Streamlit here: `app.py` turns these into `st.Page`s, and tests read the list directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


def pages_dir() -> Path:
    """The page scripts: `explorer/pages/` in an installed wheel, `pages/` in a source checkout."""
    installed = Path(__file__).resolve().parent / "pages"
    return installed if installed.is_dir() else Path(__file__).resolve().parents[1] / "pages"


@dataclass(frozen=True)
class PageInfo:
    script: str  # its file name in `pages_dir()`
    title: str
    url_path: str
    icon: str
    what: str

    @property
    def path(self) -> str:
        """The script's absolute path, as `st.Page` and `st.page_link` are given it."""
        return str(pages_dir() / self.script)


HOME = PageInfo("0_Home.py", "Home", "", ":material/home:", "what each page is for")
PAGES = (
    PageInfo("1_Runs.py", "Runs", "Runs", ":material/table_chart:",
             "pick a run; its SAEs' held-out metrics (FVU, loss recovered, L0, dead latents) as a table and charts"),
    PageInfo("2_Features.py", "Features", "Features", ":material/search:",
             "filter, sort and search features by meaning, label, explanation, token or id; a feature's page has its "
             "explanation and scores, histogram, logit effects, examples and neighbours"),
    PageInfo("3_Prompt.py", "Prompt", "Prompt", ":material/edit_note:",
             "paste text and see which features fire on each token, at several sites at once"),
    PageInfo("4_Layers.py", "Layers", "Layers", ":material/stacked_line_chart:",
             "the paper's comparison across layers and sites, and one prompt read across them"),
    PageInfo("5_Attribution.py", "Attribution", "Attribution", ":material/account_tree:",
             "which (site, token, feature) triples drive a next-token logit, with an ablation check"),
    PageInfo("6_Steering.py", "Steering", "Steering", ":material/tune:",
             "add or clamp features while the model answers; unsteered and steered side by side, and a sweep"),
    PageInfo("7_Circuits.py", "Circuits", "Circuits", ":material/hub:",
             "the circuit behind one prediction: features and error terms at every site, the edges between them, and "
             "how faithful and complete it is"),
)
