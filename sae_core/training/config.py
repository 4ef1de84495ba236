"""The training configuration: one dataclass that is also the CLI and the config-file schema."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..options import corpus_option, device_option, model_option
from ..options import option as _opt

__all__ = ["TrainConfig"]


@dataclass
class TrainConfig:
    """Everything a training run needs. Field names are the config-file keys; `--flag-names` the CLI."""

    # What to train on
    model: str | None = model_option()
    sites: str = _opt("L15R", "comma-separated sites, e.g. L6R,L6M,L6A or blocks.6.hook_resid_post; also L*R, L0-5M, all; "
                      "L6T trains a transcoder (MLP input -> MLP output, --arch topk)")
    corpus: str | None = corpus_option()
    text_field: str | None = _opt(None, "column/key holding the text in .jsonl/.parquet/HF sources (default: text or messages)")
    eval_fraction: float = _opt(0.05, "fraction of documents held out for evaluation (sources without a split field)")
    context_size: int = _opt(128, "tokens per packed context")

    # The SAEs
    arch: str = _opt("topk", "SAE architecture: topk, batchtopk, jumprelu or standard (ReLU+L1)")
    k: int = _opt(32, "active latents per token (topk, batchtopk)")
    expansion: int = _opt(16, "d_sae = expansion x d_in")
    d_sae: int | None = _opt(None, "dictionary size (overrides --expansion)")
    tokens: int = _opt(2_000_000, "training tokens per SAE, e.g. 2M", count=True)
    batch_size: int = _opt(4096, "tokens per SAE optimiser step")
    lr: float | None = _opt(None, "Adam learning rate (default: 2e-4 / sqrt(d_sae / 16384), as Gao et al.)")
    lr_warmup_frac: float = _opt(0.02, "fraction of steps for linear learning-rate warm-up")
    lr_decay_frac: float = _opt(0.2, "fraction of final steps over which the learning rate decays linearly to 0")
    adam_betas: list = _opt([0.9, 0.999], "Adam betas")
    auxk_alpha: float = _opt(1 / 32, "weight of the AuxK loss against dead latents (topk, batchtopk)")
    dead_tokens: int = _opt(500_000, "a latent that has not fired for this many training tokens is dead (feeds AuxK)", count=True)
    l1_coefficient: float = _opt(5.0, "L1 sparsity coefficient (standard)")
    l0_coefficient: float | None = _opt(None, "L0 sparsity coefficient (jumprelu; default: the architecture's)")
    b_dec_init: str = _opt("geometric_median", "b_dec initialisation: geometric_median, mean or zeros")
    sae_dtype: str = _opt(
        "float32", "precision of the encoder matmul that picks the active latents: float32, bfloat16 or float16 "
        "(topk, batchtopk; a GPU speed-up: the picked values, decoder, losses and gradients stay float32)"
    )

    # Activations
    normalize: bool = _opt(True, "scale activations to mean norm sqrt(d_in) while training (folded into the saved weights)")
    outlier_factor: float = _opt(10.0, "drop tokens whose activation norm exceeds this x the median norm (attention sinks); 0 keeps all")
    lm_batch_size: int = _opt(8, "contexts per LM forward pass, or auto: as many as fit in half the free GPU memory", auto=True)
    lm_dtype: str = _opt("float32", "precision of the LM's weights: float32, bfloat16 or float16 (GPU; activations stay float32)")
    chunk_tokens: int = _opt(65_536, "tokens harvested and shuffled together before SAE steps", count=True)
    activation_cache: str | None = _opt(
        None, "train on the activations in this cache (written by `sae-explorer cache`) instead of running the model on the corpus"
    )

    # Evaluation (held-out split)
    eval: bool = _opt(True, "evaluate every SAE on held-out text after training")
    eval_tokens: int = _opt(65_536, "held-out tokens for reconstruction, L0 and dead/dense metrics", count=True)
    ce_tokens: int = _opt(16_384, "held-out tokens for CE-loss recovered and KL (costs 1 + 2 x sites LM passes)", count=True)

    # Bookkeeping
    out: str = _opt("runs/default", "output run folder")
    seed: int = _opt(0, "random seed (initialisation and shuffling)")
    checkpoint_every: int = _opt(262_144, "write a resumable checkpoint every this many tokens per SAE", count=True)
    device: str = device_option()
    parallel: str = _opt("data", "under torchrun: data (every rank trains every SAE on a slice of each batch) or sites (SAEs dealt across ranks)")
    threads: int | None = _opt(None, "CPU threads for torch (default: torch's choice)")
    overwrite: bool = _opt(False, "replace an output folder that holds a different or finished run")

    def resolved_lr(self, d_sae: int) -> float:
        """The learning rate: the given one, or the Gao et al. scaling rule for this width."""
        return self.lr if self.lr is not None else 2e-4 / (d_sae / 2**14) ** 0.5

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def fingerprint(self) -> dict[str, Any]:
        """The fields that define what is trained: two runs with equal fingerprints train the same SAEs."""
        ignore = {"out", "overwrite", "eval", "eval_tokens", "ce_tokens", "device", "threads", "checkpoint_every", "parallel"}
        return {k: v for k, v in self.to_dict().items() if k not in ignore}

