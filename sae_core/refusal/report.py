"""The refusal study's report: Markdown (tables, examples) and HTML (the same plus plotly charts of refusal
rate, perplexity and answer length against steering strength, and of the ablations)."""

from __future__ import annotations

import html
import math
from pathlib import Path

import pandas as pd
import plotly.express as px
import plotly.graph_objects as go

from ..evaluation.metrics_table import markdown_table
from ..io import atomic_path
from .judge import OPENING_CHARS, is_repetitive
from .results import REPORT_HTML, REPORT_MD, RefusalResults, best_conditions


def repetitive_rates(results: RefusalResults) -> dict[str, float]:
    """Condition → the share of its answers that are repetitive (degenerate) text."""
    flags: dict[str, list[bool]] = {}
    for row in results.heldout_answers:
        flags.setdefault(row["condition"], []).append(is_repetitive(row["answer"]))
    rates = {name: sum(f) / len(f) for name, f in flags.items()}
    for c in results.conditions:  # the α = 0 rows of each method are the plain model's answers
        if c.get("alpha") == 0 and c["condition"] not in rates:
            rates[c["condition"]] = rates.get("baseline, harmless", math.nan)
    return rates


def steering_table(results: RefusalResults) -> pd.DataFrame:
    """Steering on held-out harmless prompts: one row per method and strength (α = 0 is the plain model)."""
    rows = pd.DataFrame([c for c in results.conditions if c.get("set") == "harmless" and c.get("method") not in (None, "none")])
    if not len(rows):
        return rows
    rows["repetitive_rate"] = rows["condition"].map(repetitive_rates(results))
    return rows.sort_values(["method", "alpha"])


def best_steering(results: RefusalResults) -> pd.DataFrame:
    """Per method, the strength with the highest refusal rate on harmless prompts (the smallest such α), with
    its perplexity and answer length next to the unsteered ones."""
    table = steering_table(results)
    winners = best_conditions(table.to_dict("records"))
    out = []
    for method, rows in table.groupby("method", sort=False):
        base, best = rows[rows["alpha"] == 0].iloc[0], winners[method]
        out.append({"method": method, "kind": best["kind"], "contrast": best["contrast"], "alpha": best["alpha"],
                    "alpha_abs": best["alpha_abs"], "refusal_rate": best["refusal_rate"], "base_refusal_rate": base["refusal_rate"],
                    "repetitive_rate": best["repetitive_rate"],
                    "perplexity": best["perplexity"], "base_perplexity": base["perplexity"],
                    "mean_tokens": best["mean_tokens"], "base_mean_tokens": base["mean_tokens"]})
    return pd.DataFrame(out)


def ablation_table(results: RefusalResults) -> pd.DataFrame:
    """Ablations on held-out harmful prompts, next to the unablated baseline."""
    rows = pd.DataFrame([c for c in results.conditions if c.get("ablation")])
    if len(rows):
        rows["repetitive_rate"] = rows["condition"].map(repetitive_rates(results))
    return rows


def _pct(x: float) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.0%}"


def _num(x: float, fmt: str = "{:.1f}") -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else fmt.format(x)


def figures(results: RefusalResults) -> list[go.Figure]:
    """Refusal rate, perplexity and answer length against α per method; ablation refusal rates."""
    table = steering_table(results)
    figs = []
    if len(table):
        for column, title in (("refusal_rate", "refusal rate on held-out harmless prompts"),
                              ("perplexity", "perplexity of the answer under the unsteered model"),
                              ("mean_tokens", "answer length (tokens)")):
            fig = px.line(table, x="alpha", y=column, color="method", markers=True, title=title,
                          labels={"alpha": "α (× median residual norm at the steering site)", column: column.replace("_", " ")})
            if column == "refusal_rate":
                fig.update_yaxes(range=[0, 1], tickformat=".0%")
            if column == "perplexity":
                fig.update_yaxes(type="log")
            figs.append(fig)
    ablations = ablation_table(results)
    if len(ablations):
        bars = pd.concat([pd.DataFrame([{"condition": "no ablation", "refusal_rate": results.baseline.get("harmful", math.nan)}]),
                          ablations[["condition", "refusal_rate"]]])
        fig = px.bar(bars, x="condition", y="refusal_rate", title="refusal rate on held-out harmful prompts, features ablated")
        fig.update_yaxes(range=[0, 1], tickformat=".0%")
        figs.append(fig)
    return figs


def _examples(results: RefusalResults, best: pd.DataFrame, n: int = 3) -> list[tuple[str, list[dict]]]:
    by_condition: dict[str, list[dict]] = {}
    for row in results.heldout_answers:
        by_condition.setdefault(row["condition"], []).append(row)
    out = []
    for row in best.itertuples():
        name = f"{row.method}, α={row.alpha:g}"
        answers = by_condition.get(name, [])
        out.append((name, sorted(answers, key=lambda a: not a["refused"])[:n]))
    refusals = [a for a in by_condition.get("baseline, harmful", []) if a["refused"]][:n]
    compliances = [a for a in by_condition.get("baseline, harmful", []) if not a["refused"]][:n]
    return [("baseline, harmful (refused)", refusals), ("baseline, harmful (complied)", compliances), *out]


def _feature_rows(results: RefusalResults, run: str | Path | None, n: int = 10) -> dict[str, tuple[list[str], list[list[str]]]]:
    labels = _labels(results, run)
    out = {}
    for name, by_site in results.contrasts.items():
        c = by_site[results.steer_site]
        top = c.features.head(n)
        header = ["rank", "feature", "Δ mean", "Cohen's d", "rank by d", "fires (a / b)", "cos with diff-of-means", "label"]
        rows = [[str(i + 1), f"#{int(r.feature)}", f"{r.diff:.3f}", f"{r.effect:.2f}", str(int(r.rank_by_effect)),
                 f"{r.fires_a:.0%} / {r.fires_b:.0%}", f"{r.cos_direction:+.3f}", labels.get((name, int(r.feature)), "")]
                for i, r in enumerate(top.itertuples())]
        out[name] = (header, rows)
    return out


