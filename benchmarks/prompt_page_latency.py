"""Prompt page latency: from submitting a 64-token prompt at 3 sites to the rendered heatmaps, model already cached.

Runs the real page (pages/3_Prompt.py) with Streamlit's AppTest, so it measures everything the server does
for a submit: tokenizing, the model forward to the deepest site, encoding with the 3 SAEs, the feature-file
label queries, and building the heatmap, shading and tables. The browser's own drawing is not included.
Each prompt is new (a different 64-token window of held-out text), so the page's prompt cache never hits.
Side by side it times the core work alone (`prompt_activations`) on the same prompts.

    python benchmarks/prompt_page_latency.py                     # runs/demo (its first 3 SAEs)
    python benchmarks/prompt_page_latency.py --run runs/other --prompts 30
    python benchmarks/prompt_page_latency.py --random-saes 16    # no run: random 16x SAEs at L14R, L14M, L14A
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from sae_core.interventions.prompt_activations import prompt_activations, tokenize_prompt
from sae_core.loading import save_sae
from sae_core.model.load import load_model
from sae_core.model.sites import parse_site
from sae_core.runs.import_saes import import_saes
from sae_core.runs.open_run import open_run_saes
from sae_core.saes import SAEConfig, create_sae
from sae_core.serving import ServeSettings
from sae_core.text.corpus import iter_documents

PAGE = Path(__file__).resolve().parents[1] / "pages" / "3_Prompt.py"


def prompts(tokenizer, n: int, length: int) -> list[str]:
    """`n` distinct texts of `length` tokens each (the tokenizer's BOS makes the page's count one more at most)."""
    texts = []
    for doc in iter_documents(None, "eval"):
        ids = tokenizer(doc.text or "", add_special_tokens=False)["input_ids"]
        for start in range(0, len(ids) - length, length):
            texts.append(tokenizer.decode(ids[start : start + length]))
            if len(texts) == n:
                return texts
    raise SystemExit(f"the held-out corpus has fewer than {n} windows of {length} tokens")


def random_run(expansion: int) -> Path:
    """A run of random TopK SAEs at L14R, L14M and L14A of the embedded model (no feature file)."""
    loaded = load_model(None)
    root = Path(tempfile.mkdtemp())
    folders = []
    for i, short in enumerate(["L14R", "L14M", "L14A"]):
        site = parse_site(short, loaded.layout.n_layers)
        cfg = SAEConfig(d_in=loaded.layout.d_model, d_sae=expansion * loaded.layout.d_model, architecture="topk", k=32,
                        hook_name=site.hook_name, model_name=loaded.name)
        g = torch.Generator().manual_seed(i)
        w_dec = torch.nn.functional.normalize(torch.randn(cfg.d_sae, cfg.d_in, generator=g), dim=-1)
        sae = create_sae(cfg).load_tensors({"W_enc": w_dec.T.contiguous(), "b_enc": torch.zeros(cfg.d_sae),
                                            "W_dec": w_dec, "b_dec": torch.zeros(cfg.d_in)})
        save_sae(sae, root / "published" / short)
        folders.append(root / "published" / short)
    return import_saes(folders, root / "run", loaded, model=None, log=lambda m: None).path


def percentiles(seconds: list[float]) -> tuple[float, float]:
    ms = sorted(s * 1000 for s in seconds)
    return statistics.median(ms), ms[min(len(ms) - 1, int(round(0.95 * (len(ms) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default="runs/demo", help="a run with at least 3 SAEs (default runs/demo)")
    parser.add_argument("--random-saes", type=int, metavar="EXPANSION",
                        help="ignore --run: random TopK SAEs of this expansion at L14R, L14M, L14A")
    parser.add_argument("--prompts", type=int, default=20, help="timed submits (each a new prompt)")
    parser.add_argument("--tokens", type=int, default=64, help="prompt length in tokens")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (the machine has 2 cores)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from streamlit.testing.v1 import AppTest

    run = random_run(args.random_saes) if args.random_saes else Path(args.run)
    opened = open_run_saes(run, log=lambda m: None)
    sites = list(opened.saes)[:3]
    if len(sites) < 3:
        raise SystemExit(f"{run} has {len(sites)} SAEs; the benchmark needs 3 (try --random-saes 16)")
    shorts = [s.short for s in sites]
    texts = prompts(opened.loaded.tokenizer, args.prompts + 1, args.tokens)
    print(f"run {run}: sites {', '.join(shorts)} (d_sae {', '.join(str(opened.saes[s].cfg.d_sae) for s in sites)}), "
          f"{args.prompts} prompts of {args.tokens} tokens, {args.threads} threads")

    # served as `sae-explorer app RUN` would, without the per-session rate and prompt caps that would cut the series short
    os.environ.update(ServeSettings(runs={run.name: str(run)}, jobs_per_minute=1_000_000,
                                    max_prompt_tokens=max(args.tokens, 512)).to_env())
    at = AppTest.from_file(str(PAGE), default_timeout=300)
    at.run()  # loads the model and SAEs into the page's resource cache
    at.multiselect[0].set_value(shorts)
    page, core = [], []
    for i, text in enumerate(texts):
        at.text_area[0].set_value(text)
        start = time.perf_counter()
        at.button[0].click().run()
        elapsed = time.perf_counter() - start
        if at.exception:
            raise SystemExit(f"the page failed: {at.exception[0].message}")
        prompt = tokenize_prompt(opened.loaded, text)
        start = time.perf_counter()
        prompt_activations(opened.loaded, {s: opened.saes[s] for s in sites}, prompt)
        if i > 0:  # the first submit also warms the feature file and plotly
            page.append(elapsed)
            core.append(time.perf_counter() - start)
    p50, p95 = percentiles(page)
    c50, c95 = percentiles(core)
    print(f"page, submit to rendered heatmaps: p50 {p50:.0f} ms, p95 {p95:.0f} ms (budget 1,500 ms)")
    print(f"core prompt_activations alone:     p50 {c50:.0f} ms, p95 {c95:.0f} ms")
    print(f"page / core (median of ratios): {statistics.median(p / c for p, c in zip(page, core)):.2f}x")


if __name__ == "__main__":
    main()
