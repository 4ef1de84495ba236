"""The refusal case study end to end: find refusal features on the discovery half, then steer with them
on the held-out half and measure refusal rate and coherence, against the difference-of-means baseline.

`find_features` and `steer_and_measure` are the two stages (`sae-explorer refusal find` / `steer`);
`run_study` does both and writes the report. Everything lands in `RUN/refusal/`.
"""

from __future__ import annotations

import math
import random
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..model.sites import Site
from ..options import option
from ..runs.open_run import RunSAEs, open_run_saes
from .annotate import write_refusal_annotations
from .find import answer_rows, contrast, prompt_rows, read_sites
from .generation import RowEdit, answer_nll, generate_answers
from .interventions import ablate_direction, ablate_features, add, features_direction, unit
from .judge import ClassifierJudge, judge_all
from .prompts import Prompt, load_contrast_sets
from .results import (
    FEATURES_FILE,
    RefusalResults,
    refusal_dir,
    write_answers,
    write_directions,
    write_results,
)

MIN_REFUSALS = 3
"""The answer contrast needs at least this many refusing answers on the discovery prompts."""


@dataclass
class StudyConfig:
    """What the study reads, where it steers, and how much it generates: the options of `sae-explorer refusal`
    (defaults fit 20 minutes on 2 CPU cores for a 135M model)."""

    harmful: str | None = option(None, "requests to refuse (default: data/refusal/harmful.jsonl, 240 prompts)")
    harmless: str | None = option(None, "harmless requests (default: data/refusal/harmless.jsonl, 240 prompts)")
    sites: list[str] | None = option(None, "SAEs to search, e.g. L12R,L14R (default: every residual-stream SAE)")
    steer_site: str | None = option(None, "SAE to steer with (default: the searched one nearest the middle layer)")
    top: int = option(50, "features kept in each ranking")
    k: int = option(3, "features combined in the top-k method")
    alphas: list[float] = option([0.05, 0.1, 0.2, 0.4], "steering strengths in units of the median residual norm at the "
                                 "steering site, e.g. 0.05,0.1,0.2,0.4")
    steer_prompts: int = option(32, "held-out harmless prompts steered per strength (the baselines use the whole held-out half)")
    positions: int | None = option(None, "read the last N prompt tokens (default: the template's assistant-start tokens)")
    max_new_tokens: int = option(32, "answer length limit")
    batch_size: int = option(64, "prompts per generation batch")
    judge_model: str | None = option(None, "a text-classification model to judge refusals instead of the phrase list")
    judge_label: str = option("REJECTION", "the judge model's refusal label")
    seed: int = option(0, "picks the steered subset of harmless prompts")


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _searched_sites(opened: RunSAEs, names: list[str] | None) -> list[Site]:
    by_name = {site.short: site for site in opened.saes}
    if names:
        missing = [n for n in names if n not in by_name]
        if missing:
            raise UserError(f"the run has no SAE at {', '.join(missing)}; its SAEs are at {', '.join(by_name)}")
        return [by_name[n] for n in names]
    residual = [s for s in opened.saes if s.kind == "resid_post"]
    if not residual:
        raise UserError(f"the run has no residual-stream SAE; name the sites to search with --sites ({', '.join(by_name)})")
    return residual


def _steer_site(sites: list[Site], name: str | None, n_layers: int) -> Site:
    if name:
        match = [s for s in sites if s.short == name]
        if not match:
            raise UserError(f"--steer-site {name} is not among the searched sites ({', '.join(s.short for s in sites)})")
        return match[0]
    return min(sites, key=lambda s: (abs(s.layer - (n_layers - 1) / 2), s.layer))


