"""The options of `sae-explorer explain`: one dataclass that is also its CLI and its config-file schema."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ..errors import UserError
from ..options import device_option, option


@dataclass
class ExplainConfig:
    """What to explain, with which models, and how much of each feature to show and score."""

    saes: str | None = option(None, "SAEs to explain, e.g. L14R,L2R (default: every SAE of the run)")
    features: str = option(
        "20", "which features: N per SAE spread evenly over firing density (e.g. 20; among features that fired 8+ times), ids (12,40 or "
        "L14R:12,L2R:7), or all"
    )
    explainer: str | None = option(
        None, "explainer model: HF id, local folder or .gguf (default: the embedded SmolLM2-135M-Instruct); with "
        "--explainer-url, the model name the server serves (default: its first)"
    )
    explainer_url: str | None = option(
        None, "an OpenAI-compatible chat-completions server to explain with, e.g. http://127.0.0.1:8000/v1 (vLLM, "
        "llama.cpp's server, Ollama); an API key is read from SAE_EXPLORER_API_KEY or OPENAI_API_KEY (default: none: a local model)"
    )
    scorer: str | None = option(
        None, "scorer model, as --explainer (default: the explainer); with --explainer-url and no --scorer-url, a model "
        "that same server serves"
    )
    scorer_url: str | None = option(None, "a chat-completions server to score with, as --explainer-url (default: the explainer's)")
    explain_examples: int = option(10, "contexts the explainer sees per feature: half top examples, half quantile samples")
    explain_window: int = option(12, "tokens shown on each side of a context's peak to the explainer")
    score_examples: int = option(8, "held-out activating contexts scored per feature, from every quantile interval (and as many non-activating ones)")
    score_window: int = option(8, "tokens on each side of a scored context's peak")
    max_new_tokens: int = option(40, "longest explanation, in tokens")
    batch_size: int = option(8, "features per batch: chats generated or scored together by a local model, sent together to a server")
    concurrency: int = option(8, "requests in flight to a chat-completions server")
    timeout: float = option(120.0, "seconds to wait for a server's reply before retrying")
    pool_contexts: int = option(64, "held-out contexts run through the model to find non-activating windows (4 windows each)")
    embed: bool = option(True, "compute the embedding score and embed the explanations for search by meaning (needs the sentence-embedding model)")
    overwrite: bool = option(False, "explain again features that this explainer and scorer have already explained")
    seed: int = option(0, "random seed (which non-activating windows, fuzzing marks, shuffled explanations)")
    device: str = device_option()

    def __post_init__(self) -> None:
        for name in ("explain_examples", "score_examples", "max_new_tokens", "batch_size", "concurrency", "pool_contexts"):
            if getattr(self, name) < 1:
                raise UserError(f"explain option {name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        for name in ("explain_window", "score_window"):
            if getattr(self, name) < 0:
                raise UserError(f"explain option {name.replace('_', '-')} must not be negative, got {getattr(self, name)}")
        if self.timeout <= 0:
            raise UserError(f"explain option timeout must be positive, got {self.timeout}")

    def fingerprint(self) -> dict[str, Any]:
        """The options that change what is written: a resumed job must have the same."""
        ignore = {"saes", "features", "batch_size", "concurrency", "timeout", "overwrite", "device", "explainer", "explainer_url",
                  "scorer", "scorer_url"}
        return {k: v for k, v in asdict(self).items() if k not in ignore}
