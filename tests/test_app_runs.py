"""The Runs page (Streamlit AppTest) and the explorer.runs_view helpers it calls."""

from __future__ import annotations

import json
from pathlib import Path

from helpers import serve
from streamlit.testing.v1 import AppTest

from explorer.runs_view import metrics_frame, run_summary
from sae_core.serving import RunCatalog

ROOT = Path(__file__).resolve().parents[1]


def _fake_run(root: Path, name: str = "r1", with_metrics: bool = True) -> Path:
    run = root / name
    sae = run / "saes" / "blocks.3.hook_resid_post"
    sae.mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"status": "complete", "model": "m", "corpus": "c", "sites": ["blocks.3.hook_resid_post"], "config": {"arch": "topk", "tokens": 1000}}))
    (sae / "cfg.json").write_text("{}")
    if with_metrics:
        (sae / "metrics.json").write_text(json.dumps({"site": "L3R", "hook_name": "blocks.3.hook_resid_post", "fvu": 0.25, "l0": 32.0, "ce_loss_recovered": 0.9}))
    return run


def test_helpers_read_runs_and_metrics(tmp_path):
    run = _fake_run(tmp_path)
    assert RunCatalog(runs_dir=tmp_path).runs() == {"r1": run.resolve()}
    assert RunCatalog(runs_dir=tmp_path / "missing").runs() == {}
    frame = metrics_frame(run)
    assert list(frame["site"]) == ["L3R"] and float(frame["fvu"].iloc[0]) == 0.25
    assert run_summary(run)["architecture"] == "topk"


def _page(root: Path, monkeypatch) -> AppTest:
    serve(monkeypatch, runs_dir=str(root))
    return AppTest.from_file(str(ROOT / "pages" / "1_Runs.py"), default_timeout=30).run()


def test_runs_page_shows_the_metrics_table(tmp_path, monkeypatch):
    _fake_run(tmp_path)
    at = _page(tmp_path, monkeypatch)
    assert not at.exception
    assert at.selectbox[0].value == "r1"
    assert at.dataframe[0].value["fvu"].tolist() == [0.25]


def test_runs_page_explains_what_to_do_without_runs_or_metrics(tmp_path, monkeypatch):
    at = _page(tmp_path, monkeypatch)
    assert not at.exception and "No run is served here" in at.error[0].value and "sae-explorer app" in at.info[0].value
    _fake_run(tmp_path, "r2", with_metrics=False)
    at = _page(tmp_path, monkeypatch)
    assert not at.exception and "has no metrics yet" in at.warning[0].value


def test_the_run_picked_here_is_the_one_the_other_pages_show(tmp_path, monkeypatch):
    _fake_run(tmp_path, "r1")
    _fake_run(tmp_path, "r2")
    at = _page(tmp_path, monkeypatch)
    at.selectbox[0].set_value("r1" if at.selectbox[0].value == "r2" else "r2").run()
    assert not at.exception
    picked = at.selectbox[0].value
    assert at.session_state["run"] == picked  # a name, never a path
    assert at.query_params["run"] in (picked, [picked])


def test_a_suite_is_shown_against_layer_with_its_notes(tmp_path, monkeypatch):
    from test_layer_report import fake_suite

    fake_suite(tmp_path, n_layers=5)  # 15 SAEs: too many for one bar per SAE
    at = _page(tmp_path, monkeypatch)
    assert not at.exception and len(at.dataframe[0].value) == 15
    titles = [json.loads(c.proto.spec)["layout"]["title"]["text"] for c in at.get("plotly_chart")]
    assert titles[0].startswith("FVU") and titles[1].startswith("CE-loss recovered") and titles[1].endswith("1 n/a")
    assert "L1M CE rec.: n/a" in at.expander[0].markdown[0].value
