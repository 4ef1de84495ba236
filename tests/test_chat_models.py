"""The local chat model: shared-prefix scoring against a plain forward pass per chat, batched generation."""

from __future__ import annotations

import torch

from sae_core.interp.chat_models import LocalChatModel, answer_token_ids, render
from sae_core.interp.prompts import detection_messages, fuzzing_messages
from sae_core.interp.samples import Context


def _plain_yes(loaded, model, messages):
    ids = loaded.tokenizer(render(loaded.tokenizer, messages), add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        p = loaded.model(input_ids=torch.tensor([ids])).logits[0, -1].float().softmax(-1)
    yes, no = p[model._yes].sum(), p[model._no].sum()
    return float(yes / (yes + no))


def test_shared_prefix_scoring_equals_a_plain_forward_per_chat(tiny_loaded):
    texts = ["the river flows", "a mountain city of music and science history", "x", "ocean garden planet energy market"]
    contexts = [Context(t.split(" "), [1.0] * len(t.split(" ")), 1, i) for i, t in enumerate(texts)]
    groups = [[detection_messages(e, c) for c in contexts] for e in ("river words", "music", "a much longer explanation here")]
    groups.append([fuzzing_messages("music", c, [True] + [False] * (len(c.tokens) - 1)) for c in contexts])
    groups.append([])
    model = LocalChatModel(tiny_loaded, batch_size=3)  # 4 chats per group: a full batch and a partial one
    got = model.yes_probabilities(groups)
    assert got[-1] == []
    for group, answers in zip(groups, got):
        for messages, p in zip(group, answers):
            assert abs(p - _plain_yes(tiny_loaded, model, messages)) < 1e-5


def test_generation_is_the_same_batched_or_alone(tiny_loaded):
    chats = [[{"role": "user", "content": t}] for t in ("short", "a much longer message than the first one", "mid length")]
    batched = LocalChatModel(tiny_loaded, batch_size=3).generate(chats, 6)
    alone = LocalChatModel(tiny_loaded, batch_size=1).generate(chats, 6)
    assert len(batched) == 3 and all(isinstance(r, str) for r in batched)
    assert batched == alone


def test_answer_tokens_fall_back_to_the_first_token_of_the_word(tiny_loaded):
    yes, no = answer_token_ids(tiny_loaded.tokenizer)
    assert yes and no and not set(yes) & set(no)
