"""Serving rules without Streamlit: the run catalog refuses every path trick, the LRU evicts, the line serialises,
the rate limit and the token hold, and `sae-explorer app` will not listen beyond loopback without a token."""

from __future__ import annotations

import gc
import json
import os
import threading
import time
import weakref
from pathlib import Path

import pytest

from sae_core.cli import main
from sae_core.serving import Busy, JobQueue, LRUCache, RateLimited, RateLimiter, RunCatalog, ServeSettings, TokenCheck
from sae_core.serving.settings import is_loopback

HOSTILE_NAMES = ["../outside", "..", "/etc", "%2e%2e%2foutside", "..%2Foutside", "inside/../outside", "a\x00b", "",
                 "inside/", " inside", "INSIDE", "escape"]


def _run(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "run.json").write_text(json.dumps({"status": "complete"}))
    return folder


@pytest.fixture()
def served(tmp_path) -> tuple[RunCatalog, Path, Path]:
    root = tmp_path / "root"
    inside = _run(root / "inside")
    outside = _run(tmp_path / "outside")
    (root / "escape").symlink_to(outside, target_is_directory=True)  # a symlink out of the root
    (root / "not-a-run").mkdir()
    return RunCatalog(runs_dir=root), inside, outside


def test_the_catalog_serves_runs_under_its_root_by_name_only(served):
    catalog, inside, outside = served
    assert catalog.names() == ["inside"]
    assert catalog.resolve("inside") == inside.resolve()
    for name in [*HOSTILE_NAMES, str(inside), str(outside), str(inside.resolve()), "not-a-run", None, 3]:
        assert catalog.resolve(name) is None, name
    assert outside.resolve() not in catalog.runs().values() and catalog.runs()["inside"] == inside.resolve()


def test_runs_added_or_removed_under_the_root_come_and_go(served):
    catalog, inside, _ = served
    later = _run(inside.parent / "later")
    os.utime(later / "run.json", (time.time() + 10, time.time() + 10))
    assert catalog.names() == ["later", "inside"] and catalog.default() == "later"  # newest first
    (inside / "run.json").unlink()
    assert catalog.resolve("inside") is None and catalog.names() == ["later"]


def test_runs_named_on_the_command_line_come_first_and_stay_exact(tmp_path):
    a, b = _run(tmp_path / "x" / "a"), _run(tmp_path / "y" / "b")
    catalog = RunCatalog(runs={"a": str(a)}, runs_dir=b.parent)
    assert catalog.names() == ["a", "b"] and catalog.default() == "a"
    assert catalog.resolve("x/a") is None and catalog.resolve(str(a)) is None


def test_the_lru_evicts_the_least_recently_used_and_frees_it():
    class Model:  # stands in for a loaded model
        pass

    evicted = []
    cache: LRUCache[Model] = LRUCache(2, on_evict=evicted.append, collect=True)
    a = cache.get("a", Model)
    gone = weakref.ref(a)
    cache.get("b", Model)
    assert cache.get("a", lambda: pytest.fail("a is cached")) is a  # a is now the most recent
    cache.get("c", Model)
    assert cache.keys() == ["a", "c"] and len(evicted) == 1 and cache.peek("b") is None
    cache.get("d", Model)
    assert cache.keys() == ["c", "d"] and evicted[0] is not a
    del a, evicted[:]
    gc.collect()
    assert gone() is None  # nothing else held the evicted model


def test_only_an_lru_of_models_pays_for_a_full_collection_on_eviction(monkeypatch):
    collections = []
    monkeypatch.setattr(gc, "collect", lambda *a: collections.append(1) or 0)
    results: LRUCache[int] = LRUCache(1)  # the app's shared results: evicted on every new prompt once full
    for key in range(5):
        results.get(key, lambda: 1)
    assert collections == []
    models: LRUCache[int] = LRUCache(1, collect=True)
    for key in range(3):
        models.get(key, lambda: 1)
    assert collections == [1, 1]


