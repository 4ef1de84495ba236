"""`sae-explorer explain`: write a one-sentence explanation of each chosen feature, score it, store both.

Stages, each resumable from `RUN/.explain/` (a killed job continues where it stopped when rerun):

1. *explain*: the explainer reads a feature's shown contexts (top examples and quantile samples, firing
   tokens marked) and promoted tokens and answers in one sentence;
2. *score*: the scorer judges held-out contexts with the explanation and with two baselines
   (`score_features`); the sentence embedder gives the embedding score;
3. *store*: rank 0 adds explanations, scores and explanation vectors to features.duckdb atomically.

Under torchrun the features are dealt across ranks; every rank waits for the others between stages.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from ..features.amend import amend_each, feature_file, set_meta
from ..features.embed import Embedder, embed_explanations, file_embedder
from ..features.reader import FeatureStore
from ..features.schema import check_columns
from ..model.load import EMBEDDED_NAME, load_model
from ..model.sentence_embedder import load_embedder
from ..parallel import init_parallel
from ..runs.open_run import RunSAEs, open_run_saes
from .chat_models import ChatModel, LocalChatModel
from .config import ExplainConfig
from .journal import Journal
from .non_activating import WindowPool, build_pool
from .openai_client import RemoteChatModel
from .prompts import PROMPT_VERSION, explainer_messages, parse_explanation
from .samples import FeatureSamples, split_examples
from .score_features import ScoringItem, score_batch
from .scores import mean_and_spread
from .select import select_features

N_PROMOTED = 5
WINDOWS_PER_CONTEXT = 4


@dataclass(frozen=True)
class ExplainSummary:
    """What a job did: how many features it explained and the mean of every score."""

    explained: int
    skipped: int
    explainer: str
    scorer: str
    means: dict[str, tuple[float, float, int]]
    """Score name → (mean, standard error, features)."""

    def table(self) -> str:
        """The scores against their baselines as a small text table."""
        lines = [f"{'score':<11} {'explanation':>15} {'shuffled':>15} {'token handle':>15}"]
        for score in ("detection", "fuzzing", "embedding"):
            cells = []
            for suffix in ("", "_shuffled", "_handle"):
                mean, se, n = self.means.get(score + suffix, (math.nan, math.nan, 0))
                cells.append(f"{mean:.3f} ± {se:.3f}" if n > 1 else f"{mean:.3f}" if n else "—")
            lines.append(f"{score:<11} {cells[0]:>15} {cells[1]:>15} {cells[2]:>15}")
        return "\n".join(lines)


def open_chat_model(spec: str | None, url: str | None, cfg: ExplainConfig, opened: RunSAEs, device: Any) -> ChatModel:
    """A server's model when `url` is given, else a local one (the run's own model object when it is the same model)."""
    if url:
        return RemoteChatModel(url, spec, timeout=cfg.timeout, concurrency=cfg.concurrency)
    same = spec is None and opened.loaded.name == EMBEDDED_NAME or spec is not None and spec == opened.info.get("model")
    return LocalChatModel(opened.loaded if same else load_model(spec, device=device), batch_size=cfg.batch_size)


def explain_run(
    run: str | Path,
    cfg: ExplainConfig = ExplainConfig(),
    *,
    explainer: ChatModel | None = None,
    scorer: ChatModel | None = None,
    embedder: Embedder | None = None,
    log: Callable[[str], None] | None = None,
) -> ExplainSummary:
    """Explain and score the chosen features of a run and add them to its feature file; see the module docstring."""
    par, device = init_parallel(cfg.device)
    log = log or ((lambda m: print(m, file=sys.stderr, flush=True)) if par.main else (lambda m: None))
    run = Path(run)
    db = feature_file(run)
    with FeatureStore(db) as store:
        return _explain(run, db, store, cfg, par, device, explainer, scorer, embedder, log)


def _explain(run: Path, db: Path, store: FeatureStore, cfg: ExplainConfig, par: Any, device: Any, explainer: ChatModel | None,
             scorer: ChatModel | None, embedder: Embedder | None, log: Callable[[str], None]) -> ExplainSummary:
    targets, notes = select_features(store, cfg.saes, cfg.features)
    for note in notes:
        log(f"note: {note}")
    shorts = sorted({s for s, _ in targets})
    hooks = [store.sae(s)["hook_name"] for s in shorts]
    opened = open_run_saes(run, device=device, log=log, hook_names=hooks)
    explainer = explainer or open_chat_model(cfg.explainer, cfg.explainer_url, cfg, opened, device)
    same_scorer = (cfg.scorer, cfg.scorer_url) in ((None, None), (cfg.explainer, cfg.explainer_url))
    scorer = scorer or (explainer if same_scorer else open_chat_model(cfg.scorer or cfg.explainer, cfg.scorer_url or cfg.explainer_url, cfg, opened, device))
    if embedder is None and cfg.embed:
        settings = store.embedder_settings
        embedder = load_embedder(settings["name"] if settings else None, device=device)

    done = set() if cfg.overwrite else store.explained_by(explainer.name, scorer.name)
    todo = [t for t in targets if t not in done]
    skipped = len(targets) - len(todo)
    if skipped:
        log(f"{skipped} of {len(targets)} feature(s) already explained by {explainer.name} and scored by {scorer.name} "
            "(--overwrite explains them again)")
    if not todo:
        return ExplainSummary(0, skipped, explainer.name, scorer.name, {})
    fingerprint = {"explainer": explainer.name, "scorer": scorer.name, "embedder": getattr(embedder, "name", None),
                   "prompts": PROMPT_VERSION, "options": cfg.fingerprint(), "file": store.meta.get("created")}
    journal = Journal(run, fingerprint, par.rank)
    log(f"explaining {len(todo)} feature(s) of {', '.join(shorts)} with {explainer.name}, scoring with {scorer.name}"
        + (f", {par.world} ranks" if par.distributed else ""))

    _explain_stage(store, par.mine(todo), explainer, journal, cfg, par.main)
    par.barrier()
    records = journal.read()
    explanations = {key: records[("explained", *key)]["explanation"] for key in todo}
    pool = _non_activating_pool(store, opened, par.mine(todo), cfg, log)
    _score_stage(store, par.mine(todo), explanations, pool, scorer, embedder, journal, cfg, par.main)
    par.barrier()
    means: dict[str, tuple[float, float, int]] = {}
    if par.main:
        scored = [r for (stage, *_), r in journal.read().items() if stage == "scored"]
        _store_results(db, scored, store, explainer.name, scorer.name, embedder, cfg)
        journal.remove()
        means = _means(scored)
        log(f"added {len(scored)} explanation(s) to {db}")
    par.barrier()
    return ExplainSummary(len(todo), skipped, explainer.name, scorer.name, means)


def _samples(store: FeatureStore, key: tuple[str, int], cfg: ExplainConfig) -> tuple[FeatureSamples, list[str], str]:
    """A feature's split contexts, its promoted tokens and its token handle."""
    sae, feature = key
    page = store.feature(sae, feature)
    samples = split_examples(page.examples, cfg.explain_examples, cfg.score_examples, cfg.explain_window, cfg.score_window,
                             sae=sae, feature=feature)
    return samples, list(page.top_logits["token"][:N_PROMOTED]), str(page.feature["label"])


