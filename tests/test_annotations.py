"""Annotations beside a feature file: producers' files merged, the user's own notes and lists, exports."""

from __future__ import annotations

import json
import threading

import pytest

from sae_core.features.annotations import (
    AnnotationError,
    Annotations,
    Note,
    Preset,
    PresetEdit,
    add_note,
    add_to_list,
    annotations_dir,
    export_list,
    merged,
    presets,
    read_annotations,
    write_annotations,
)


def test_producers_files_round_trip_and_merge(tmp_path):
    study = Annotations("refusal-study", notes=[Note("L1R", 3, "refusal feature: answer contrast #1", ["refusal"])],
                        lists={"refusal features": [("L1R", 3), ("L1R", 9)]},
                        presets=[Preset("refusal, top-2", [PresetEdit("L1R", 3, 2.5), PresetEdit("L1R", 9, 1.25)], "best α")])
    mine = Annotations("user", notes=[Note("L1R", 3, "fires on apologies", ["refusal", "phrasing"])])
    write_annotations(tmp_path, study)
    write_annotations(tmp_path, mine)
    found, problems = read_annotations(tmp_path)
    assert not problems and [a.source for a in found] == ["refusal-study", "user"]
    assert found[0] == study and found[1] == mine  # JSON round trip is lossless
    feature = merged(found)[("L1R", 3)]
    assert feature.notes == [("refusal-study", "refusal feature: answer contrast #1"), ("user", "fires on apologies")]
    assert feature.tags == ["refusal", "phrasing"] and feature.lists == ["refusal features"]
    assert merged(found)[("L1R", 9)].lists == ["refusal features"] and not merged(found)[("L1R", 9)].notes
    assert presets(found)["refusal, top-2"].edits[1] == PresetEdit("L1R", 9, 1.25, "add")


def test_unreadable_files_are_skipped_with_a_message(tmp_path):
    write_annotations(tmp_path, Annotations("good", notes=[Note("L1R", 1, "ok")]))
    (annotations_dir(tmp_path) / "junk.json").write_text("{not json")
    (annotations_dir(tmp_path) / "future.json").write_text(json.dumps({"format_version": 99, "source": "future"}))
    found, problems = read_annotations(tmp_path)
    assert [a.source for a in found] == ["good"]
    assert len(problems) == 2 and any("junk.json" in p for p in problems) and any("newer" in p for p in problems)
    assert read_annotations(tmp_path / "no-such-run") == ([], [])


def test_source_names_cannot_leave_the_folder(tmp_path):
    for bad in ("../evil", "/abs", "", "a/b"):
        with pytest.raises(AnnotationError):
            write_annotations(tmp_path, Annotations(bad))


def test_user_notes_and_lists_persist_and_export(tmp_path):
    with pytest.raises(AnnotationError, match="note or a tag"):
        add_note(tmp_path, "L1R", 3, "  ")
    add_note(tmp_path, "L1R", 3, "fires on apologies")
    add_note(tmp_path, "L1R", 3, tags=["refusal"])
    add_to_list(tmp_path, "to check", "L1R", 3)
    add_to_list(tmp_path, "to check", "L1R", 3)  # listed once
    add_to_list(tmp_path, "to check", "L1M", 7)
    with pytest.raises(AnnotationError):
        add_to_list(tmp_path, " ", "L1R", 3)
    found, _ = read_annotations(tmp_path)
    (user,) = found
    assert user.lists == {"to check": [("L1R", 3), ("L1M", 7)]} and len(user.notes) == 2
    exported = json.loads(export_list(found, "to check"))
    assert exported["list"] == "to check"
    assert exported["features"][0] == {"sae": "L1R", "feature": 3, "notes": ["fires on apologies"], "tags": ["refusal"]}
    with pytest.raises(AnnotationError, match="no list"):
        export_list(found, "nope")


def test_concurrent_sessions_lose_no_note(tmp_path):
    threads = [threading.Thread(target=add_note, args=(tmp_path, "L1R", i, f"note {i}")) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    (user,) = read_annotations(tmp_path)[0]
    assert sorted(n.feature for n in user.notes) == list(range(16))
    assert not list(annotations_dir(tmp_path).glob("*.tmp*"))  # atomic writes leave no temporary file
