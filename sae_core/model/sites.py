"""Site names: one activation of one layer, named as SAELens / TransformerLens name it.

`blocks.{i}.hook_resid_post` (alias `L{i}R`), `blocks.{i}.hook_mlp_out` (`L{i}M`) and
`blocks.{i}.hook_attn_out` (`L{i}A`); the parsers also read sparsify and Hugging Face
module names (`layers.6.mlp`, `h.6.attn`) so users can paste what they know.

A transcoder site (`L{i}T`) reads one activation and writes another: the MLP's input
(`blocks.{i}.ln2.hook_normalized`, after the norm) in, the MLP's output (`blocks.{i}.hook_mlp_out`,
its `target`) out, as SAELens names a transcoder's `hook_name` and `hook_name_out`.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from dataclasses import dataclass

from sae_core.errors import SiteError

KINDS = ("resid_post", "mlp_out", "attn_out")
"""Site kinds an SAE reconstructs, as the suffix of the TransformerLens hook name (what `all` names)."""
TRANSCODER = "transcoder"
"""The kind of a transcoder site: MLP input in, MLP output out."""
ALL_KINDS = (*KINDS, TRANSCODER)

_LETTER = {"resid_post": "R", "mlp_out": "M", "attn_out": "A", TRANSCODER: "T"}
_KIND_OF_LETTER = {letter: kind for kind, letter in _LETTER.items()}
# a transcoder reads the MLP's input, so within a layer it comes before the MLP output it writes
_EXECUTION_RANK = {"attn_out": 0, TRANSCODER: 1, "mlp_out": 2, "resid_post": 3}
_KIND_OF_MODULE = {None: "resid_post", "mlp": "mlp_out", "self_attn": "attn_out", "attn": "attn_out"}

_SHORT = re.compile(r"l(\d+)([rmat])")
_HOOK = re.compile(r"blocks\.(\d+)\.hook_(resid_post|mlp_out|attn_out|resid_pre)")
_TRANSCODER_HOOK = re.compile(r"blocks\.(\d+)\.ln2\.hook_normalized")
_MODULE = re.compile(r"(?:model\.|transformer\.)?(?:layers|h)\.(\d+)(?:\.(mlp|self_attn|attn))?")
_PATTERN = re.compile(r"l(\*|\d+-\d+)(?:/(\d+))?([rmat])")

ACCEPTED_FORMS = (
    "L{i}R / L{i}M / L{i}A, blocks.{i}.hook_resid_post / hook_mlp_out / hook_attn_out, "
    "blocks.{i}.hook_resid_pre (i >= 1), layers.{i}[.mlp|.self_attn] or h.{i}[.mlp|.attn]; "
    "a transcoder: L{i}T or blocks.{i}.ln2.hook_normalized"
)


@dataclass(frozen=True, order=True)
class Site:
    """One activation of one decoder layer; sorts in execution order (attn_out < mlp_out < resid_post)."""

    layer: int
    """Index of the decoder layer, from 0."""
    kind: str
    """One of `KINDS`, or `TRANSCODER`."""

    def __post_init__(self) -> None:
        if self.kind not in ALL_KINDS:
            raise SiteError(f"unknown site kind {self.kind!r}: use one of {', '.join(ALL_KINDS)}")
        if self.layer < 0:
            raise SiteError(f"site layer must be >= 0, got {self.layer}")

    @property
    def hook_name(self) -> str:
        """The SAELens / TransformerLens hook name of what the SAE reads, e.g. `blocks.6.hook_resid_post`."""
        if self.kind == TRANSCODER:
            return f"blocks.{self.layer}.ln2.hook_normalized"
        return f"blocks.{self.layer}.hook_{self.kind}"

    @property
    def is_transcoder(self) -> bool:
        """Whether the site reads the MLP's input and writes its output (`target`)."""
        return self.kind == TRANSCODER

    @property
    def hook_name_out(self) -> str:
        """A transcoder site's output hook (its target's, `blocks.6.hook_mlp_out`); empty for an SAE site."""
        return self.target.hook_name if self.kind == TRANSCODER else ""

    @property
    def target(self) -> Site:
        """The site whose activation the SAE writes: the MLP output for a transcoder, the site itself otherwise."""
        return Site(self.layer, "mlp_out") if self.kind == TRANSCODER else self

    @property
    def short(self) -> str:
        """The short alias, e.g. `L6R`, `L6M`, `L6A`."""
        return f"L{self.layer}{_LETTER[self.kind]}"

    @property
    def order_key(self) -> tuple[int, int]:
        """(layer, rank within the layer): sorts sites in the order a forward pass produces them."""
        return (self.layer, _EXECUTION_RANK[self.kind])

    def __str__(self) -> str:
        return self.short


