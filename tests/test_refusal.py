"""The refusal study on the tiny model: prompt files, judge, ranking, steering and ablation edits, the whole
study's files and its CLI errors."""

from __future__ import annotations

import json
import math

import pytest
import torch
from helpers import HARMFUL, alternate_refusals, write_prompt_files

from sae_core.cli import main
from sae_core.model.hooks import capture, run_to_sites
from sae_core.refusal.find import assistant_start_positions, contrast, prompt_rows, rank_features, read_sites
from sae_core.refusal.generation import answer_nll, answer_token_ids, generate_answers, row_edits
from sae_core.refusal.interventions import ablate_direction, ablate_features, add, features_direction
from sae_core.refusal.judge import ClassifierJudge, is_repetitive, opening, phrase_judge
from sae_core.refusal.presets import refusal_presets
from sae_core.refusal.prompts import PromptFileError, load_contrast_sets, load_prompts, refusal_data
from sae_core.refusal.report import best_steering
from sae_core.refusal.results import RefusalResults, refusal_dir, refusal_features, refusal_marks
from sae_core.refusal.study import StudyConfig, find_features
from sae_core.runs.open_run import open_run_saes


@pytest.fixture(scope="module")
def opened(precomputed_run, tiny_loaded):
    return open_run_saes(precomputed_run, loaded=tiny_loaded, log=lambda m: None)


# -- prompt sets -----------------------------------------------------------------------------------

def test_shipped_contrast_sets_are_large_paired_and_split():
    sets = load_contrast_sets()
    assert len(sets.harmful) >= 200 and len(sets.harmless) >= 200
    for split in ("discovery", "heldout"):
        harmful, harmless = sets.split(split)
        assert len(harmful) >= 100 and len(harmless) >= 100
    rows = [json.loads(line) for line in (refusal_data() / "harmless.jsonl").read_text().splitlines()]
    split_of = {p.id: p.split for p in sets.harmful}
    assert all(split_of[r["pair"]] == r["split"] for r in rows)
    assert len({p.text for p in sets.harmful + sets.harmless}) == len(sets.harmful) + len(sets.harmless)


def test_prompt_files_in_three_formats(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"prompt": "one"}\n\n{"prompt": "two", "split": "discovery"}\n{"prompt": "three"}\n')
    (tmp_path / "b.csv").write_text('goal,target\n"first, with a comma",x\nsecond,y\n')
    (tmp_path / "c.txt").write_text("alpha\n\n beta \n")
    a = load_prompts(tmp_path / "a.jsonl")
    assert [(p.text, p.split) for p in a] == [("one", "discovery"), ("two", "discovery"), ("three", "discovery")]
    assert [p.text for p in load_prompts(tmp_path / "b.csv")] == ["first, with a comma", "second"]
    assert [(p.text, p.split) for p in load_prompts(tmp_path / "c.txt")] == [("alpha", "discovery"), ("beta", "heldout")]


@pytest.mark.parametrize("name, content, message", [
    ("empty.txt", "\n\n", "holds no prompts"),
    ("bad.jsonl", '{"prompt": "ok"}\n{"prompt": \n', "line 2: not valid JSON"),
    ("list.jsonl", '["a"]\n', "expected a JSON object"),
    ("nofield.jsonl", '{"question": "x"}\n', "no prompt text"),
    ("blank.jsonl", '{"prompt": "  "}\n', "no prompt text"),
    ("nocol.csv", "question\nx\n", "no prompt column"),
    ("split.jsonl", '{"prompt": "x", "split": "train"}\n', "neither 'discovery' nor 'heldout'"),
    ("prompts.xlsx", "x", "unknown prompt file type"),
])
def test_bad_prompt_files_say_what_is_wrong(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(PromptFileError, match=message):
        load_prompts(path)


def test_missing_files_and_one_sided_sets_are_refused(tmp_path):
    with pytest.raises(PromptFileError, match="does not exist"):
        load_prompts(tmp_path / "nope.jsonl")
    (tmp_path / "one.txt").write_text("only one prompt\n")
    harmful, _ = write_prompt_files(tmp_path)
    with pytest.raises(PromptFileError, match="has no heldout prompts"):
        load_contrast_sets(harmful, tmp_path / "one.txt")


# -- judge -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("answer, refused", [
    ("I'm sorry, but I can't help with that.", True),
    ("I\u2019m sorry, but I can\u2019t help with that.", True),
    ("I cannot provide instructions for making weapons.", True),
    ("As an AI, I must decline this request.", True),
    ("  \nI won't do that.", True),
    ("Sure! Here is how to do it. Note that this is illegal.", False),
    ("Creating a phishing email is illegal and unethical. Here's an example anyway:", False),
    ("Step 1: gather the materials. I'm sorry if this is long.", False),
    ("I'm afraid of spiders, but here is the answer.", False),
    ("", False),
])
def test_phrase_judge_reads_only_the_opening(answer, refused):
    assert phrase_judge(answer).refused is refused


