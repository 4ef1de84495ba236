"""The one pass over the corpus: LM forward to the deepest site, encode with every SAE, keep sparse activations.

Every later statistic (density, histograms, top examples, co-activation) is computed from this
record, so the LM runs once. The record is written to disk in shards as it grows, which is what
lets a long precompute resume after it is killed.

Under torchrun each rank records every world-th batch into its own folder, with global context and
token indices; the readers merge the folders back into the order one process records.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from ..activations.harvest import batch_activations
from ..activations.outliers import non_outliers, outlier_threshold
from ..io import atomic_path, write_json
from ..model.load import LoadedModel
from ..model.sites import Site
from ..parallel import Parallel
from ..saes import SAE
from ..text.tokens import TokenBatch

STATE_FILE = "state.json"


@dataclass(frozen=True)
class SparseActivations:
    """The non-zero activations of one SAE over the recorded tokens (COO, any order)."""

    values: Tensor
    """(nnz,) float32 activation values, all > 0."""
    latents: Tensor
    """(nnz,) int64 feature index of each value."""
    tokens: Tensor
    """(nnz,) int64 global token index `context * context_size + position`."""
    counted: Tensor
    """(n_contexts, context_size) bool: tokens that count (real text, not an outlier for this SAE)."""


def encode_sparse(sae: SAE, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """`x (N, d_in)` -> `(rows, latents, values)` of the non-zero activations, without a dense copy for TopK."""
    if hasattr(sae, "encode_topk"):
        values, latents = sae.encode_topk(x)  # type: ignore[operator]
        rows = torch.arange(x.shape[0], device=x.device)[:, None].expand_as(latents)
        keep = values > 0
        return rows[keep], latents[keep], values[keep]
    acts = sae.encode(x)
    rows, latents = acts.nonzero(as_tuple=True)
    return rows, latents, acts[rows, latents]


class RecordWriter:
    """Encodes LM batches with every SAE and appends shards of sparse activations to a work folder.

    The folder holds `state.json` (what is being recorded, a fingerprint) and `shard-NNNNN.safetensors`
    files. A folder with a different fingerprint is cleared; one with the same resumes after its shards.
    Counts (batches, contexts, tokens) are of the whole stream, including batches other ranks record.
    """

    def __init__(self, folder: Path, fingerprint: dict[str, Any], sites: list[Site], shard_tokens: int):
        self.folder, self.sites, self.shard_tokens = folder, sites, shard_tokens
        state = _read_state(folder)
        if state is None or state.get("fingerprint") != fingerprint:
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            state = {"fingerprint": fingerprint, "shards": [], "complete": False}
            write_json(folder / STATE_FILE, state)
        self.state = state
        self._reset_buffer()

    @property
    def complete(self) -> bool:
        return bool(self.state["complete"])

    @property
    def lm_batches(self) -> int:
        """LM batches of the stream already behind the shards (to skip when resuming)."""
        return sum(s["lm_batches"] for s in self.state["shards"])

    @property
    def contexts(self) -> int:
        return sum(s["contexts"] for s in self.state["shards"])

    @property
    def counted_tokens(self) -> int:
        return sum(s["tokens"] for s in self.state["shards"])

    def _reset_buffer(self) -> None:
        self._ids: list[Tensor] = []
        self._context_ids: list[Tensor] = []
        self._parts: dict[Site, list[tuple[Tensor, Tensor, Tensor, Tensor]]] = {s: [] for s in self.sites}
        self._batches = self._contexts = self._tokens = 0

    @torch.inference_mode()
    def add(self, loaded: LoadedModel, saes: dict[Site, SAE], batch: TokenBatch) -> int:
        """Run and encode one LM batch; return its number of real tokens. Writes a shard when one is full."""
        acts = batch_activations(loaded, self.sites, batch)
        B, T = batch.input_ids.shape
        base = (self.contexts + self._contexts) * T
        for site in self.sites:
            x = acts[site].reshape(B * T, -1).float()
            counted = batch.real.reshape(-1).to(x.device) & non_outliers(x, outlier_threshold(saes[site]))
            idx = counted.nonzero().squeeze(1)
            rows, latents, values = encode_sparse(saes[site], saes[site].cfg.split_rows(x[idx])[0])
            tokens = base + idx[rows]
            self._parts[site].append(
                (values.float().cpu(), latents.to(torch.int32).cpu(), tokens.cpu(), counted.view(B, T).cpu())
            )
        self._ids.append(batch.input_ids.to(torch.int32).cpu())
        self._context_ids.append(torch.arange(base // T, base // T + B, dtype=torch.int64))
        return self.skip(batch)

    def skip(self, batch: TokenBatch) -> int:
        """Count a batch another rank records (or, from `add`, this one); return its real tokens."""
        self._batches += 1
        self._contexts += batch.input_ids.shape[0]
        real = int(batch.real.sum())
        self._tokens += real
        if self._tokens >= self.shard_tokens:
            self.flush()
        return real

    def flush(self) -> None:
        """Write what is buffered as one shard (atomically) and note it in state.json."""
        if not self._batches:
            return
        name = None
        if self._ids:  # else every batch since the last shard went to other ranks
            tensors = {"token_ids": torch.cat(self._ids), "context_ids": torch.cat(self._context_ids)}
            for site in self.sites:
                values, latents, tokens, counted = (torch.cat(t) for t in zip(*self._parts[site]))
                key = site.hook_name
                tensors |= {f"{key}.values": values, f"{key}.latents": latents, f"{key}.tokens": tokens, f"{key}.counted": counted}
            name = f"shard-{len(self.state['shards']):05d}.safetensors"
            with atomic_path(self.folder / name) as tmp:
                save_file(tensors, str(tmp))
        self.state["shards"].append(
            {"file": name, "lm_batches": self._batches, "contexts": self._contexts, "tokens": self._tokens}
        )
        write_json(self.folder / STATE_FILE, self.state)
        self._reset_buffer()

    def finish(self) -> None:
        self.flush()
        self.state["complete"] = True
        write_json(self.folder / STATE_FILE, self.state)


def record_activations(
    loaded: LoadedModel,
    saes: dict[Site, SAE],
    batches: Iterable[TokenBatch],
    writer: RecordWriter,
    max_tokens: int,
    progress: Callable[[int], None] | None = None,
    par: Parallel = Parallel(),
) -> None:
    """Feed batches to `writer` until `max_tokens` real tokens are recorded (or the text runs out).

    `batches` continue the stream after `writer.lm_batches`; with several ranks, this rank records
    batch i of the stream when i % world == rank and only counts the others.
    """
    seen = writer.counted_tokens
    for i, batch in enumerate(batches, start=writer.lm_batches):
        if seen >= max_tokens:
            break
        n = writer.add(loaded, saes, batch) if i % par.world == par.rank else writer.skip(batch)
        seen += n
        if progress:
            progress(n)
    writer.finish()


def _shard_files(folders: list[Path]) -> list[Path]:
    """Every shard holding data, over the folders of all ranks."""
    return [folder / shard["file"] for folder in folders for shard in _require_state(folder)["shards"] if shard["file"]]


def read_token_ids(folders: list[Path]) -> Tensor:
    """`(n_contexts, context_size)` int32 token ids of everything recorded, in stream order."""
    ids, contexts = [], []
    for path in _shard_files(folders):
        with safe_open(str(path), framework="pt") as f:
            ids.append(f.get_tensor("token_ids"))
            contexts.append(f.get_tensor("context_ids"))
    order = torch.argsort(torch.cat(contexts), stable=True)
    return torch.cat(ids)[order]


def read_site(folders: list[Path], site: Site) -> SparseActivations:
    """The sparse activations of one SAE over every shard (loaded one site at a time to bound memory).

    Entries come back in stream order (by token, as one process records them) whatever ranks recorded them.
    """
    key = site.hook_name
    values, latents, tokens, counted, contexts = [], [], [], [], []
    for path in _shard_files(folders):
        with safe_open(str(path), framework="pt") as f:
            values.append(f.get_tensor(f"{key}.values"))
            latents.append(f.get_tensor(f"{key}.latents"))
            tokens.append(f.get_tensor(f"{key}.tokens"))
            counted.append(f.get_tensor(f"{key}.counted"))
            contexts.append(f.get_tensor("context_ids"))
    token_index = torch.cat(tokens)
    order = torch.argsort(token_index, stable=True)
    rows = torch.argsort(torch.cat(contexts), stable=True)
    return SparseActivations(torch.cat(values)[order], torch.cat(latents).long()[order], token_index[order], torch.cat(counted)[rows])


def _read_state(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _require_state(folder: Path) -> dict[str, Any]:
    state = _read_state(folder)
    if state is None or not state["complete"]:
        raise ValueError(f"no complete record of activations in {folder}")
    return state
