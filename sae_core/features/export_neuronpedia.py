"""A run's features as a Neuronpedia export: the folder layout and JSON lines that Neuronpedia's importer reads
(`neuronpedia-utils`' `db_models`), so a user's SAEs can be published as dashboards in one command.

    OUT/MODEL_ID/SOURCE_ID/{release,model,sourceset,source}.jsonl
    OUT/MODEL_ID/SOURCE_ID/features/batch-N.jsonl.gz       one Feature per line
    OUT/MODEL_ID/SOURCE_ID/activations/batch-N.jsonl.gz    one Activation (an example context) per line
    OUT/MODEL_ID/SOURCE_ID/explanations/batch-N.jsonl.gz   the current explanation of each explained feature

One source per SAE, `SOURCE_ID = LAYER-SET`, one source set per site kind and width (e.g. `demo-res-2k`), as
Neuronpedia names them. Mapped from the feature file: density → `frac_nonzero`, the activation histogram → the
frequency histogram, top / bottom logit effects → `pos_str` / `neg_str`, decoder-cosine neighbours →
`topkCosSim…`, each top and quantile example → an Activation with its ±window tokens and values (a quantile
example's `binMin` / `binMax` are the range of the examples sampled from its interval, not the interval's exact
bounds, which the feature file does not keep).
"""

from __future__ import annotations

import gzip
import json
import re
import sys
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ..errors import UserError
from ..io import atomic_folder, check_replaceable
from ..options import option
from .parts import open_store

MARKER = "export.json"
"""What this export holds (and proof that a folder may be replaced by the next export)."""
SITE_SETS = {"resid_post": "res", "mlp_out": "mlp", "attn_out": "att", "transcoder": "transcoder"}
HOOKS = {"resid_post": "hook_resid_post", "mlp_out": "hook_mlp_out", "attn_out": "hook_attn_out", "transcoder": "ln2.hook_normalized"}


@dataclass(frozen=True)
class NeuronpediaOptions:
    """What Neuronpedia shows about the release (`sae-explorer export --format neuronpedia`)."""

    model_id: str | None = option(None, "Neuronpedia's id of the model, e.g. gemma-2-2b (default: the run's model name, "
                                  "lower case, without its organisation)")
    release_id: str | None = option(None, "the release's id, letters, digits and dashes (default: the run's folder name, "
                                    "lower case, other characters as dashes)")
    release_title: str | None = option(None, "the release's title (default: the release id)")
    creator_name: str = option("sae-explorer", "who made the SAEs, as Neuronpedia shows it")
    creator_id: str = option("sae-explorer", "the creator id written in every row (Neuronpedia assigns its own on import)")
    url: str | None = option(None, "a link to the paper, repository or weights")
    hf_repo_id: str | None = option(None, "the Hugging Face repository holding the SAE weights, e.g. ORG/REPO")
    batch_features: int = option(256, "features per batch file")


def default_model_id(model: str) -> str:
    """Neuronpedia-style model id from a Hub id or path: `HuggingFaceTB/SmolLM2-135M-Instruct` → `smollm2-135m-instruct`."""
    return model.rstrip("/").split("/")[-1].removesuffix(".gguf").lower()


def _width(d_sae: int) -> str:
    return f"{round(d_sae / 1024)}k" if d_sae >= 1024 else str(d_sae)