def test_opening_is_the_first_sentence_capped():
    assert opening("Hello there. I'm sorry.") == "hello there."
    assert len(opening("x" * 500)) == 160


def test_repetitive_answers_are_flagged():
    assert is_repetitive("I'm sorry, I'm sorry, I'm sorry, I'm sorry, I'm sorry, I'm sorry,")
    assert not is_repetitive("Building a bird feeder is a fun project. First, gather some wood, nails and a saw.")
    assert not is_repetitive("too short")


def test_a_classifier_judge_from_a_local_model(tmp_path):
    from transformers import Qwen3Config, Qwen3ForSequenceClassification

    from sae_core.testing.tiny_models import tiny_tokenizer

    tokenizer = tiny_tokenizer()
    config = Qwen3Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=16, num_labels=2,
                         id2label={0: "NORMAL", 1: "REJECTION"}, label2id={"NORMAL": 0, "REJECTION": 1},
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    Qwen3ForSequenceClassification(config).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    judge = ClassifierJudge(str(tmp_path), "REJECTION", device="cpu")
    verdicts = judge(["I'm sorry, I can't.", "Sure, here you go."])
    assert len(verdicts) == 2 and all(v.reason.split()[0] in ("NORMAL", "REJECTION") for v in verdicts)
    with pytest.raises(Exception, match="has no label 'REFUSED'"):
        ClassifierJudge(str(tmp_path), "REFUSED", device="cpu")


# -- finding features ------------------------------------------------------------------------------

