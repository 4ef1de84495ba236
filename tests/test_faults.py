"""Faults a shared server meets: feature files rebuilt, deleted, truncated or replaced by junk while the app serves
them; a run folder removed; the disk filling up while `precompute` or `explain` writes. Each ends in a clear message,
the last good file keeps being served, and nothing half-written is left behind."""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
from pathlib import Path

import pytest
from helpers import PRECOMPUTE_OPTIONS, serve
from streamlit.testing.v1 import AppTest

from sae_core.cli import main
from sae_core.errors import UserError, disk_full
from sae_core.features.precompute import precompute_run
from sae_core.serving.stores import StoreShelf

ROOT = Path(__file__).resolve().parents[1]


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _leftovers(run: Path) -> list[str]:
    return sorted(p.name for p in run.rglob("*") if p.name.endswith((".tmp", ".amend", ".wal")) or ".tmp" in p.name)


@pytest.fixture()
def run_copy(precomputed_run, tmp_path) -> Path:
    run = tmp_path / "served"
    shutil.copytree(precomputed_run, run)
    return run


def _replace(path: Path, data: bytes) -> None:
    """Put new bytes at `path` the way a copy or a rebuild does (a new file renamed into place)."""
    tmp = path.with_name(path.name + ".new")
    tmp.write_bytes(data)
    os.utime(tmp, ns=(path.stat().st_mtime_ns + 10**9,) * 2)
    os.replace(tmp, path)


@pytest.mark.parametrize("fault", ["junk", "truncated", "deleted", "empty"])
def test_the_last_good_store_is_served_while_the_new_file_is_unreadable(run_copy, fault):
    shelf = StoreShelf()
    store, problem = shelf.open(run_copy)
    assert problem is None
    before = store.feature("L1M", 1).feature["label"]
    db = run_copy / "features.duckdb"
    if fault == "deleted":
        db.unlink()
    else:
        data = {"junk": b"not a duckdb file\n" * 100, "truncated": db.read_bytes()[:4096], "empty": b""}[fault]
        _replace(db, data)
    again, problem = shelf.open(run_copy)
    assert again is store and "cannot be opened" in problem and "showing the version opened at" in problem
    assert again.feature("L1M", 1).feature["label"] == before  # the open file still answers


def test_a_rebuilt_file_is_picked_up_and_a_broken_first_open_says_what_to_do(run_copy, precomputed_run, tmp_path):
    shelf = StoreShelf()
    store, _ = shelf.open(run_copy)
    _replace(run_copy / "features.duckdb", (precomputed_run / "features.duckdb").read_bytes())  # a rebuild
    rebuilt, problem = shelf.open(run_copy)
    assert problem is None and rebuilt is not store and rebuilt.serial != store.serial
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "features.duckdb").write_bytes(b"junk")
    with pytest.raises(UserError, match="precompute"):
        StoreShelf().open(broken)


def test_the_app_keeps_serving_a_feature_when_its_file_turns_to_junk(monkeypatch, run_copy):
    serve(monkeypatch, runs={"served": str(run_copy)})
    first = AppTest.from_file(str(ROOT / "pages" / "2_Features.py"), default_timeout=60)
    first.query_params.update(sae="L1M", feature="1")
    first.run()
    assert not first.exception and first.subheader[0].value == "L1M · feature 1"
    _replace(run_copy / "features.duckdb", b"junk" * 1000)
    at = AppTest.from_file(str(ROOT / "pages" / "2_Features.py"), default_timeout=60)
    at.query_params.update(sae="L1M", feature="2")
    at.run()
    assert not at.exception and at.subheader[0].value == "L1M · feature 2"
    assert "cannot be opened" in at.warning[0].value and str(run_copy) not in at.warning[0].value


def test_a_removed_run_is_no_such_run(monkeypatch, run_copy):
    serve(monkeypatch, runs_dir=str(run_copy.parent))
    assert not AppTest.from_file(str(ROOT / "pages" / "2_Features.py")).run().exception
    shutil.rmtree(run_copy)
    at = AppTest.from_file(str(ROOT / "pages" / "2_Features.py"), default_timeout=60)
    at.query_params["run"] = "served"
    at.run()
    assert not at.exception and at.error[0].value.startswith("No such run")


def _fill_disk_after(calls: int):
    """A stand-in for a write that runs out of space on its `calls`-th call."""
    seen = [0]

    def write(original):
        def wrapper(*args, **kwargs):
            seen[0] += 1
            if seen[0] >= calls:
                raise OSError(errno.ENOSPC, "No space left on device")
            return original(*args, **kwargs)
        return wrapper
    return write


def test_a_full_disk_during_precompute_leaves_the_old_file_and_no_temporary_one(run_copy, tiny_loaded, monkeypatch):
    from sae_core.features import writer

    old = _digest(run_copy / "features.duckdb")
    monkeypatch.setattr(writer.FeatureDBWriter, "insert", _fill_disk_after(3)(writer.FeatureDBWriter.insert))
    with pytest.raises(OSError) as caught:
        precompute_run(run_copy, PRECOMPUTE_OPTIONS, loaded=tiny_loaded, log=lambda m: None)
    assert disk_full(caught.value)
    assert _digest(run_copy / "features.duckdb") == old
    assert _leftovers(run_copy) == []


def test_a_full_disk_during_explain_leaves_the_feature_file_whole(run_copy, monkeypatch):
    from sae_core.features import amend as amend_module

    old = _digest(run_copy / "features.duckdb")

    def half_copy(src, dst):
        Path(dst).write_bytes(Path(src).read_bytes()[:1000])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(amend_module.shutil, "copyfile", half_copy)
    with pytest.raises(OSError):
        with amend_module.amend(run_copy / "features.duckdb") as con:
            con.execute("SELECT 1")
    assert _digest(run_copy / "features.duckdb") == old and _leftovers(run_copy) == []


def test_the_cli_says_the_disk_is_full_and_what_to_do(monkeypatch, capsys, tmp_path):
    import sae_core.cli as cli

    def full(_args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cli, "_sites", full)
    assert main(["sites", "--model", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "the disk is full" in err and "free some space and run the same command again" in err


def test_a_rebuilt_file_is_read_afresh_while_the_old_one_is_still_open(run_copy, explained_run):
    """DuckDB keeps one instance per path in a process: a store opened by path would keep reading the old file."""
    from sae_core.features.reader import FeatureStore

    with FeatureStore(explained_run) as explained:
        feature = int(explained._rows("SELECT feature FROM explanations LIMIT 1")[0][0])
    shelf = StoreShelf()
    old, _ = shelf.open(run_copy)
    assert old.feature("L1A", feature).explanations.empty
    _replace(run_copy / "features.duckdb", (explained_run / "features.duckdb").read_bytes())  # `explain` renamed its copy
    new, problem = shelf.open(run_copy)
    assert problem is None and not new.feature("L1A", feature).explanations.empty
    assert old.feature("L1A", feature).explanations.empty  # a session still holding the old store reads the old file
