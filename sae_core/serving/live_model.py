"""What the app's live pages ask of a run's model, as calls that take and return plain values: the interface the
model worker process serves (every argument and answer crosses the process boundary by value)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor

from ..circuits import SiteMeans, circuit_metric, keep_all_but
from ..circuits.graph import CircuitOptions, find_circuit
from ..circuits.means import run_means
from ..interventions.attribution import Target, ablate, attribute, token_id, top_predictions
from ..interventions.prompt_activations import PromptTokens, prompt_activations, tokenize_prompt
from ..interventions.steering import FeatureEdit, generate
from ..model.sites import Site
from ..runs.open_run import RunSAEs, open_run_saes
from ..text.tokens import decode_each


class LiveModel:
    """A run's model and SAEs behind the questions the live pages ask; SAEs are named by their short names."""

    def __init__(self, opened: RunSAEs):
        self.opened = opened
        self._mean_cache: dict[tuple[int, tuple[str, ...]], dict[Site, SiteMeans]] = {}

    @classmethod
    def open(cls, run: str | Path) -> LiveModel:
        """Load the run's model and SAEs (a `UserError` naming the problem when they cannot be)."""
        return cls(open_run_saes(run, log=lambda message: None))

    def _saes(self, shorts: tuple[str, ...] | list[str]):
        by_short = {site.short: site for site in self.opened.saes}
        return {by_short[s]: self.opened.saes[by_short[s]] for s in shorts}

    def sites(self) -> list[Site]:
        """The run's SAE sites, in forward-pass order."""
        return list(self.opened.saes)

    def tokenize(self, text: str, chat: bool, max_tokens: int) -> PromptTokens:
        """The prompt as the model sees it (see `tokenize_prompt`)."""
        return tokenize_prompt(self.opened.loaded, text, chat=chat, max_tokens=max_tokens)

    def decode(self, ids: list[int]) -> list[str]:
        """Each token id as its own text."""
        return decode_each(self.opened.loaded.tokenizer, ids)

    def token_id(self, text: str) -> int:
        """The id of one token given as text or `#id` (see `attribution.token_id`)."""
        return token_id(self.opened.loaded.tokenizer, text)

    def activations(self, prompt: PromptTokens, shorts: tuple[str, ...]) -> dict[str, Tensor]:
        """`{short: (T, d_sae)}` activations of the SAEs `shorts` on the prompt."""
        acts = prompt_activations(self.opened.loaded, self._saes(shorts), prompt)
        return {site.short: a for site, a in acts.items()}

    def predictions(self, prompt: PromptTokens, position: int) -> list[tuple[int, float]]:
        """The model's most likely next tokens after `position`, with probabilities."""
        return top_predictions(self.opened.loaded, prompt, position)

    def attribute(self, prompt: PromptTokens, target: Target, shorts: tuple[str, ...], top: int) -> tuple[float, dict[str, list]]:
        """The target's value and the `top` features at `shorts` by activation × gradient, as the columns of
        `attribution.attribute`'s table (a DataFrame would not cross: see `model_worker.read_message`)."""
        value, table = attribute(self.opened.loaded, self._saes(shorts), prompt, target, top=top)
        return value, table.to_dict("list")

    def ablate(self, prompt: PromptTokens, target: Target, shorts: tuple[str, ...],
               features: list[tuple[str, int, int]]) -> tuple[float, float]:
        """The target before and after zeroing `(short, position, feature)` activations."""
        saes = self._saes(shorts)
        by_short = {site.short: site for site in saes}
        return ablate(self.opened.loaded, saes, prompt, target, [(by_short[s], p, f) for s, p, f in features])

    def circuit(self, prompt: PromptTokens, target: Target, shorts: tuple[str, ...], settings: dict[str, Any]) -> dict[str, Any]:
        """The sparse feature circuit of `target` over the SAEs `shorts` as a JSON-ready graph (`circuits.graph`);
        `settings` are `CircuitOptions` fields. Nodes carry no labels: the app adds them from the feature file."""
        options = CircuitOptions(**settings)
        saes = self._saes(shorts)
        return find_circuit(self.opened.loaded, saes, prompt, target, options, means=self._means(shorts, options),
                            log=lambda message: None)

    def without_nodes(self, prompt: PromptTokens, target: Target, shorts: tuple[str, ...], settings: dict[str, Any],
                      removed: list[tuple[str, int, int]]) -> tuple[float, float]:
        """The target with every node, then without the `(short, position, feature)` nodes (feature -1: the error
        term), ablated as `settings` say."""
        options = CircuitOptions(**settings)
        saes = self._saes(shorts)
        by_short = {site.short: site for site in saes}
        means = self._means(shorts, options)
        before = circuit_metric(self.opened.loaded, saes, prompt, target, keep_all_but(saes, len(prompt.ids), []), means)
        keep = keep_all_but(saes, len(prompt.ids), [(by_short[s], p, f) for s, p, f in removed])
        return before, circuit_metric(self.opened.loaded, saes, prompt, target, keep, means)

    def _means(self, shorts: tuple[str, ...], options: CircuitOptions) -> dict[Site, SiteMeans] | None:
        """Mean ablation values of the SAEs `shorts` over the run's held-out text, kept for the next call."""
        if options.ablate_to != "mean":
            return None
        key = (options.mean_tokens, tuple(sorted(shorts)))
        if key not in self._mean_cache:
            self._mean_cache[key] = run_means(self.opened, self._saes(shorts), options.mean_tokens)
        return self._mean_cache[key]

    def generate(self, message: str, edits: list[FeatureEdit], max_new_tokens: int, chat: bool) -> str:
        """A greedy answer with the feature edits applied (see `steering.generate`)."""
        return generate(self.opened.loaded, self.opened.saes, message, edits, max_new_tokens=max_new_tokens, chat=chat)


CALLS = frozenset(name for name in vars(LiveModel) if not name.startswith("_") and name != "open")
"""The methods a worker answers."""