def find_features(opened: RunSAEs, cfg: StudyConfig, judge: ClassifierJudge | None, log: Callable[[str], None] = _log) -> RefusalResults:
    """Rank features on the discovery half (prompt contrast; answer contrast when the model refuses often
    enough), generating and judging the model's own answers to the discovery harmful prompts."""
    loaded, sets = opened.loaded, load_contrast_sets(cfg.harmful, cfg.harmless)
    sites = _searched_sites(opened, cfg.sites)
    saes = {s: opened.saes[s] for s in sites}
    harmful, harmless = sets.split("discovery")
    log(f"prompt contrast: {len(harmful)} harmful vs {len(harmless)} harmless discovery prompts at {', '.join(s.short for s in sites)}")
    read_harmful = read_sites(loaded, saes, prompt_rows(loaded, [p.text for p in harmful], cfg.positions), batch_size=cfg.batch_size)
    read_harmless = read_sites(loaded, saes, prompt_rows(loaded, [p.text for p in harmless], cfg.positions), batch_size=cfg.batch_size)
    contrasts = {"prompt": contrast(saes, read_harmful, read_harmless, cfg.top)}

    answers = generate_answers(loaded, [p.text for p in harmful], max_new_tokens=cfg.max_new_tokens,
                               batch_size=cfg.batch_size, desc="answers to discovery harmful prompts")
    verdicts = judge_all(answers, judge)
    refused = [i for i, v in enumerate(verdicts) if v.refused]
    complied = [i for i, v in enumerate(verdicts) if not v.refused]
    log(f"the model refused {len(refused)} of {len(harmful)} discovery harmful prompts")
    notes = []
    if len(refused) >= MIN_REFUSALS and len(complied) >= MIN_REFUSALS:
        texts = [p.text for p in harmful]
        read_refused = read_sites(loaded, saes, answer_rows(loaded, [texts[i] for i in refused], [answers[i] for i in refused]),
                                  batch_size=cfg.batch_size)
        read_complied = read_sites(loaded, saes, answer_rows(loaded, [texts[i] for i in complied], [answers[i] for i in complied]),
                                   batch_size=cfg.batch_size)
        contrasts["answer"] = contrast(saes, read_refused, read_complied, cfg.top)
    else:
        notes.append(f"answer contrast skipped: the model refused {len(refused)} of {len(harmful)} discovery harmful "
                     f"prompts (needs at least {MIN_REFUSALS} refusals and {MIN_REFUSALS} compliances)")
        log(notes[-1])
    steer_site = _steer_site(sites, cfg.steer_site, loaded.layout.n_layers)
    records = [{"stage": "discovery", "condition": "baseline", "set": "harmful", "id": p.id, "prompt": p.text,
                "answer": a, "refused": v.refused, "reason": v.reason} for p, a, v in zip(harmful, answers, verdicts)]
    return RefusalResults(config=asdict(cfg), model=loaded.name, sites=[s.short for s in sites], steer_site=steer_site.short,
                          contrasts=contrasts, conditions=[], notes=notes, discovery_answers=records)


@dataclass(frozen=True)
class Method:
    """One way to steer: a unit direction at the steering site, and what to ablate on harmful prompts."""

    name: str
    kind: str
    """"sae" or "diff-of-means"."""
    contrast: str
    direction: Any
    ablation: RowEdit | None
    """Ablated on the held-out harmful prompts (None: not measured, to keep the study's time down)."""


def methods(opened: RunSAEs, results: RefusalResults, k: int) -> list[Method]:
    """Top-1 feature, top-k features together (weighted by their difference of means) and the
    difference-of-means direction, for each contrast found, at the steering site."""
    site = next(s for s in opened.saes if s.short == results.steer_site)
    sae = opened.saes[site]
    out = []
    for name, by_site in results.contrasts.items():
        found = by_site[site.short]
        top = found.features.head(k)
        first = int(top["feature"].iloc[0])
        out.append(Method(f"{name}: feature #{first}", "sae", name, features_direction(sae, [first]), None))
        out.append(Method(f"{name}: top-{len(top)} features", "sae", name,
                          features_direction(sae, top["feature"].tolist(), top["diff"].tolist()),
                          ablate_features(sae, top["feature"].tolist())))
        out.append(Method(f"{name}: difference of means", "diff-of-means", name, unit(found.direction),
                          ablate_direction(found.direction)))
    return out


@dataclass
class Condition:
    """Prompts generated under one edit (or none), and how to label the result."""

    name: str
    prompts: list[Prompt]
    edit: RowEdit | None
    keys: dict[str, Any]


def _summary(rows: list[dict], **keys: Any) -> dict:
    nll = [r["nll"] for r in rows if not math.isnan(r["nll"])]
    return {**keys, "n": len(rows), "refusal_rate": sum(r["refused"] for r in rows) / max(1, len(rows)),
            "perplexity": math.exp(sum(nll) / len(nll)) if nll else math.nan,
            "mean_tokens": sum(r["tokens"] for r in rows) / max(1, len(rows))}


def generate_and_measure(opened: RunSAEs, site: Site, conditions: list[Condition], cfg: StudyConfig,
                         judge: ClassifierJudge | None) -> list[list[dict]]:
    """Every condition's answers, generated together in shared batches, each judged and scored (perplexity under
    the unsteered model, length in tokens); one list of answer rows per condition."""
    loaded = opened.loaded
    jobs = [(c, p) for c in conditions for p in c.prompts]
    texts = generate_answers(loaded, [p.text for _, p in jobs], [c.edit for c, _ in jobs], site,
                             max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size, desc="held-out answers")
    verdicts = judge_all(texts, judge)
    nll = answer_nll(loaded, [p.text for _, p in jobs], texts, batch_size=cfg.batch_size)
    rows: dict[int, list[dict]] = {id(c): [] for c in conditions}
    for (c, p), text, v, n in zip(jobs, texts, verdicts, nll):
        rows[id(c)].append({"id": p.id, "prompt": p.text, "answer": text, "refused": v.refused, "reason": v.reason, "nll": n,
                            "tokens": len(loaded.tokenizer(text, add_special_tokens=False)["input_ids"])})
    return [rows[id(c)] for c in conditions]