def test_the_lru_builds_a_value_once_for_sessions_asking_together():
    cache: LRUCache[int] = LRUCache(2)
    builds, start = [], threading.Barrier(4)

    def build() -> int:
        builds.append(1)
        time.sleep(0.2)
        return 7

    def ask():
        start.wait()
        assert cache.get("model", build) == 7

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(builds) == 1


def test_the_job_queue_serialises_in_arrival_order_and_reports_positions():
    queue = JobQueue(slots=1, max_waiting=4)
    order, positions, inside = [], {}, threading.Semaphore(0)
    running = threading.Lock()
    overlaps = []

    def job(i: int):
        with queue.slot(lambda p: positions.setdefault(i, []).append(p), poll_s=0.01):
            if not running.acquire(blocking=False):
                overlaps.append(i)
            order.append(i)
            inside.release()
            time.sleep(0.05)
            running.release()

    first = threading.Thread(target=job, args=(0,))
    first.start()
    inside.acquire()  # job 0 holds the model
    threads = []
    for i in (1, 2, 3):
        threads.append(threading.Thread(target=job, args=(i,)))
        threads[-1].start()
        while queue.waiting < i:
            time.sleep(0.005)
    for t in [first, *threads]:
        t.join()
    assert order == [0, 1, 2, 3] and not overlaps
    assert positions[3][0] == 3 and positions[3][-1] == 1 and 0 not in positions  # 3 waited behind 1 and 2
    assert queue.running == 0 and queue.waiting == 0


def test_a_full_line_says_busy_and_a_job_that_fails_frees_its_slot():
    queue = JobQueue(slots=1, max_waiting=0)
    with queue.slot():
        with pytest.raises(Busy, match="busy"):
            with queue.slot():
                pass
    with pytest.raises(RuntimeError):
        with queue.slot():
            raise RuntimeError("the model failed")
    with queue.slot():
        assert queue.running == 1


def test_the_rate_limit_counts_a_sliding_minute():
    now = [0.0]
    limiter = RateLimiter(2, clock=lambda: now[0])
    limiter.check()
    limiter.check()
    with pytest.raises(RateLimited, match="try again in 60 s"):
        limiter.check()
    now[0] = 30.0
    with pytest.raises(RateLimited, match="try again in 30 s"):
        limiter.check()
    now[0] = 60.0
    limiter.check()


def test_the_token_check():
    assert TokenCheck(None).accepts(None) and not TokenCheck(None).required
    check = TokenCheck("s3cret")
    assert check.required and check.accepts("s3cret")
    assert not any(check.accepts(t) for t in (None, "", "s3cre", "s3cret ", "S3CRET"))


def test_settings_travel_through_the_environment_and_refuse_nonsense():
    settings = ServeSettings(runs={"demo": "/x/demo"}, max_live_runs=2, jobs_per_minute=5)
    assert ServeSettings.from_env(settings.to_env()) == settings
    assert ServeSettings.from_env({}) == ServeSettings(runs_dir="runs")
    with pytest.raises(Exception, match="--max-live-jobs must be at least 1"):
        ServeSettings(max_live_jobs=0)


@pytest.mark.parametrize("host, loopback", [("127.0.0.1", True), ("127.0.0.2", True), ("::1", True),
                                            ("localhost", True), ("0.0.0.0", False), ("::", False),
                                            ("10.1.2.3", False), ("myhost.example", False)])
def test_which_hosts_are_loopback(host, loopback):
    assert is_loopback(host) == loopback


def test_the_app_will_not_listen_beyond_loopback_without_a_token(tmp_path, capsys, monkeypatch):
    run = _run(tmp_path / "demo")
    monkeypatch.delenv("SAE_EXPLORER_AUTH_TOKEN", raising=False)
    assert main(["app", str(run), "--host", "0.0.0.0"]) == 2
    assert "--auth-token" in capsys.readouterr().err
    assert main(["app", str(run), "--runs-dir", str(tmp_path / "missing")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    twin = _run(tmp_path / "other" / "demo")
    assert main(["app", str(run), str(twin)]) == 2
    assert "two runs are called 'demo'" in capsys.readouterr().err
