"""Automatic feature labels."""

from sae_core.features.labels import DEAD_LABEL, display_token, make_label, top_tokens

VOCAB = [" the", "The", " cat", "\n", " dog", " purr", " ", "cat"]


def test_top_tokens_by_frequency_then_first_seen():
    assert top_tokens([2, 4, 4, 0, 2, 1], 2) == [2, 4]
    assert top_tokens([], 3) == []


def test_label_joins_firing_and_promoted_tokens_without_display_duplicates():
    label = make_label([2, 7, 4, 0, 2], [5, 2], VOCAB, dead=False)
    assert label == '"cat" "dog" "the" → "purr" "cat"'


def test_dead_and_whitespace_tokens():
    assert make_label([], [5], VOCAB, dead=True) == DEAD_LABEL
    assert display_token("\n") == "⏎"
    assert display_token(" ") == "' '"