def _pending_batches(stage: str, mine: list[tuple[str, int]], records: dict, batch_size: int, show: bool,
                     desc: str) -> Iterator[list[tuple[str, int]]]:
    """This rank's features that the journal has no `stage` record of, in batches, with a progress bar over all of them."""
    pending = [k for k in mine if (stage, *k) not in records]
    with tqdm(total=len(mine), initial=len(mine) - len(pending), desc=desc, unit="feature", file=sys.stderr,
              dynamic_ncols=True, disable=not show) as bar:
        for start in range(0, len(pending), batch_size):
            batch = pending[start : start + batch_size]
            yield batch
            bar.update(len(batch))


def _explain_stage(store: FeatureStore, mine: list[tuple[str, int]], explainer: ChatModel, journal: Journal,
                   cfg: ExplainConfig, show: bool) -> None:
    for batch in _pending_batches("explained", mine, journal.read(), cfg.batch_size, show, "explaining"):
        chats = []
        for key in batch:
            samples, promoted, _ = _samples(store, key, cfg)
            chats.append(explainer_messages(samples.shown, promoted))
        replies = explainer.generate(chats, cfg.max_new_tokens)
        journal.write([{"stage": "explained", "sae": k[0], "feature": k[1], "explanation": parse_explanation(r), "reply": r}
                       for k, r in zip(batch, replies)])


def _non_activating_pool(store: FeatureStore, opened: RunSAEs, mine: list[tuple[str, int]], cfg: ExplainConfig,
                         log: Callable[[str], None]) -> WindowPool:
    """Windows of held-out contexts with where each of this rank's features fires (one pass of the model)."""
    rng = np.random.default_rng(cfg.seed)
    pool = store.context_ids
    ids = sorted(rng.choice(pool, min(cfg.pool_contexts, len(pool)), replace=False).tolist())
    wanted: dict[str, list[int]] = {}
    for sae, feature in mine:
        wanted.setdefault(sae, []).append(feature)
    log(f"finding non-activating contexts: {len(ids)} held-out contexts through the model and {len(wanted)} SAE(s)")
    return build_pool(opened, store.context_tokens(ids), store.vocab, wanted, per_context=WINDOWS_PER_CONTEXT,
                      half_width=cfg.score_window, seed=cfg.seed)