def steer_and_measure(opened: RunSAEs, results: RefusalResults, cfg: StudyConfig, judge: ClassifierJudge | None,
                      log: Callable[[str], None] = _log) -> RefusalResults:
    """Baselines on both held-out halves; each method over the strengths on held-out harmless prompts; each
    method's ablation on held-out harmful prompts. Fills `results.conditions` and its answers."""
    sets = load_contrast_sets(cfg.harmful, cfg.harmless)
    harmful, harmless = sets.split("heldout")
    subset = random.Random(cfg.seed).sample(harmless, min(cfg.steer_prompts, len(harmless)))
    site = next(s for s in opened.saes if s.short == results.steer_site)
    scale = results.contrasts["prompt"][site.short].resid_norm
    steering = methods(opened, results, cfg.k)
    conditions = [Condition("baseline, harmful", harmful, None, {"set": "harmful", "method": "none", "alpha": 0.0}),
                  Condition("baseline, harmless", harmless, None, {"set": "harmless", "method": "none", "alpha": 0.0})]
    for m in steering:
        keys = {"method": m.name, "kind": m.kind, "contrast": m.contrast}
        conditions += [Condition(f"{m.name}, α={a:g}", subset, add(m.direction, a * scale),
                                 {"set": "harmless", **keys, "alpha": a, "alpha_abs": a * scale}) for a in cfg.alphas]
        if m.ablation is not None:
            conditions.append(Condition(f"{m.name}, ablated", harmful, m.ablation,
                                        {"set": "harmful", **keys, "alpha": None, "ablation": True}))
    n = sum(len(c.prompts) for c in conditions)
    log(f"steering at {site.short} (α × {scale:.1f}): {len(conditions)} conditions, {n} answers")
    start = time.perf_counter()
    answers = generate_and_measure(opened, site, conditions, cfg, judge)
    log(f"generated and measured {n} answers in {time.perf_counter() - start:.0f} s")
    summaries, records = [], []
    by_name = dict(zip((c.name for c in conditions), answers))
    for c, rows in zip(conditions, answers):
        summaries.append(_summary(rows, condition=c.name, **c.keys))
        records += [{"stage": "heldout", "condition": c.name, **c.keys, **r} for r in rows]
    chosen = {p.id for p in subset}
    base_subset = [r for r in by_name["baseline, harmless"] if r["id"] in chosen]
    for m in steering:
        summaries.append(_summary(base_subset, condition=f"{m.name}, α=0", set="harmless", method=m.name, kind=m.kind,
                                  contrast=m.contrast, alpha=0.0, alpha_abs=0.0))
    for c in summaries:
        log(f"  {c['condition']}: refusal rate {c['refusal_rate']:.0%}, perplexity {c['perplexity']:.1f}")
    results.conditions = summaries
    results.heldout_answers = records
    results.baseline = {"harmful": summaries[0]["refusal_rate"], "harmless": summaries[1]["refusal_rate"]}
    results.residual_scale = scale
    return results


def _judge(cfg: StudyConfig, device: Any) -> ClassifierJudge | None:
    return ClassifierJudge(cfg.judge_model, cfg.judge_label, device=device) if cfg.judge_model else None


def run_find(run: str | Path, cfg: StudyConfig, *, opened: RunSAEs | None = None, device: str = "auto") -> RefusalResults:
    """`sae-explorer refusal find`: rank features and save them (RUN/refusal/features.json, directions)."""
    load_contrast_sets(cfg.harmful, cfg.harmless)  # bad prompt files fail before the model loads
    opened = opened or open_run_saes(run, device=device)
    results = find_features(opened, cfg, _judge(cfg, opened.loaded.device))
    out = refusal_dir(run)
    write_results(out, results)
    write_directions(out, results)
    write_answers(out, results)
    write_refusal_annotations(run, opened.saes)
    return results


def run_steer(run: str | Path, cfg: StudyConfig, *, opened: RunSAEs | None = None, device: str = "auto") -> RefusalResults:
    """`sae-explorer refusal steer`: steer and measure with the features `find` saved, then write the report."""
    from .report import write_report

    out = refusal_dir(run)
    if not (out / FEATURES_FILE).is_file():
        raise UserError(f"no refusal features in {out}; run `sae-explorer refusal find {run}` first")
    opened = opened or open_run_saes(run, device=device)
    results = RefusalResults.load(out)
    if cfg.steer_site and cfg.steer_site != results.steer_site:
        results.steer_site = _steer_site([s for s in opened.saes if s.short in results.sites], cfg.steer_site,
                                         opened.loaded.layout.n_layers).short
    results = steer_and_measure(opened, results, cfg, _judge(cfg, opened.loaded.device))
    write_results(out, results)
    write_answers(out, results)
    write_refusal_annotations(run, opened.saes)
    write_report(out, results, run)
    return results


def run_study(run: str | Path, cfg: StudyConfig, *, device: str = "auto") -> RefusalResults:
    """The whole study with one model load: find, steer and measure, report."""
    load_contrast_sets(cfg.harmful, cfg.harmless)  # bad prompt files fail before the model loads
    return run_study_opened(run, cfg, open_run_saes(run, device=device))


def run_study_opened(run: str | Path, cfg: StudyConfig, opened: RunSAEs) -> RefusalResults:
    """`run_study` with the run's model and SAEs already loaded."""
    start = time.perf_counter()
    run_find(run, cfg, opened=opened)
    results = run_steer(run, cfg, opened=opened)
    _log(f"refusal study done in {(time.perf_counter() - start) / 60:.1f} min")
    return results
