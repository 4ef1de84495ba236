"""From documents to packed contexts: chat rendering, tokenization, packing, the real-token mask, batches."""

from __future__ import annotations

import copy

import pytest
import torch
from tokenizers.processors import TemplateProcessing
from transformers import PreTrainedTokenizerFast

from sae_core.errors import CorpusError, UserError
from sae_core.testing.tiny_models import tiny_tokenizer
from sae_core.text.corpus import Document
from sae_core.text.tokens import (
    TokenBatch,
    check_context_size,
    context_prefix,
    document_ids,
    pack_contexts,
    real_token_mask,
    render_chat,
    special_token_ids,
    token_batches,
)

CHAT = (
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris."},
)
PAD, IM_START, IM_END = 0, 1, 2  # the tiny tokenizer's special tokens; EOS is <|im_end|>


def variant(**special_tokens) -> PreTrainedTokenizerFast:
    """The tiny tokenizer's vocabulary with other special tokens (the cached one stays untouched)."""
    backend = copy.deepcopy(tiny_tokenizer().backend_tokenizer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, **special_tokens)


def ids_of(*chars: str) -> list[int]:
    return tiny_tokenizer().convert_tokens_to_ids(list(chars))


# ---------------------------------------------------------------- chat and document ids


def test_render_chat_uses_the_template():
    assert render_chat(CHAT, tiny_tokenizer()) == (
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
        "<|im_start|>assistant\nParis.<|im_end|>\n"
    )


def test_render_chat_without_template_names_the_problem():
    with pytest.raises(CorpusError, match="no chat template.*plain text"):
        render_chat(CHAT, variant(eos_token="<|im_end|>"))


def test_a_base_model_reads_chat_records_as_plain_text(capsys):
    tok = variant(eos_token="<|im_end|>")
    tok.chat_template = None
    tok.name_or_path = "base-model-under-test"
    ids = document_ids(Document(messages=CHAT), tok)
    assert ids == tok("User: What is the capital of France?\n\nAssistant: Paris.", add_special_tokens=True)["input_ids"]
    document_ids(Document(messages=CHAT), tok)
    notices = [line for line in capsys.readouterr().err.splitlines() if "base-model-under-test" in line]
    assert notices == ["note: base-model-under-test has no chat template, so chat records are read as plain text "
                       '("User: …" and "Assistant: …" turns separated by blank lines; docs/corpus.md)']


def test_document_ids_of_text_and_chat():
    tok = tiny_tokenizer()
    text = "The quick brown fox"
    assert document_ids(Document(text=text), tok) == tok(text)["input_ids"]
    chat_ids = document_ids(Document(messages=CHAT), tok)
    assert chat_ids == tok(render_chat(CHAT, tok), add_special_tokens=False)["input_ids"]
    assert chat_ids[0] == IM_START and chat_ids.count(IM_START) == 2 and chat_ids.count(IM_END) == 2


def test_document_ids_add_bos_where_the_tokenizer_does():
    tok = variant(bos_token="<|im_start|>", eos_token="<|im_end|>")
    tok.backend_tokenizer.post_processor = TemplateProcessing(
        single="<|im_start|> $A", special_tokens=[("<|im_start|>", 1)]
    )
    tok.chat_template = tiny_tokenizer().chat_template
    assert document_ids(Document(text="a"), tok) == [IM_START, *ids_of("a")]
    chat_ids = document_ids(Document(messages=CHAT[:1]), tok)  # the template's markers only, no BOS on top
    assert chat_ids[0] == IM_START and chat_ids.count(IM_START) == 1


# ---------------------------------------------------------------- packing


def test_pack_contexts_hand_example():
    a, b, c = ids_of("a", "b", "c")
    docs = [Document(text="a"), Document(text="bc"), Document(text="c")]
    # stream: a EOS b c EOS c EOS -> contexts of 3, remainder [EOS] dropped
    assert [t.tolist() for t in pack_contexts(docs, tiny_tokenizer(), 3)] == [
        [a, IM_END, b],
        [c, IM_END, c],
    ]
    assert [t.tolist() for t in pack_contexts(docs, tiny_tokenizer(), 2)] == [
        [a, IM_END],
        [b, c],
        [IM_END, c],
    ]
    assert list(pack_contexts(docs, tiny_tokenizer(), 8)) == []  # 7 tokens: nothing full


