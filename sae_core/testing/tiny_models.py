"""Tiny random models and a tiny tokenizer, built offline from a config, for tests and benchmarks.

Nothing here touches the Hugging Face Hub: the tokenizer is a byte-level BPE trained in
memory on a few sentences, and the models are randomly initialised from small configs of
each supported family.
"""

from __future__ import annotations

import copy
from functools import cache

import torch
from transformers import AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerFast

FAMILIES = ("llama", "qwen2", "qwen3", "mistral", "gemma", "gemma2", "gemma3", "gpt2")

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_TRAINING_TEXT = [
    "The quick brown fox jumps over the lazy dog.",
    "Sparse autoencoders decompose activations into interpretable features.",
    "Language models predict the next token from the tokens before it.",
    "She sells sea shells by the sea shore, and the shells are sold in shops.",
    "In 1492, Columbus sailed the ocean blue; in 1969, people walked on the moon!",
    "What is the capital of France? Paris is the capital of France.",
    "def add(a, b):\n    return a + b\n",
]


def tiny_tokenizer(vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer with ChatML special tokens and chat template (no BOS added).

    Each call returns a fresh copy, so one caller's settings (e.g. padding) never leak into another's.
    """
    return copy.deepcopy(_trained_tokenizer(vocab_size))


@cache
def _trained_tokenizer(vocab_size: int) -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_TRAINING_TEXT * 20, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        model_max_length=256,
    )
    fast.chat_template = CHATML_TEMPLATE
    return fast


def tiny_config(family: str, n_layers: int = 2, d_model: int = 64, vocab_size: int = 512):
    """A small config of one supported family (`FAMILIES`)."""
    from transformers import (
        Gemma2Config,
        Gemma3TextConfig,
        GemmaConfig,
        GPT2Config,
        LlamaConfig,
        MistralConfig,
        Qwen2Config,
        Qwen3Config,
    )

    if family == "gpt2":
        return GPT2Config(
            n_layer=n_layers, n_embd=d_model, n_head=4, vocab_size=vocab_size, n_positions=256,
            bos_token_id=1, eos_token_id=2,
        )
    classes = {
        "llama": LlamaConfig,
        "qwen2": Qwen2Config,
        "qwen3": Qwen3Config,
        "mistral": MistralConfig,
        "gemma": GemmaConfig,
        "gemma2": Gemma2Config,
        "gemma3": Gemma3TextConfig,
    }
    if family not in classes:
        raise ValueError(f"unknown tiny model family {family!r}; expected one of {FAMILIES}")
    return classes[family](
        num_hidden_layers=n_layers,
        hidden_size=d_model,
        intermediate_size=2 * d_model,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=d_model // 4,
        vocab_size=vocab_size,
        max_position_embeddings=256,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )


def tiny_model(
    family: str = "qwen3", n_layers: int = 2, d_model: int = 64, seed: int = 0
) -> PreTrainedModel:
    """A randomly initialised causal LM of `family` in float32 eval mode, deterministic in `seed`."""
    torch.manual_seed(seed)
    vocab_size = len(tiny_tokenizer())
    model = AutoModelForCausalLM.from_config(
        tiny_config(family, n_layers, d_model, vocab_size), dtype=torch.float32
    )
    model.config.name_or_path = f"tiny-{family}"
    return model.eval()