def all_sites(n_layers: int, kinds: Sequence[str] = KINDS) -> list[Site]:
    """Every site of `kinds` in a model with `n_layers` layers, in execution order."""
    return sorted((Site(i, k) for i in range(n_layers) for k in kinds), key=lambda s: s.order_key)


def parse_site(text: str, n_layers: int | None = None) -> Site:
    """Read one site from any accepted spelling; with `n_layers`, check the range and suggest near names."""
    cleaned = text.strip()
    lowered = cleaned.lower()
    site = _match(lowered)
    if site is None:
        raise SiteError(_unknown_message(cleaned, n_layers))
    if n_layers is not None:
        _check_range(site, n_layers)
    return site


def parse_sites(spec: str | Sequence[str], n_layers: int) -> list[Site]:
    """Read a comma-separated list (or a list of strings) of sites, `all`, `L*R` wildcards and `L0-5R` ranges;
    a step takes every n-th layer of a wildcard or range (`L*/3R`: layers 0, 3, 6, …).

    Duplicates are dropped, keeping the first occurrence.
    """
    parts = [spec] if isinstance(spec, str) else list(spec)
    items = [item.strip() for part in parts for item in str(part).split(",") if item.strip()]
    if not items:
        raise SiteError("no sites given: name at least one, e.g. L6R, blocks.6.hook_mlp_out, L*R or all")
    sites: list[Site] = []
    for item in items:
        sites.extend(_expand(item, n_layers))
    return list(dict.fromkeys(sites))


def _match(lowered: str) -> Site | None:
    """The site that `lowered` names in one of the accepted forms, or None."""
    if m := _SHORT.fullmatch(lowered):
        return Site(int(m[1]), _KIND_OF_LETTER[m[2].upper()])
    if m := _HOOK.fullmatch(lowered):
        layer, kind = int(m[1]), m[2]
        if kind != "resid_pre":
            return Site(layer, kind)
        if layer == 0:
            raise SiteError(
                "blocks.0.hook_resid_pre is the embedding output, and embeddings are not a supported site: "
                "use a layer output such as L0R (blocks.0.hook_resid_post)"
            )
        return Site(layer - 1, "resid_post")
    if m := _TRANSCODER_HOOK.fullmatch(lowered):
        return Site(int(m[1]), TRANSCODER)
    if m := _MODULE.fullmatch(lowered):
        return Site(int(m[1]), _KIND_OF_MODULE[m[2]])
    return None


def _expand(item: str, n_layers: int) -> list[Site]:
    """The sites one list item names: `all`, `L*X`, `La-bX` (either with a `/n` step) or a single site."""
    lowered = item.lower()
    if lowered == "all":
        return all_sites(n_layers)
    m = _PATTERN.fullmatch(lowered)
    if m is None:
        return [parse_site(item, n_layers)]
    kind, letter = _KIND_OF_LETTER[m[3].upper()], m[3].upper()
    step = int(m[2] or 1)
    if step < 1:
        raise SiteError(f"site step in {item!r} must be at least 1, e.g. L*/3{letter} for every third layer")
    if m[1] == "*":
        return [Site(i, kind) for i in range(0, n_layers, step)]
    start, stop = (int(x) for x in m[1].split("-"))
    if start > stop:
        raise SiteError(f"site range {item!r} is empty: write the lower layer first, e.g. L{stop}-{start}{letter}")
    _check_range(Site(stop, kind), n_layers)
    return [Site(i, kind) for i in range(start, stop + 1, step)]


def _check_range(site: Site, n_layers: int) -> None:
    if site.layer >= n_layers:
        letter = _LETTER[site.kind]
        span = f"L0{letter}" if n_layers == 1 else f"L0{letter} … L{n_layers - 1}{letter}"
        raise SiteError(f"site {site.short} is out of range: the model has {n_layers} layers ({span})")


def _unknown_message(text: str, n_layers: int | None) -> str:
    message = f"unknown site {text!r}: write one of {ACCEPTED_FORMS}"
    if n_layers is None:
        return message
    names = {}
    for site in all_sites(n_layers):
        names[site.short.lower()] = site.short
        names[site.hook_name] = site.hook_name
    close = difflib.get_close_matches(text.lower(), list(names), n=3, cutoff=0.6)
    if close:
        message += "; did you mean " + " or ".join(names[c] for c in close) + "?"
    return message