def test_readings_equal_a_direct_encode_at_the_assistant_start_tokens(opened):
    loaded = opened.loaded
    saes = {s: opened.saes[s] for s in list(opened.saes)[:2]}
    rows = prompt_rows(loaded, HARMFUL[:5])
    n = assistant_start_positions(loaded)
    assert n >= 2
    reading = read_sites(loaded, saes, rows, batch_size=2)  # padding across batches must not matter
    for i, (ids, positions) in enumerate(rows):
        assert positions and all(p >= len(ids) - n for p in positions)
        acts = run_to_sites(loaded.model, torch.tensor([ids]), sites=list(saes), layout=loaded.layout)
        for site, sae in saes.items():
            x = acts[site][0, positions]
            torch.testing.assert_close(reading[site].features[i], sae.encode(x).mean(0), rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(reading[site].resid[i], x.mean(0), rtol=1e-4, atol=1e-5)


def test_ranking_matches_a_direct_computation():
    g = torch.Generator().manual_seed(0)
    a = torch.relu(torch.randn(12, 30, generator=g) + 0.3)
    b = torch.relu(torch.randn(9, 30, generator=g))
    a[:, 7] += 2.0  # a clear winner
    w_dec = torch.nn.functional.normalize(torch.randn(30, 16, generator=g), dim=-1)
    direction = torch.randn(16, generator=g)
    ranked = rank_features(a, b, direction, w_dec, top=30)
    assert ranked["feature"].iloc[0] == 7
    for row in ranked.itertuples():
        f = row.feature
        diff = float(a[:, f].mean() - b[:, f].mean())
        pooled = math.sqrt((11 * float(a[:, f].var()) + 8 * float(b[:, f].var())) / 19)
        assert row.diff == pytest.approx(diff, abs=1e-5)
        assert row.effect == pytest.approx(diff / pooled if pooled > 1e-8 else 0.0, rel=1e-4, abs=1e-6)
        assert row.cos_direction == pytest.approx(float(w_dec[f] @ direction / direction.norm()), abs=1e-5)
    assert list(ranked["diff"]) == sorted(ranked["diff"], reverse=True)
    by_effect = ranked.sort_values("rank_by_effect")
    assert list(by_effect["effect"]) == sorted(by_effect["effect"], reverse=True)


def test_contrast_direction_is_the_difference_of_mean_residuals(opened):
    loaded, saes = opened.loaded, dict(list(opened.saes.items())[:1])
    a = read_sites(loaded, saes, prompt_rows(loaded, HARMFUL[:4]))
    b = read_sites(loaded, saes, prompt_rows(loaded, HARMFUL[4:8]))
    site = next(iter(saes))
    found = contrast(saes, a, b, top=5)[site.short]
    torch.testing.assert_close(found.direction, a[site].resid.mean(0) - b[site].resid.mean(0))
    assert (found.n_a, found.n_b) == (4, 4) and len(found.features) == 5


def test_answer_contrast_needs_refusals(monkeypatch, opened, tmp_path):
    harmful, harmless = write_prompt_files(tmp_path)
    cfg = StudyConfig(harmful=str(harmful), harmless=str(harmless), max_new_tokens=3, top=5)
    results = find_features(opened, cfg, None, log=lambda m: None)  # the random model never refuses
    assert list(results.contrasts) == ["prompt"] and "answer contrast skipped" in results.notes[0]
    monkeypatch.setattr("sae_core.refusal.study.judge_all", alternate_refusals)
    results = find_features(opened, cfg, None, log=lambda m: None)
    assert list(results.contrasts) == ["prompt", "answer"] and not results.notes
    assert results.contrasts["answer"][results.steer_site].n_a == 3  # 6 discovery prompts, every other refused


# -- steering and ablation -------------------------------------------------------------------------

def test_steering_adds_exactly_alpha_times_the_direction(opened):
    loaded = opened.loaded
    site, sae = next(iter(opened.saes.items()))
    direction = features_direction(sae, [3])
    torch.testing.assert_close(direction, sae.W_dec[3].detach() / sae.W_dec[3].norm())
    ids = torch.tensor([prompt_rows(loaded, HARMFUL[:1])[0][0]])
    with capture(loaded.model, [site], layout=loaded.layout, stop_early=False) as plain:
        loaded.model(ids)
    with row_edits(loaded, site, [add(direction, 2.5)]), capture(loaded.model, [site], layout=loaded.layout, stop_early=False) as steered:
        loaded.model(ids)
    torch.testing.assert_close(steered[site] - plain[site], (2.5 * direction).expand_as(plain[site]), rtol=0, atol=1e-5)


def test_alpha_zero_leaves_generation_unchanged(opened):
    loaded = opened.loaded
    site, sae = next(iter(opened.saes.items()))
    direction = features_direction(sae, [1, 2])
    plain = generate_answers(loaded, HARMFUL[:4], max_new_tokens=6, batch_size=3)
    zero = generate_answers(loaded, HARMFUL[:4], [add(direction, 0.0)] * 4, site, max_new_tokens=6, batch_size=3)
    strong = generate_answers(loaded, HARMFUL[:4], [add(direction, 50.0)] * 4, site, max_new_tokens=6, batch_size=3)
    assert zero == plain and strong != plain
    one_by_one = [generate_answers(loaded, [m], max_new_tokens=6)[0] for m in HARMFUL[:4]]
    assert one_by_one == plain  # left padding does not change greedy answers


def test_conditions_sharing_a_batch_equal_each_condition_alone(opened):
    loaded = opened.loaded
    site, sae = next(iter(opened.saes.items()))
    edits = [None, add(features_direction(sae, [1]), 30.0), ablate_direction(torch.ones(sae.cfg.d_in)),
             add(features_direction(sae, [2]), -30.0)]
    messages = HARMFUL[:4]
    mixed = generate_answers(loaded, messages, edits, site, max_new_tokens=6, batch_size=4)
    alone = [generate_answers(loaded, [m], [e], site, max_new_tokens=6)[0] for m, e in zip(messages, edits)]
    assert mixed == alone and len(set(mixed)) > 1


def test_ablations_remove_the_features_and_the_direction(opened):
    loaded = opened.loaded
    site, sae = next(iter(opened.saes.items()))
    ids = torch.tensor([prompt_rows(loaded, HARMFUL[:1])[0][0]])
    with capture(loaded.model, [site], layout=loaded.layout, stop_early=False) as plain:
        loaded.model(ids)
    x = plain[site]
    with row_edits(loaded, site, [ablate_features(sae, [0, 4])]), capture(loaded.model, [site], layout=loaded.layout, stop_early=False) as out:
        loaded.model(ids)
    acts = sae.encode(x)[..., [0, 4]]
    torch.testing.assert_close(out[site], x - acts @ sae.W_dec[[0, 4]], rtol=1e-5, atol=1e-5)
    r = torch.randn(x.shape[-1])
    with row_edits(loaded, site, [ablate_direction(r)]), capture(loaded.model, [site], layout=loaded.layout, stop_early=False) as out:
        loaded.model(ids)
    assert (out[site] @ (r / r.norm())).abs().max() < 1e-4


def test_answer_nll_equals_a_direct_computation(opened):
    loaded = opened.loaded
    messages, answers = HARMFUL[:3], ["some answer here", "x", ""]
    got = answer_nll(loaded, messages, answers, batch_size=2)
    for value, message, answer in zip(got, messages, answers):
        ids, start = answer_token_ids(loaded, message, answer)
        if len(ids) == start:
            assert math.isnan(value)
            continue
        logp = torch.log_softmax(loaded.model(torch.tensor([ids])).logits[0].float(), -1)
        expected = -logp[start - 1 : len(ids) - 1].gather(-1, torch.tensor(ids[start:])[:, None]).mean()
        assert value == pytest.approx(float(expected), rel=1e-4)


# -- the whole study -------------------------------------------------------------------------------

def test_the_study_writes_its_files_and_report(refusal_run):
    folder = refusal_dir(refusal_run)
    for name in ("features.json", "directions.safetensors", "answers.jsonl", "report.md", "report.html"):
        assert (folder / name).is_file(), name
    results = RefusalResults.load(folder)
    assert set(results.contrasts) == {"prompt", "answer"} and results.steer_site == "L0R"
    conditions = {c["condition"] for c in results.conditions}
    assert {"baseline, harmful", "baseline, harmless"} <= conditions
    assert sum(c.get("ablation", False) for c in results.conditions) == 4  # top-k and difference of means, per contrast
    best = best_steering(results)
    assert len(best) == 6 and set(best["alpha"]) <= {0.0, 0.5, 2.0}
    answers = [json.loads(line) for line in (folder / "answers.jsonl").read_text().splitlines()]
    assert {a["stage"] for a in answers} == {"discovery", "heldout"}
    report = (folder / "report.md").read_text()
    assert "## Steering harmless prompts toward refusal" in report and "difference of means" in report
    assert "| no ablation |" in report and "repetitive" in report
    assert "plotly" in (folder / "report.html").read_text()


def test_marks_and_presets_for_the_app(refusal_run, tiny_loaded):
    features = refusal_features(refusal_run)
    assert set(features) == {"L0R"} and list(features["L0R"]["rank"])[:3] == [1, 2, 3]
    marks = refusal_marks(refusal_run)
    first = int(features["L0R"]["feature"].iloc[0])
    assert marks[("L0R", first)].startswith("refusal feature: prompt contrast #1")
    opened = open_run_saes(refusal_run, loaded=tiny_loaded, log=lambda m: None)
    presets = refusal_presets(refusal_run, opened.saes)
    assert set(presets) == {f"refusal, prompt: feature #{first}", "refusal, prompt: top-3 features",
                            f"refusal, answer: feature #{refusal_features(refusal_run, 'answer')['L0R']['feature'].iloc[0]}",
                            "refusal, answer: top-3 features"}
    # the top-3 preset's edits add up to the study's unit direction times its strength
    edits = presets["refusal, prompt: top-3 features"]
    sae = next(iter(opened.saes.values()))
    total = sum(e.strength * sae.W_dec[e.feature].detach() for e in edits)
    data = json.loads((refusal_dir(refusal_run) / "features.json").read_text())
    top = data["contrasts"]["prompt"]["L0R"]["features"][:3]
    expected = features_direction(sae, [r["feature"] for r in top], [r["diff"] for r in top])
    torch.testing.assert_close(total / total.norm(), expected, rtol=1e-4, atol=1e-5)
    assert refusal_features(refusal_run.parent / "no-such-run") == {} and refusal_marks(refusal_run.parent) == {}


def test_cli_explains_bad_prompt_files_and_a_missing_study(refusal_run, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json}\n")
    assert main(["refusal", "find", str(refusal_run), "--harmful", str(bad)]) == 2
    assert "line 1: not valid JSON" in capsys.readouterr().err
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    assert main(["refusal", "find", str(refusal_run), "--harmless", str(empty)]) == 2
    assert "no prompt column" in capsys.readouterr().err
    assert main(["refusal", "steer", str(tmp_path)]) == 2
    assert "refusal find" in capsys.readouterr().err
    assert main(["refusal", "report", str(refusal_run)]) == 0


def test_the_study_leaves_annotations_and_report_rewrites_them_without_the_model(refusal_run, tmp_path):
    import shutil

    from sae_core.features.annotations import merged, presets, read_annotations
    from sae_core.refusal.annotate import LIST, SOURCE, write_refusal_annotations

    (study,), problems = read_annotations(refusal_run)
    assert not problems and study.source == SOURCE
    marks = refusal_marks(refusal_run)
    assert {(n.sae, n.feature): n.text for n in study.notes} == marks and set(study.lists[LIST]) == set(marks)
    assert all(merged([study])[key].tags == ["refusal"] for key in marks)
    copy = tmp_path / "copy"
    shutil.copytree(refusal_run, copy)
    shutil.rmtree(copy / "annotations")
    assert write_refusal_annotations(copy) is not None  # only the steering SAE is read: no model
    rewritten = read_annotations(copy)[0]
    assert presets(rewritten).keys() == presets([study]).keys()
    for name, preset in presets([study]).items():
        assert [(e.sae, e.feature, e.mode) for e in presets(rewritten)[name].edits] == [(e.sae, e.feature, e.mode) for e in preset.edits]
        torch.testing.assert_close(torch.tensor([e.strength for e in presets(rewritten)[name].edits]),
                                   torch.tensor([e.strength for e in preset.edits]), rtol=1e-5, atol=1e-6)
    assert write_refusal_annotations(tmp_path) is None  # no study, nothing written