def _jsonl_gz(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8", compresslevel=5) as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False, allow_nan=False) + "\n")


def _jsonl(path: Path, row: dict[str, Any]) -> None:
    path.write_text(json.dumps(row, ensure_ascii=False) + "\n", encoding="utf-8")


def export_neuronpedia(db_path: str | Path, out: str | Path, options: NeuronpediaOptions, run_name: str) -> dict[str, int]:
    """Write the Neuronpedia export of a feature file (or split store) under `out`, replaced as a whole only on
    success; counts of features, activations and explanations written."""
    out = Path(out)
    check_replaceable(out, MARKER, "Neuronpedia export")
    con, _ = open_store(Path(db_path))
    counts = {"sources": 0, "features": 0, "activations": 0, "explanations": 0}
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    with con, atomic_folder(out) as tmp:
        meta = {k: json.loads(v) for k, v in con.execute("SELECT key, value FROM meta").fetchall()}
        model_id = options.model_id or default_model_id(str(meta.get("model", run_name)))
        release = options.release_id or re.sub(r"[^a-z0-9-]+", "-", run_name.lower()).strip("-") or "release"
        if not re.fullmatch(r"[A-Za-z0-9-]+", release):
            raise UserError(f"--release-id {release!r}: Neuronpedia takes letters, digits and dashes only")
        vocab = [t for (t,) in con.execute("SELECT token FROM vocab ORDER BY token_id").fetchall()]
        saes = con.execute("SELECT sae_id, layer, site, d_sae FROM saes ORDER BY sae_id").fetchall()
        for sae_id, layer, site, d_sae in tqdm(saes, desc="neuronpedia", unit="SAE", file=sys.stderr, leave=False):
            set_name = f"{release}-{SITE_SETS.get(site, site)}-{_width(d_sae)}"
            source_id = f"{layer}-{set_name}"
            folder = tmp / model_id / source_id
            folder.mkdir(parents=True)
            _write_headers(folder, options, model_id, release, set_name, source_id, site, meta, now)
            for batch, start in enumerate(range(0, d_sae, options.batch_features)):
                rows = _batch(con, vocab, sae_id, start, min(start + options.batch_features, d_sae), model_id, source_id,
                              f"blocks.{layer}.{HOOKS.get(site, site)}", options.creator_id, now)
                for kind, items in rows.items():
                    if items:
                        _jsonl_gz(folder / kind / f"batch-{batch}.jsonl.gz", items)
                    counts[kind] += len(items)
            counts["sources"] += 1
        (tmp / MARKER).write_text(json.dumps({"format": "neuronpedia", "model_id": model_id, "release": release,
                                              "created": now, **counts}, indent=2) + "\n", encoding="utf-8")
    return counts


def _write_headers(folder: Path, o: NeuronpediaOptions, model_id: str, release: str, set_name: str, source_id: str,
                   site: str, meta: dict[str, Any], now: str) -> None:
    """release.jsonl, model.jsonl, sourceset.jsonl and source.jsonl of one source."""
    _jsonl(folder / "release.jsonl", {
        "name": release, "description": o.release_title or release, "descriptionShort": o.release_title or release,
        "creatorName": o.creator_name, "creatorNameShort": o.creator_name, "creatorId": o.creator_id, "visibility": "PUBLIC",
        "urls": [o.url] if o.url else [], "createdAt": now})
    _jsonl(folder / "model.jsonl", {
        "id": model_id, "instruct": "instruct" in model_id or model_id.endswith("-it"), "displayNameShort": model_id,
        "displayName": model_id, "creatorId": o.creator_id, "createdAt": now, "updatedAt": now})
    _jsonl(folder / "sourceset.jsonl", {
        "modelId": model_id, "name": set_name, "creatorId": o.creator_id, "creatorName": o.creator_name,
        "releaseName": release, "description": f"{site.replace('_', ' ')} SAEs of {release}", "visibility": "PUBLIC",
        "hasDashboards": True, "createdAt": now})
    _jsonl(folder / "source.jsonl", {
        "id": source_id, "modelId": model_id, "setName": set_name, "creatorId": o.creator_id, "hasDashboards": True,
        "inferenceEnabled": False, "visibility": "PUBLIC", "hfRepoId": o.hf_repo_id, "hfFolderId": None,
        "dataset": meta.get("corpus"), "num_prompts": meta.get("contexts"), "num_tokens_in_prompt": meta.get("context_size"),
        "createdAt": now})


def _batch(con: Any, vocab: list[str], sae_id: int, start: int, stop: int, model_id: str, source_id: str, hook: str,
           creator: str, now: str) -> dict[str, list[dict[str, Any]]]:
    """The Feature, Activation and Explanation rows of features `start` … `stop - 1` of one SAE."""
    params = [sae_id, start, stop]
    where = "sae_id = ? AND feature >= ? AND feature < ?"
    features = con.execute(f"""SELECT feature, density, max_act, hist_max, hist_counts, top_logit_ids, top_logit_values,
                               bottom_logit_ids, bottom_logit_values FROM features WHERE {where} ORDER BY feature""", params).fetchall()
    cosine = dict(con.execute(f"SELECT feature, [ids, scores] FROM neighbours WHERE {where} AND kind = 'decoder_cosine'",
                              params).fetchall())
    examples = con.execute(f"""SELECT e.feature, e.kind, e.rank, e.activation, e.position - e.window_start, e.acts,
                                      list_slice(c.token_ids, e.window_start + 1, e.window_start + len(e.acts))
                               FROM examples e JOIN contexts c USING (context_id)
                               WHERE e.{where.replace(' AND ', ' AND e.')} ORDER BY e.feature, e.kind, e.rank""", params).fetchall()
    explained = con.execute(f"""SELECT feature, explanation, explainer, scorer, detection, fuzzing, embedding FROM explanations
                                WHERE {where} AND current""", params).fetchall()
    ranges: dict[tuple[int, int], tuple[float, float]] = {}
    for feature, kind, _, activation, *_ in examples:
        lo, hi = ranges.get((feature, kind), (activation, activation))
        ranges[(feature, kind)] = (min(lo, activation), max(hi, activation))
    rows: dict[str, list[dict[str, Any]]] = {"features": [], "activations": [], "explanations": []}
    for feature, density, max_act, hist_max, hist, top_ids, top_values, bottom_ids, bottom_values in features:
        width = (hist_max or 0.0) / max(len(hist or []), 1)
        ids, scores = cosine.get(feature, ([], []))
        rows["features"].append({
            "modelId": model_id, "layer": source_id, "index": str(feature), "creatorId": creator, "createdAt": now,
            "maxActApprox": float(max_act), "hasVector": False, "vector": [], "vectorLabel": None, "hookName": hook,
            "topkCosSimIndices": [int(i) for i in ids], "topkCosSimValues": [float(s) for s in scores],
            "neg_str": [vocab[i] for i in bottom_ids or []], "neg_values": [float(v) for v in bottom_values or []],
            "pos_str": [vocab[i] for i in top_ids or []], "pos_values": [float(v) for v in top_values or []],
            "frac_nonzero": float(density),
            "freq_hist_data_bar_heights": [float(c) for c in hist or []],
            "freq_hist_data_bar_values": [(i + 0.5) * width for i in range(len(hist or []))],
            "logits_hist_data_bar_heights": [], "logits_hist_data_bar_values": [], "decoder_weights_dist": [],
        })
    for feature, kind, _, _, at, acts, token_ids in examples:
        values = [float(a) for a in acts]
        lo, hi = ranges[(feature, kind)]
        rows["activations"].append({
            "id": uuid.uuid4().hex[:25], "tokens": [vocab[t] for t in token_ids], "modelId": model_id, "layer": source_id,
            "index": str(feature), "maxValue": max(values), "maxValueTokenIndex": values.index(max(values)),
            "minValue": min(values), "values": values, "creatorId": creator, "createdAt": now,
            "binMin": None if kind == 0 else lo, "binMax": None if kind == 0 else hi, "binContains": None,
            "qualifyingTokenIndex": int(at), "dataSource": None, "dataIndex": None,
        })
    for feature, text, explainer, scorer, detection, fuzzing, embedding in explained:
        scores = {"detection": detection, "fuzzing": fuzzing, "embedding": embedding, "scorer": scorer}
        rows["explanations"].append({
            "id": uuid.uuid4().hex[:25], "modelId": model_id, "layer": source_id, "index": str(feature), "description": text,
            "authorId": creator, "typeName": "sae-explorer", "explanationModelName": explainer,
            "notes": json.dumps({k: v for k, v in scores.items() if v is not None and v == v}), "createdAt": now,
        })
    return rows
