"""The model worker process: the app's live calls answered in a child process, equal to the same calls made in
process; errors cross with their message; its models are bounded; a worker that dies fails the calls in flight
with a message and the next call starts a new one."""

from __future__ import annotations

import os
import pickle
import shutil
import signal
import threading
import time

import pandas as pd
import pytest
import torch

from sae_core.errors import UserError
from sae_core.interventions.attribution import Target
from sae_core.interventions.prompt_activations import PromptTokens
from sae_core.interventions.steering import FeatureEdit
from sae_core.model.sites import Site
from sae_core.runs.open_run import open_run_saes
from sae_core.serving.live_model import CALLS, LiveModel
from sae_core.serving.model_worker import ModelWorker, RemoteModel, WorkerStopped, read_message

TEXT = "the river city music science history ocean language learning light"


@pytest.fixture(scope="module")
def worker():
    started = ModelWorker(max_live_runs=1, threads=1)
    yield started
    started.close()


@pytest.fixture(scope="module")
def local(precomputed_run, tiny_loaded) -> LiveModel:
    return LiveModel(open_run_saes(precomputed_run, loaded=tiny_loaded, log=lambda m: None))


def test_every_live_call_answers_as_it_would_in_process(worker, local, precomputed_run):
    remote = RemoteModel(worker, str(precomputed_run))
    assert remote.sites() == local.sites()
    shorts = tuple(site.short for site in local.sites())
    prompt = remote.tokenize(TEXT, False, 64)
    assert prompt.tokens == local.tokenize(TEXT, False, 64).tokens
    for short, acts in remote.activations(prompt, shorts).items():
        torch.testing.assert_close(acts, local.activations(prompt, shorts)[short])
    remote_top, local_top = remote.predictions(prompt, 3), local.predictions(prompt, 3)
    assert [i for i, _ in remote_top] == [i for i, _ in local_top]
    assert [p for _, p in remote_top] == pytest.approx([p for _, p in local_top], rel=1e-5)
    assert remote.decode([5, 6]) == local.decode([5, 6])
    target = Target(len(prompt.ids) - 1, 5)
    value, table = remote.attribute(prompt, target, shorts, 10)
    assert value == pytest.approx(local.attribute(prompt, target, shorts, 10)[0], rel=1e-5)
    top = [(table["site"][0], int(table["position"][0]), int(table["feature"][0]))]
    assert remote.ablate(prompt, target, shorts, top) == pytest.approx(local.ablate(prompt, target, shorts, top), rel=1e-5)
    edit = [FeatureEdit(local.sites()[0], 3, 20.0)]
    assert remote.generate("river city", edit, 6, False) == local.generate("river city", edit, 6, False)
    assert worker.pid != os.getpid()


def test_a_user_error_crosses_with_its_message_and_a_bad_call_is_refused(worker, precomputed_run):
    with pytest.raises(UserError, match="the prompt is empty"):
        worker.call(str(precomputed_run), "tokenize", "   ", False, 8)
    with pytest.raises(UserError, match="does not exist|no run|not a run"):
        worker.call(str(precomputed_run / "missing"), "sites")
    with pytest.raises(ValueError, match="answers"):
        worker.call(str(precomputed_run), "__init__")
    with pytest.raises(AttributeError):
        RemoteModel(worker, str(precomputed_run)).opened  # noqa: B018  # the model itself never crosses
    assert "open" not in CALLS and "generate" in CALLS


class _Payload:
    def __reduce__(self):
        return (os.system, ("echo should never run",))


def test_a_message_is_read_without_running_what_it_names():
    prompt = PromptTokens(torch.tensor([1, 2, 3]), ["a", "b", "c"], torch.tensor([False, True, True]), None)
    message = (7, True, (prompt, Target(2, 5), [FeatureEdit(Site(1, "mlp_out"), 3, 2.0)], UserError("no"), {"x": [1.5]}))
    key, ok, (read, target, edits, error, columns) = read_message(pickle.dumps(message))
    assert torch.equal(read.ids, prompt.ids) and torch.equal(read.real, prompt.real) and read.tokens == prompt.tokens
    assert (target, edits, columns) == (Target(2, 5), [FeatureEdit(Site(1, "mlp_out"), 3, 2.0)], {"x": [1.5]})
    assert type(error) is UserError and str(error) == "no"
    for foreign in (_Payload(), pd.DataFrame({"a": [1]}), ValueError("not ours")):
        with pytest.raises(pickle.UnpicklingError, match="may not hold"):
            read_message(pickle.dumps(foreign))


def test_the_worker_keeps_at_most_its_bound_of_models(worker, precomputed_run, tmp_path):
    second = tmp_path / "second"
    shutil.copytree(precomputed_run, second)
    worker.call(str(precomputed_run), "sites")
    assert worker.loaded_runs() == [str(precomputed_run)] and worker.is_open(str(precomputed_run))
    worker.call(str(second), "sites")
    assert worker.loaded_runs() == [str(second)] and not worker.is_open(str(precomputed_run))


def test_calls_from_many_threads_each_get_their_own_answer(worker, precomputed_run):
    remote = RemoteModel(worker, str(precomputed_run))
    texts = [f"{TEXT} {i}" for i in range(8)]
    answers: dict[int, list[str]] = {}
    threads = [threading.Thread(target=lambda i=i: answers.__setitem__(i, remote.tokenize(texts[i], False, 64).tokens))
               for i in range(len(texts))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert all(answers[i][-1].strip() == str(i) for i in range(len(texts)))


def test_a_worker_that_dies_fails_its_calls_and_the_next_call_starts_a_new_one(precomputed_run):
    worker = ModelWorker(max_live_runs=1, threads=1)
    try:
        remote = RemoteModel(worker, str(precomputed_run))
        failed: list[BaseException] = []

        def first_call():  # in flight while the worker starts (importing torch takes seconds)
            try:
                remote.sites()
            except BaseException as exc:  # noqa: BLE001  # the test looks at what arrived
                failed.append(exc)

        caller = threading.Thread(target=first_call)
        caller.start()
        while worker.pid is None:
            time.sleep(0.01)
        first = worker.pid
        os.kill(first, signal.SIGKILL)
        caller.join(30)
        assert len(failed) == 1 and isinstance(failed[0], WorkerStopped) and "ask again" in str(failed[0])
        assert [s.short for s in remote.sites()] == ["L0R", "L1A", "L1T", "L1M"]  # a new worker, the run loaded again
        assert worker.pid != first
    finally:
        worker.close()
    assert worker.pid is None and worker.loaded_runs() == []
