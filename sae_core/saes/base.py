"""What every architecture shares: the SAE config, the inference SAE and the training-SAE interface.

The inference `SAE` uses SAELens's parameterisation exactly — `W_enc (d_in, d_sae)`, `b_enc (d_sae,)`,
`W_dec (d_sae, d_in)`, `b_dec (d_in,)` (+ `threshold (d_sae,)` for JumpReLU) with
`pre_acts = (x - b_dec) @ W_enc + b_enc` — so saved folders load in SAELens unchanged.

A *transcoder* (`hook_name_out` set) reads one activation and writes another, as SAELens's `Transcoder`:
`W_dec (d_sae, d_out)`, `b_dec (d_out,)` and `pre_acts = x @ W_enc + b_enc` (b_dec lives in the output space).
Its training rows are the input and the target side by side, `(N, d_in + d_out)` (`split_rows`).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, NamedTuple

import torch
from torch import Tensor, nn

from ..errors import UserError
from .init import B_DEC_INITS, b_dec_from_data, random_unit_rows


@dataclass
class SAEConfig:
    """Shape, architecture and provenance of one SAE (the fields SAELens's cfg.json carries)."""

    architecture: str
    """"topk", "batchtopk" (training only; infers as "jumprelu"), "jumprelu" or "standard"."""
    d_in: int
    """Width of the activations the SAE reads (the model's d_model at the site)."""
    d_sae: int
    """Number of latents."""
    k: int | None = None
    """Active latents per token (topk), or the mean per token over a batch (batchtopk)."""
    hook_name: str = ""
    """Site the SAE reads, TransformerLens style, e.g. "blocks.6.hook_resid_post"."""
    model_name: str = ""
    """The model whose activations it was trained on."""
    context_size: int | None = None
    """Tokens per context in training."""
    dataset_path: str = ""
    """The training text source."""
    dtype: str = "float32"
    """Dtype of the weights."""
    metadata: dict[str, Any] = field(default_factory=dict)
    """Free-form extra, written into the "metadata" of SAELens's cfg.json."""
    hook_name_out: str = ""
    """A transcoder's output site, e.g. "blocks.6.hook_mlp_out"; empty for an SAE (it writes what it reads)."""
    d_out: int | None = None
    """A transcoder's output width (None: d_in)."""

    def __post_init__(self) -> None:
        for name in ("d_in", "d_sae", *(("d_out",) if self.d_out is not None else ())):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise UserError(f"SAE {name} must be a positive integer, got {value!r}")
        if self.d_out is not None and not self.hook_name_out:
            raise UserError("d_out is set but hook_name_out is not: a transcoder needs the site it writes")
        if self.architecture in ("topk", "batchtopk"):
            if isinstance(self.k, bool) or not isinstance(self.k, int) or not 0 < self.k <= self.d_sae:
                raise UserError(
                    f"a {self.architecture} SAE needs k between 1 and d_sae={self.d_sae}, got k={self.k!r}; set k"
                )

    @property
    def transcoder(self) -> bool:
        """Whether this is a transcoder (reads `hook_name`, writes `hook_name_out`)."""
        return bool(self.hook_name_out)

    @property
    def out_dim(self) -> int:
        """Width of what the decoder writes: d_out for a transcoder, d_in otherwise."""
        return self.d_out or self.d_in

    @property
    def row_width(self) -> int:
        """Width of one training row: the input, then (transcoders) the target beside it."""
        return self.d_in + self.out_dim if self.transcoder else self.d_in

    def split_rows(self, rows: Tensor) -> tuple[Tensor, Tensor]:
        """`(source, target)` of training rows `(..., row_width)`: what the SAE reads and what it reconstructs."""
        if rows.shape[-1] != self.row_width:
            raise ValueError(f"rows have width {rows.shape[-1]}, expected {self.row_width}")
        if not self.transcoder:
            return rows, rows
        return rows[..., : self.d_in], rows[..., self.d_in :]

    def replace(self, **changes: Any) -> SAEConfig:
        """A copy with some fields changed (metadata deep-copied, so the copies never share it)."""
        new = copy.deepcopy(self)
        for name, value in changes.items():
            setattr(new, name, value)
        new.__post_init__()
        return new


@dataclass
class SAETrainingOptions:
    """Architecture-specific training knobs, with defaults for activations scaled to mean norm sqrt(d_in)."""

    auxk_alpha: float = 1 / 32
    """Weight of the AuxK loss that lets dead latents model the residual (topk, batchtopk; Gao et al. 2024)."""
    auxk_k: int | None = None
    """Dead latents per token used by AuxK; None means d_in // 2 (Gao et al. 2024, appendix B.1)."""
    l1_coefficient: float = 5.0
    """Weight of the L1 sparsity penalty (standard; Anthropic's April 2024 update uses 5 at this scale)."""
    l1_warmup_frac: float = 0.05
    """Fraction of training over which the L1 weight rises linearly from 0 (standard)."""
    l0_coefficient: float = 1.0
    """Weight of the L0 penalty (jumprelu): SAELens's default, which at this scale trades a latent for one unit of squared error."""
    l0_warmup_frac: float = 0.05
    """Fraction of training over which the L0 weight rises linearly from 0 (jumprelu)."""
    jumprelu_bandwidth: float = 0.05
    """Width of the rectangle kernel of the threshold's pseudo-derivative (jumprelu; SAELens's default)."""
    jumprelu_init_threshold: float = 0.01
    """Initial threshold of every latent (jumprelu; SAELens's default)."""
    topk_threshold_lr: float = 0.01
    """EMA rate of the batchtopk inference threshold toward the smallest selected activation (SAELens's default)."""
    b_dec_init: Literal["geometric_median", "mean", "zeros"] = "geometric_median"
    """How `init_from_data` sets the decoder bias."""

    def resolved_auxk_k(self, d_in: int) -> int:
        """Dead latents per token AuxK uses: `auxk_k`, or d_in // 2 when unset."""
        return self.auxk_k or d_in // 2

    def __post_init__(self) -> None:
        for name in ("auxk_alpha", "l1_coefficient", "l0_coefficient", "jumprelu_init_threshold"):
            if getattr(self, name) < 0:
                raise UserError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("l1_warmup_frac", "l0_warmup_frac", "topk_threshold_lr"):
            if not 0 <= getattr(self, name) <= 1:
                raise UserError(f"{name} must lie in [0, 1], got {getattr(self, name)}")
        if self.jumprelu_bandwidth <= 0:
            raise UserError(f"jumprelu_bandwidth must be > 0, got {self.jumprelu_bandwidth}")
        if self.auxk_k is not None and self.auxk_k <= 0:
            raise UserError(f"auxk_k must be a positive integer or None (d_in // 2), got {self.auxk_k}")
        if self.b_dec_init not in B_DEC_INITS:
            raise UserError(f"unknown b_dec_init {self.b_dec_init!r}: use one of {', '.join(B_DEC_INITS)}")


class TrainOutput(NamedTuple):
    """What one training forward pass returns to the trainer."""

    x_hat: Tensor
    """(N, d_in) reconstruction of the (normalised) input."""
    losses: dict[str, Tensor]
    """Named scalar loss terms, already weighted: the trainer sums them for backward."""
    fired: Tensor
    """(d_sae,) bool: latents active on at least one token of the batch (dead-latent bookkeeping)."""
    l0: Tensor
    """Scalar: mean number of active latents per token."""


class SAE(nn.Module):
    """Inference SAE in SAELens's parameterisation; subclasses define the activation function."""

    architecture: ClassVar[str] = ""

    def __init__(self, cfg: SAEConfig):
        super().__init__()
        self.cfg = cfg
        for name, shape in self.tensor_shapes(cfg).items():
            self.register_parameter(name, nn.Parameter(torch.zeros(shape), requires_grad=False))

    @classmethod
    def tensor_shapes(cls, cfg: SAEConfig) -> dict[str, tuple[int, ...]]:
        """Name and shape of every tensor of this architecture (SAELens's names)."""
        return {"W_enc": (cfg.d_in, cfg.d_sae), "b_enc": (cfg.d_sae,), "W_dec": (cfg.d_sae, cfg.out_dim), "b_dec": (cfg.out_dim,)}

    def pre_acts(self, x: Tensor) -> Tensor:
        """`(..., d_in) -> (..., d_sae)`: `(x - b_dec) @ W_enc + b_enc`, computed as one addmm with b_dec folded in
        (a transcoder's `x @ W_enc + b_enc`)."""
        x = x.to(self.W_enc.dtype)
        flat = x.reshape(-1, x.shape[-1])
        bias = self.b_enc if self.cfg.transcoder else self.b_enc - self.b_dec @ self.W_enc
        pre = torch.addmm(bias, flat, self.W_enc)  # ~15% faster than sub + matmul + add
        return pre.view(*x.shape[:-1], pre.shape[-1])

    def activation(self, pre: Tensor) -> Tensor:
        """The architecture's activation function on pre-activations `(..., d_sae)`."""
        raise NotImplementedError

    def encode(self, x: Tensor) -> Tensor:
        """`(..., d_in) -> (..., d_sae)` dense latent activations."""
        return self.activation(self.pre_acts(x))

    def decode(self, acts: Tensor) -> Tensor:
        """`(..., d_sae) -> (..., d_in)` (a transcoder's `d_out`): `acts @ W_dec + b_dec`."""
        return acts @ self.W_dec + self.b_dec

    def forward(self, x: Tensor) -> Tensor:
        """`(..., d_in) -> (..., d_in)` reconstruction (a transcoder's prediction of its output)."""
        return self.decode(self.encode(x))

    def state_tensors(self) -> dict[str, Tensor]:
        """The tensors a file holds, by SAELens name (views of the parameters)."""
        return {name: getattr(self, name).detach() for name in self.tensor_shapes(self.cfg)}

    def load_tensors(self, tensors: dict[str, Tensor]) -> SAE:
        """Copy `tensors` (SAELens names, matching shapes) into the parameters; returns self."""
        expected = self.tensor_shapes(self.cfg)
        missing = sorted(set(expected) - set(tensors))
        if missing:
            raise ValueError(f"missing tensors {', '.join(missing)} for a {self.architecture} SAE")
        with torch.no_grad():
            for name, shape in expected.items():
                value = tensors[name]
                if tuple(value.shape) != shape:
                    raise ValueError(f"tensor {name} has shape {tuple(value.shape)}, expected {shape}")
                getattr(self, name).copy_(value)
        return self

    def extra_repr(self) -> str:
        k = f", k={self.cfg.k}" if self.cfg.k is not None else ""
        out = f", hook_name_out={self.cfg.hook_name_out!r}" if self.cfg.transcoder else ""
        return f"d_in={self.cfg.d_in}, d_sae={self.cfg.d_sae}{k}, hook_name={self.cfg.hook_name!r}{out}"


def warmup(step_frac: float, warmup_frac: float) -> float:
    """Linear warm-up factor in [0, 1]: `step_frac / warmup_frac`, 1 once warmed up (or when there is no warm-up)."""
    return 1.0 if warmup_frac <= 0 else min(1.0, max(0.0, step_frac) / warmup_frac)


class BatchScope:
    """The optimiser's batch as one process sees it: all of it. Data-parallel training swaps in
    `parallel.RankBatch`, whose methods reduce across ranks, so that losses, thresholds and dead-latent
    counts are those of the whole batch while each rank holds only its slice of the rows.
    """

    world = 1

    def shard(self, x: Tensor) -> Tensor:
        """This process's rows of a batch `x (batch_size, d_in)`."""
        return x

    def rows(self, n: int) -> int:
        """Rows in the whole batch when this process holds `n` of them."""
        return n

    def sum(self, t: Tensor) -> Tensor:
        """`t` summed over the processes sharing the batch (no gradient flows through it)."""
        return t

    def mean_rows(self, x: Tensor) -> Tensor:
        """The mean row of the whole batch."""
        return x.mean(0)

    def min(self, t: Tensor) -> Tensor:
        return t

    def any(self, mask: Tensor) -> Tensor:
        return mask

    def kth_largest(self, values: Tensor, k: int) -> Tensor | None:
        """The k-th largest of the union of every process's `values`; None when `values` already are the whole batch's."""
        return None

    def reduce_grads(self, params: Iterable[Tensor]) -> None:
        """Sum the parameters' gradients over the processes (each holds its rows' share of the loss)."""


LOCAL_BATCH = BatchScope()


class TrainingSAE(nn.Module):
    """An SAE being trained on normalised activations; subclasses add the forward pass and their losses.

    Decoder rows are kept unit-norm by the `before_optimizer_step` / `after_optimizer_step` pair. The encoder
    parameter is `W_enc_T (d_sae, d_in)`; `W_enc` is its `(d_in, d_sae)` view, as SAELens and the files name it.
    """

    inference_cls: ClassVar[type[SAE]]
    batch: BatchScope = LOCAL_BATCH
    """How this process's rows relate to the optimiser's batch (set per instance for data-parallel training)."""
    select_dtype: torch.dtype | None = None
    """TopK / BatchTopK: precision of the encoder matmul that chooses the latents (None: float32); the chosen
    values, the decoder, the losses and every gradient stay float32."""

    def __init__(self, cfg: SAEConfig, train_cfg: SAETrainingOptions, generator: torch.Generator | None = None):
        super().__init__()
        self.cfg = cfg
        self.train_cfg = train_cfg
        W_dec = random_unit_rows(cfg.d_sae, cfg.out_dim, generator)
        self.W_dec = nn.Parameter(W_dec)
        # Stored as W_enc_T (d_sae, d_in), one row per latent like sparsify's encoder.weight: the sparse encoder
        # gradient is a set of rows, and Adam's fused kernel wants contiguous parameters. `W_enc` is its view.
        W_enc_T = W_dec.clone() if cfg.out_dim == cfg.d_in else random_unit_rows(cfg.d_sae, cfg.d_in, generator)
        self.W_enc_T = nn.Parameter(W_enc_T)
        self.b_enc = nn.Parameter(torch.zeros(cfg.d_sae))
        self.b_dec = nn.Parameter(torch.zeros(cfg.out_dim))
        if cfg.transcoder:
            # the inputs' centre, subtracted before the encoder: fixed (set from data), folded into b_enc when saved
            self.register_buffer("input_centre", torch.zeros(cfg.d_in))

    @property
    def W_enc(self) -> Tensor:
        """The encoder in SAELens's shape `(d_in, d_sae)` (a transposed view of the `W_enc_T` parameter)."""
        return self.W_enc_T.T

    @property
    def encoder_offset(self) -> Tensor:
        """What the encoder subtracts from its input: `b_dec` (an SAE), or a transcoder's fixed `input_centre` (its b_dec
        is an output bias)."""
        return self.input_centre if self.cfg.transcoder else self.b_dec

    @torch.no_grad()
    def init_from_data(self, x: Tensor) -> None:
        """Set b_dec from a sample `x (N, row_width)` of normalised training rows (per `b_dec_init`, from the targets).

        A transcoder's encoder cannot subtract b_dec (it lives in the output space): it subtracts the inputs' centre
        (`input_centre`, the same estimate on the inputs), fixed for the whole run. An MLP's input after its norm is far
        from centred; left to b_enc, the centre drifts with the encoder's updates and most latents die (70% at L14T of
        the demo model, against 0% with the centre fixed: docs/circuits.md#transcoders).
        """
        source, target = self.cfg.split_rows(x)
        self.b_dec.copy_(b_dec_from_data(target.to(self.b_dec), self.train_cfg.b_dec_init))
        if self.cfg.transcoder:
            self.input_centre.copy_(b_dec_from_data(source.to(self.b_dec), self.train_cfg.b_dec_init))

    def training_forward(self, x: Tensor, *, dead_mask: Tensor | None, step_frac: float) -> TrainOutput:
        """Reconstruct `x (N, d_in)` and compute the weighted losses; `step_frac` in [0, 1] drives warm-ups."""
        raise NotImplementedError

    @torch.no_grad()
    def before_optimizer_step(self) -> None:
        """Remove the gradient component parallel to each decoder row (it would only change the row's norm)."""
        grad = self.W_dec.grad
        if grad is not None:
            # row-wise dot products as a batched matmul: 3x faster on CPU than vecdot or (grad * W).sum(1)
            parallel = torch.bmm(grad.unsqueeze(1), self.W_dec.unsqueeze(2))
            grad.addcmul_(parallel.view(-1, 1), self.W_dec, value=-1)

    @torch.no_grad()
    def after_optimizer_step(self) -> None:
        """Renormalise the decoder rows to unit norm."""
        self.W_dec /= self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)

    def to_inference(self, scale: float, scale_out: float | None = None) -> SAE:
        """The canonical SAE in ORIGINAL activation units, for training inputs `x_n = scale * x` (and a transcoder's
        targets `y_n = scale_out * y`)."""
        return self._build_inference(self.inference_cls, self.cfg, scale, {}, scale_out)

    @torch.no_grad()
    def _build_inference(self, cls: type[SAE], cfg: SAEConfig, scale: float, extra: dict[str, Tensor],
                         scale_out: float | None = None) -> SAE:
        """Fold the activation scales into the weights: biases (and `extra`, e.g. thresholds) are divided by the
        output's scale `s_out` (`scale` unless a transcoder's target has its own), W_enc multiplied by `scale / s_out`.

        All activations are positively homogeneous, so `encode'(x) = encode(scale x) / s_out` and
        `decode'(a / s_out) = decode(a) / s_out`, with the unit-norm W_dec unchanged.
        """
        s_out = scale if scale_out is None else scale_out
        if not (scale > 0 and s_out > 0):
            raise ValueError(f"activation scales must be > 0, got {scale} and {s_out}")
        meta = dict(cfg.metadata)
        meta.setdefault("training_architecture", self.cfg.architecture)
        inference_cfg = cfg.replace(architecture=cls.architecture, metadata=meta, dtype="float32")
        # a transcoder's (x·scale − centre) @ W_enc + b_enc: the centre goes into b_enc
        b_enc = self.b_enc - self.input_centre @ self.W_enc if cfg.transcoder else self.b_enc
        tensors = {
            "W_enc": self.W_enc if s_out == scale else self.W_enc * (scale / s_out),
            "b_enc": b_enc / s_out,
            "W_dec": self.W_dec,
            "b_dec": self.b_dec / s_out,
            **{name: value / s_out for name, value in extra.items()},
        }
        sae = cls(inference_cfg).to(self.W_dec.device)
        return sae.load_tensors({name: t.detach().float() for name, t in tensors.items()})