def shuffled_partner(keys: list[tuple[str, int]], seed: int) -> dict[tuple[str, int], tuple[str, int]]:
    """Each feature's partner whose explanation serves as its shuffled baseline: one random cycle through all
    of them, so no feature gets its own (empty for fewer than two features)."""
    if len(keys) < 2:
        return {}
    order = [keys[i] for i in np.random.default_rng(seed).permutation(len(keys))]
    return {order[i]: order[(i + 1) % len(order)] for i in range(len(order))}


def _score_stage(store: FeatureStore, mine: list[tuple[str, int]], explanations: dict[tuple[str, int], str], pool: WindowPool,
                 scorer: ChatModel, embedder: Embedder | None, journal: Journal, cfg: ExplainConfig, show: bool) -> None:
    records = journal.read()
    partner = shuffled_partner(sorted(explanations), cfg.seed)
    for batch in _pending_batches("scored", mine, records, cfg.batch_size, show, "scoring"):
        items = []
        for key in batch:
            samples, _, handle = _samples(store, key, cfg)
            quiet = pool.for_feature(*key, len(samples.held_out), avoid=samples.example_contexts, seed=cfg.seed)
            other = partner.get(key)
            texts = {"explanation": explanations[key], "shuffled": explanations[other] if other else None, "handle": handle}
            items.append(ScoringItem(key, texts, samples.held_out + quiet))
        results = score_batch(items, scorer, embedder, seed=cfg.seed)
        journal.write([
            {"stage": "scored", "sae": it.key[0], "feature": it.key[1], "explanation": it.texts["explanation"],
             "shuffled_from": list(partner[it.key]) if it.key in partner else None,
             "reply": records.get(("explained", *it.key), {}).get("reply"), "texts": it.texts, **result}
            for it, result in zip(items, results)
        ])


def _store_results(db: Path, scored: list[dict[str, Any]], store: FeatureStore, explainer: str, scorer: str,
                   embedder: Embedder | None, cfg: ExplainConfig) -> None:
    """Replace this explainer/scorer's rows for these features, add the new ones and their explanation vectors."""
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    ids = {short: store.sae_id(short) for short in {r["sae"] for r in scored}}
    rows = pd.DataFrame([{
        "sae_id": ids[r["sae"]], "feature": int(r["feature"]), "explanation": r["explanation"],
        "explanation_lower": r["explanation"].lower(), "explainer": explainer, "scorer": scorer, "created": created, "current": True,
        **{k: (None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)) for k, v in r["scores"].items()},
        "n_activating": r["n_activating"], "n_non_activating": r["n_non_activating"],
        "details": json.dumps({**r["details"], "texts": r["texts"], "shuffled_from": r["shuffled_from"], "reply": r["reply"],
                               "options": asdict(cfg), "prompt_version": PROMPT_VERSION}, ensure_ascii=False),
    } for r in scored])
    if len(rows):
        check_columns("explanations", list(rows.columns))

    def write(con: duckdb.DuckDBPyConnection, sae_ids: list[int]) -> None:
        new = rows[rows.sae_id.isin(sae_ids)]
        if new.empty:
            return
        con.register("_new", new)
        try:
            con.execute("""DELETE FROM explanations x USING _new n WHERE x.sae_id = n.sae_id AND x.feature = n.feature
                           AND x.explainer = n.explainer AND x.scorer = n.scorer""")
            con.execute("UPDATE explanations x SET current = FALSE FROM _new n WHERE x.sae_id = n.sae_id AND x.feature = n.feature")
            con.execute("INSERT INTO explanations BY NAME SELECT * FROM _new")
        finally:
            con.unregister("_new")
        if embedder is not None:
            if file_embedder(con) is None:
                set_meta(con, {"embedder": {"name": embedder.name, "dim": embedder.dim}})
            embed_explanations(con, embedder, keys={(int(a), int(b)) for a, b in zip(new.sae_id, new.feature)})

    amend_each(db, write)  # the run's one feature file, or each part holding these SAEs


def _means(scored: list[dict[str, Any]]) -> dict[str, tuple[float, float, int]]:
    names = scored[0]["scores"].keys() if scored else []
    return {name: mean_and_spread([r["scores"][name] for r in scored]) for name in names}