def _labels(results: RefusalResults, run: str | Path | None) -> dict[tuple[str, int], str]:
    if run is None:
        return {}
    try:
        from ..features.reader import FeatureStore
        from ..features.schema import DB_FILE

        with FeatureStore(Path(run) / DB_FILE) as store:
            return {(name, f): label for name, by_site in results.contrasts.items()
                    for f, label in store.labels(results.steer_site, by_site[results.steer_site].features["feature"].head(10).tolist()).items()}
    except Exception:  # no feature file, or an older one: the report goes on without labels
        return {}


def _baseline_perplexity(results: RefusalResults) -> float:
    return next((c["perplexity"] for c in results.conditions if c["condition"] == "baseline, harmful"), math.nan)


def markdown(results: RefusalResults, run: str | Path | None = None) -> str:
    """The report as Markdown."""
    cfg = results.config
    lines = [f"# Refusal steering study — {results.model}", "",
             f"Searched SAEs: {', '.join(results.sites)}; steering at **{results.steer_site}**, strengths α in units of "
             f"the median residual norm there ({_num(results.residual_scale, '{:.2f}')}). Greedy answers of at most "
             f"{cfg['max_new_tokens']} tokens; the phrase judge reads each answer's first sentence (≤ {OPENING_CHARS} "
             f"characters){'; judge model ' + cfg['judge_model'] if cfg.get('judge_model') else ''}. Perplexity: exp of "
             "the mean negative log-likelihood of the answer tokens under the unsteered model, given the prompt. "
             "Repetitive: answers where more than half of the word 3-grams are repeats (degenerate text the judge may "
             "still count as a refusal).", ""]
    if results.notes:
        lines += [f"- {note}" for note in results.notes] + [""]
    lines += ["## Baseline refusal rates", "",
              markdown_table(["set", "refusal rate"], [[f"held-out {k}", _pct(v)] for k, v in results.baseline.items()]), ""]
    lines += ["## Refusal features at " + results.steer_site, "",
              "Set a is harmful prompts (prompt contrast) or refusing answers (answer contrast); set b the harmless "
              "prompts or complying answers.", ""]
    for name, (header, rows) in _feature_rows(results, run).items():
        lines += [f"### {name} contrast", "", markdown_table(header, rows), ""]
    best = best_steering(results)
    if len(best):
        lines += ["## Steering harmless prompts toward refusal", "",
                  f"{int(steering_table(results)['n'].max())} held-out harmless prompts per strength; the best strength per method:", "",
                  markdown_table(["method", "best α", "refusal rate (α=0 → best)", "repetitive answers at best α",
                                  "perplexity (α=0 → best)", "answer tokens (α=0 → best)"],
                                 [[r.method, f"{r.alpha:g} (|Δx| = {r.alpha_abs:.1f})", f"{_pct(r.base_refusal_rate)} → {_pct(r.refusal_rate)}",
                                   _pct(r.repetitive_rate),
                                   f"{_num(r.base_perplexity)} → {_num(r.perplexity)}", f"{_num(r.base_mean_tokens)} → {_num(r.mean_tokens)}"]
                                  for r in best.itertuples()]), "",
                  "All strengths:", "",
                  markdown_table(["method", "α", "refusal rate", "repetitive", "perplexity", "answer tokens"],
                                 [[r.method, f"{r.alpha:g}", _pct(r.refusal_rate), _pct(r.repetitive_rate), _num(r.perplexity),
                                   _num(r.mean_tokens)]
                                  for r in steering_table(results).itertuples()]), ""]
    ablations = ablation_table(results)
    if len(ablations):
        lines += ["## Ablating the features on held-out harmful prompts", "",
                  markdown_table(["condition", "refusal rate", "repetitive", "perplexity"],
                                 [["no ablation", _pct(results.baseline.get("harmful")),
                                   _pct(repetitive_rates(results).get("baseline, harmful", math.nan)), _num(_baseline_perplexity(results))]]
                                 + [[r.condition, _pct(r.refusal_rate), _pct(r.repetitive_rate), _num(r.perplexity)]
                                    for r in ablations.itertuples()]), ""]
    lines += ["## Example answers", ""]
    for name, answers in _examples(results, best):
        lines += [f"**{name}**", ""]
        lines += [f"- *{a['prompt']}* → {'**refused**' if a['refused'] else 'answered'}: {a['answer'][:300]!r}" for a in answers]
        lines += [""]
    return "\n".join(lines)


def write_report(folder: Path, results: RefusalResults, run: str | Path | None = None) -> tuple[Path, Path]:
    """report.md and report.html (charts inline, so it opens offline), each written atomically."""
    text = markdown(results, run)
    md_path, html_path = Path(folder) / REPORT_MD, Path(folder) / REPORT_HTML
    with atomic_path(md_path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    charts = "".join(fig.to_html(full_html=False, include_plotlyjs=i == 0) for i, fig in enumerate(figures(results)))
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>Refusal study — {html.escape(results.model)}</title></head>"
            f"<body style='font-family:sans-serif;max-width:1100px;margin:auto'>{charts}"
            f"<pre style='white-space:pre-wrap'>{html.escape(text)}</pre></body></html>")
    with atomic_path(html_path) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return md_path, html_path
