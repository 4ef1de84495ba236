"""Explanation and scoring throughput of the embedded SmolLM2-135M-Instruct on CPU, by batch size.

For each batch size, on the same features of a run: time spent building the explainer's prompts (reading the
feature file, splitting examples, rendering the chat) against generating the explanations, then the time to
score them (3 texts × 2 tasks × 2·score-examples chats per feature, plus the embedding score). Scoring also
runs side by side with a plain forward pass per chat (no shared prefix: the baseline) on the first features,
with the ratio. Prints features per minute for explaining, scoring and both.

    python benchmarks/explain_throughput.py runs/demo                       # 16 features, batch sizes 1 4 8 16
    python benchmarks/explain_throughput.py runs/demo --features 8 --batch-sizes 8
"""

from __future__ import annotations

import argparse
import time

import torch

from sae_core.features.reader import FeatureStore
from sae_core.interp.chat_models import LocalChatModel, render
from sae_core.interp.config import ExplainConfig
from sae_core.interp.explain import _non_activating_pool, _samples, shuffled_partner
from sae_core.interp.prompts import explainer_messages, parse_explanation
from sae_core.interp.score_features import ScoringItem, score_batch
from sae_core.interp.select import select_features
from sae_core.model.sentence_embedder import load_embedder
from sae_core.runs.open_run import open_run_saes


class PlainForward(LocalChatModel):
    """The baseline scorer: every chat run on its own from its first token (no shared prefix, batch of one)."""

    @torch.no_grad()
    def yes_probabilities(self, groups):
        out = []
        for group in groups:
            answers = []
            for messages in group:
                ids = self.loaded.tokenizer(render(self.loaded.tokenizer, messages), add_special_tokens=False)["input_ids"]
                p = self.loaded.model(input_ids=torch.tensor([ids], device=self.device), logits_to_keep=1).logits[0, -1].float().softmax(-1)
                yes, no = p[self._yes].sum(), p[self._no].sum()
                answers.append(float(yes / (yes + no)))
            out.append(answers)
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", nargs="?", default="runs/demo")
    parser.add_argument("--features", type=int, default=16, help="features to explain and score (spread over SAEs and density)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--baseline-features", type=int, default=2, help="features scored by the plain-forward baseline")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = ExplainConfig(device="cpu")
    store = FeatureStore(args.run)
    per_sae = max(1, -(-args.features // len(store.saes())))
    keys = select_features(store, None, str(per_sae))[0][: args.features]
    opened = open_run_saes(args.run, device="cpu", log=lambda m: None)
    embedder = load_embedder()
    start = time.perf_counter()
    pool = _non_activating_pool(store, opened, keys, cfg, log=lambda m: None)
    pool_s = time.perf_counter() - start
    print(f"{args.run}: {len(keys)} features of {len(store.saes())} SAEs; non-activating pool of {cfg.pool_contexts} contexts "
          f"built in {pool_s:.1f} s (once per job)")
    print(f"\n{'batch':>5} {'prompts s':>10} {'generate s':>11} {'gen share':>9} {'explain f/min':>14} {'score s':>8} "
          f"{'score f/min':>12} {'both f/min':>11}")
    explanations: dict = {}
    for batch_size in args.batch_sizes:
        model = LocalChatModel(opened.loaded, batch_size=batch_size)
        prompt_s = generate_s = score_s = 0.0
        for i in range(0, len(keys), batch_size):
            batch = keys[i : i + batch_size]
            t0 = time.perf_counter()
            chats = []
            for key in batch:
                samples, promoted, _ = _samples(store, key, cfg)
                chats.append(explainer_messages(samples.shown, promoted))
                [model._ids(c) for c in chats[-1:]]  # rendering and tokenizing belong to prompt building
            t1 = time.perf_counter()
            replies = model.generate(chats, cfg.max_new_tokens)
            t2 = time.perf_counter()
            prompt_s, generate_s = prompt_s + t1 - t0, generate_s + t2 - t1
            explanations.update({k: parse_explanation(r) for k, r in zip(batch, replies)})
        partner = shuffled_partner(sorted(explanations), 0)
        items = []
        for key in keys:
            samples, _, handle = _samples(store, key, cfg)
            quiet = pool.for_feature(*key, len(samples.held_out), avoid=samples.example_contexts)
            items.append(ScoringItem(key, {"explanation": explanations[key], "shuffled": explanations[partner[key]], "handle": handle},
                                     samples.held_out + quiet))
        t0 = time.perf_counter()
        for i in range(0, len(items), batch_size):
            score_batch(items[i : i + batch_size], model, embedder)
        score_s = time.perf_counter() - t0
        n = len(keys)
        explain_s = prompt_s + generate_s
        print(f"{batch_size:>5} {prompt_s:>10.1f} {generate_s:>11.1f} {generate_s / explain_s:>9.0%} {60 * n / explain_s:>14.1f} "
              f"{score_s:>8.1f} {60 * n / score_s:>12.1f} {60 * n / (explain_s + score_s):>11.1f}")
    base_items = items[: args.baseline_features]
    plain = PlainForward(opened.loaded, batch_size=1)
    t0 = time.perf_counter()
    plain_scores = [score_batch([it], plain, None) for it in base_items]
    plain_s = time.perf_counter() - t0
    shared = LocalChatModel(opened.loaded, batch_size=args.batch_sizes[-1])
    t0 = time.perf_counter()
    shared_scores = [score_batch([it], shared, None) for it in base_items]
    shared_s = time.perf_counter() - t0
    same = all(a[0]["scores"]["detection"] == b[0]["scores"]["detection"] or a[0]["scores"]["detection"] != a[0]["scores"]["detection"]
               for a, b in zip(plain_scores, shared_scores))
    print(f"\nscoring {len(base_items)} features, LLM part only: shared prefix {shared_s:.1f} s, plain forward per chat "
          f"{plain_s:.1f} s: {plain_s / shared_s:.2f}x faster (same detection scores: {same})")


if __name__ == "__main__":
    main()
