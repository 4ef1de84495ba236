import pytest

from sae_core.errors import SiteError
from sae_core.model.sites import KINDS, Site, all_sites, parse_site, parse_sites


def test_site_names():
    site = Site(6, "resid_post")
    assert site.hook_name == "blocks.6.hook_resid_post"
    assert site.short == "L6R" and str(site) == "L6R"
    assert Site(6, "mlp_out").short == "L6M" and Site(6, "attn_out").short == "L6A"
    assert Site(2, "attn_out").hook_name == "blocks.2.hook_attn_out"


def test_site_is_hashable_and_sorts_in_execution_order():
    sites = [Site(1, "attn_out"), Site(0, "resid_post"), Site(0, "mlp_out"), Site(0, "attn_out")]
    expected = [Site(0, "attn_out"), Site(0, "mlp_out"), Site(0, "resid_post"), Site(1, "attn_out")]
    assert sorted(sites, key=lambda s: s.order_key) == expected
    assert sorted(sites) == expected
    assert len({Site(0, "mlp_out"), Site(0, "mlp_out")}) == 1


def test_site_rejects_bad_kind():
    with pytest.raises(SiteError, match="resid_post"):
        Site(0, "resid_pre")


@pytest.mark.parametrize(
    "text, expected",
    [
        ("L6R", Site(6, "resid_post")),
        ("l6m", Site(6, "mlp_out")),
        (" L12A ", Site(12, "attn_out")),
        ("blocks.6.hook_resid_post", Site(6, "resid_post")),
        ("blocks.6.hook_mlp_out", Site(6, "mlp_out")),
        ("blocks.0.hook_attn_out", Site(0, "attn_out")),
        ("blocks.7.hook_resid_pre", Site(6, "resid_post")),
        ("layers.6", Site(6, "resid_post")),
        ("layers.6.mlp", Site(6, "mlp_out")),
        ("layers.6.self_attn", Site(6, "attn_out")),
        ("model.layers.6.mlp", Site(6, "mlp_out")),
        ("h.6", Site(6, "resid_post")),
        ("h.6.mlp", Site(6, "mlp_out")),
        ("h.6.attn", Site(6, "attn_out")),
        ("transformer.h.3.attn", Site(3, "attn_out")),
    ],
)
def test_parse_site_forms(text, expected):
    assert parse_site(text) == expected
    assert parse_site(text, n_layers=30) == expected


def test_resid_pre_zero_is_the_embedding():
    with pytest.raises(SiteError, match="embeddings are not a supported site"):
        parse_site("blocks.0.hook_resid_pre")


def test_out_of_range_message():
    with pytest.raises(SiteError) as err:
        parse_site("L40R", n_layers=30)
    assert str(err.value) == "site L40R is out of range: the model has 30 layers (L0R … L29R)"
    with pytest.raises(SiteError, match="out of range"):
        parse_site("blocks.2.hook_mlp_out", n_layers=2)


def test_unknown_site_names_forms_and_suggests():
    with pytest.raises(SiteError) as err:
        parse_site("blocks.6.hook_resid_pots", n_layers=30)
    message = str(err.value)
    assert "L{i}R" in message and "layers.{i}" in message
    assert "did you mean blocks.6.hook_resid_post" in message
    with pytest.raises(SiteError, match="did you mean L6R"):
        parse_site("L6RR", n_layers=30)
    with pytest.raises(SiteError) as err:
        parse_site("banana")
    assert "did you mean" not in str(err.value)


def test_parse_sites_list_dedup_and_whitespace():
    sites = parse_sites(" L1R , blocks.0.hook_mlp_out,L1R,layers.1 ,", n_layers=2)
    assert sites == [Site(1, "resid_post"), Site(0, "mlp_out")]
    assert parse_sites(["L0A", "L1M, L0A"], n_layers=2) == [Site(0, "attn_out"), Site(1, "mlp_out")]


def test_parse_sites_all_wildcards_and_ranges():
    assert parse_sites("all", 2) == all_sites(2)
    assert len(parse_sites("ALL", 3)) == 3 * len(KINDS)
    assert parse_sites("L*R", 3) == [Site(i, "resid_post") for i in range(3)]
    assert parse_sites("l*a", 2) == [Site(0, "attn_out"), Site(1, "attn_out")]
    assert parse_sites("L0-5M", 30) == [Site(i, "mlp_out") for i in range(6)]
    assert parse_sites("L1-2R, L*R", 4) == [Site(i, "resid_post") for i in (1, 2, 0, 3)]
    assert parse_sites("L*/3M", 30) == [Site(i, "mlp_out") for i in range(0, 30, 3)]  # every third layer
    assert parse_sites("L2-9/4A", 30) == [Site(2, "attn_out"), Site(6, "attn_out")]


def test_parse_sites_errors():
    with pytest.raises(SiteError, match="no sites"):
        parse_sites("", 2)
    with pytest.raises(SiteError, match="no sites"):
        parse_sites(" , ", 2)
    with pytest.raises(SiteError, match="out of range"):
        parse_sites("L0-5R", 3)
    with pytest.raises(SiteError, match="empty"):
        parse_sites("L5-2R", 30)
    with pytest.raises(SiteError, match="step.*at least 1"):
        parse_sites("L*/0R", 30)
    with pytest.raises(SiteError, match="out of range"):
        parse_sites("L1R, L3M", 2)