def test_every_context_starts_with_bos_where_the_model_expects_it():
    tok = variant(bos_token="<|im_start|>", eos_token="<|im_end|>")
    tok.backend_tokenizer.post_processor = TemplateProcessing(single="<|im_start|> $A", special_tokens=[("<|im_start|>", 1)])
    a, b, c = ids_of("a", "b", "c")
    docs = [Document(text="a"), Document(text="bc"), Document(text="c")]
    # stream without each document's own BOS: a EOS b c EOS c EOS; each context is BOS + 2 of it
    assert [t.tolist() for t in pack_contexts(docs, tok, 3)] == [[IM_START, a, IM_END], [IM_START, b, c], [IM_START, IM_END, c]]
    assert context_prefix(tiny_tokenizer()) == []  # a tokenizer that adds no BOS packs as before
    with pytest.raises(ValueError, match="more than 1"):
        list(pack_contexts(docs, tok, 1))


def test_pack_contexts_without_eos_has_no_separator():
    a, b, c = ids_of("a", "b", "c")
    docs = [Document(text="a"), Document(text="bc"), Document(text="c")]
    assert [t.tolist() for t in pack_contexts(docs, variant(), 2)] == [[a, b], [c, c]]


def test_pack_contexts_matches_per_document_ids_across_tokenize_batches():
    tok = tiny_tokenizer()
    docs = [
        Document(messages=CHAT) if i % 7 == 0 else Document(text=f"The fox {i} jumps.") for i in range(150)
    ]
    stream = [t for d in docs for t in (*document_ids(d, tok), tok.eos_token_id)]
    contexts = list(pack_contexts(iter(docs), tok, 16))
    assert all(t.shape == (16,) and t.dtype == torch.long for t in contexts)
    assert len(contexts) == len(stream) // 16
    assert torch.cat(contexts).tolist() == stream[: len(contexts) * 16]
    assert torch.equal(
        torch.stack(contexts), torch.stack(list(pack_contexts(docs, tok, 16)))
    )  # deterministic


# ---------------------------------------------------------------- real-token mask and batches


def test_real_token_mask():
    ids = torch.tensor([[5, 6, 2, 7, 1], [8, 9, 10, 0, 0]])
    expected = torch.tensor([[False, True, False, True, False], [False, True, True, False, False]])
    assert torch.equal(real_token_mask(ids, [0, 1, 2]), expected)
    assert torch.equal(real_token_mask(ids, torch.tensor([0, 1, 2])), expected)
    assert real_token_mask(torch.tensor([5, 6]), []).tolist() == [False, True]


def test_real_token_mask_with_padding():
    ids = torch.tensor([[0, 0, 5, 6, 7], [5, 6, 7, 8, 9]])  # row 0 left-padded, row 1 right-padded
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 0]])
    real = real_token_mask(ids, [], attention_mask=mask)
    # padding, position 0 and each row's first attended token are never real
    assert real.tolist() == [[False, False, False, True, True], [False, True, True, True, False]]


def test_token_batches_shapes_and_masks():
    tok = tiny_tokenizer()
    docs = [
        Document(messages=CHAT) if i % 3 == 0 else Document(text=f"Sparse autoencoders {i}.")
        for i in range(40)
    ]
    batches = list(token_batches(docs, tok, context_size=12, batch_size=4))
    n_contexts = len(list(pack_contexts(docs, tok, 12)))
    assert [b.input_ids.shape[0] for b in batches] == [4] * (n_contexts // 4) + (
        [n_contexts % 4] if n_contexts % 4 else []
    )
    for batch in batches:
        assert isinstance(batch, TokenBatch)
        assert batch.input_ids.shape == batch.attention_mask.shape == batch.real.shape
        assert batch.input_ids.shape[1] == 12
        assert (
            batch.input_ids.dtype == batch.attention_mask.dtype == torch.long
            and batch.real.dtype == torch.bool
        )
        assert bool(batch.attention_mask.all())
        special = torch.isin(batch.input_ids, torch.tensor([PAD, IM_START, IM_END]))
        assert not batch.real[:, 0].any()
        assert torch.equal(batch.real[:, 1:], ~special[:, 1:])


def test_special_token_ids_include_chat_markers():
    assert special_token_ids(tiny_tokenizer()) == [PAD, IM_START, IM_END]


# ---------------------------------------------------------------- context size


def test_check_context_size():
    check_context_size(128, 2048, "tiny")
    check_context_size(4096, None, "tiny")
    with pytest.raises(
        UserError,
        match="context size 4096 is above tiny's maximum of 2048 positions; pass --context-size 2048 or less",
    ):
        check_context_size(4096, 2048, "tiny")
    with pytest.raises(UserError, match="context size 1 is too small.*--context-size 2 or more"):
        check_context_size(1, 2048, "tiny")
