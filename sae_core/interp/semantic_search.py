"""Search by meaning: a query in words → the features whose explanation or examples mean the most like it."""

from __future__ import annotations

import pandas as pd

from ..errors import UserError
from ..features.embed import Embedder
from ..features.reader import FeatureStore

MAX_QUERY_CHARS = 1000


def check_embedded(store: FeatureStore) -> str:
    """The name of the model that embedded the file's features, or a clear error saying how to embed them."""
    settings = store.embedder_settings
    if not settings or not len(store.vector_index):
        raise UserError(f"{store.path} has no feature vectors yet; add them with `sae-explorer embed {store.path.parent}`")
    return str(settings["name"])


def search_by_meaning(store: FeatureStore, embedder: Embedder, query: str, *, saes: list[int] | None = None,
                      limit: int = 50) -> pd.DataFrame:
    """Features ranked by cosine similarity of their vectors to the query's, across all SAEs (or `saes`)."""
    query = " ".join(query.split())[:MAX_QUERY_CHARS]
    if not query:
        raise UserError("the query is empty; describe what you are looking for, e.g. legal documents")
    name = check_embedded(store)
    if embedder.name != name:
        raise UserError(f"the features were embedded with {name}, the query with {embedder.name}; use the same model "
                        f"(or re-embed with `sae-explorer embed {store.path.parent}`)")
    return store.search_by_vector(embedder.embed([query])[0], saes=saes, limit=limit)
