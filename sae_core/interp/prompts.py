"""The chats an explainer and a scorer read, and how an explainer's reply becomes an explanation.

Adapted from EleutherAI delphi's default explainer and its detection / fuzzing scorers, with one context
per scoring chat (delphi's `n_examples_shown=1`) answered Yes or No, so a local model's answer is read off
its first-token probabilities instead of parsed from a list. Every text from the corpus or from a model
passes through `text.clean_text` first.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from .chat_models import Messages
from .samples import Context
from .text import clean_text, firing_marks, marked_text, one_line, plain_text

PROMPT_VERSION = 1
"""Bumped when a prompt changes: explanations and scores made with other prompts are not resumed."""

EXPLAINER_SYSTEM = (
    "You are a meticulous AI researcher studying one feature of a language model. You see short texts on which "
    "the feature fires; the tokens where it fires most strongly are marked <<like this>>. Below them are the "
    "tokens the feature makes the model predict next.\n"
    "Reply with one short sentence that says what the feature responds to: the kind of marked tokens and the "
    "context around them. Do not mention the << >> marks, do not list the examples and do not explain your reasoning."
)

SCORER_SYSTEM = (
    "You are a meticulous linguistics researcher. A feature of a language model is described by an explanation. "
    "You will judge one short text at a time. Answer with a single word: Yes or No."
)
DETECTION_QUESTION = "Does the feature fire on this text, i.e. does the text contain what the explanation describes?"
FUZZING_QUESTION = ("The tokens marked <<like this>> are said to be where the feature fires. Is every marked token "
                    "an instance of what the explanation describes?")
_DETECTION_SHOTS = [
    ("The word \"guys\" in the phrase \"you guys\".", "du Soleil Fall Protection Program with construction rules", "No"),
    ("Words about American football positions, such as tight end.", "Patriots tight end Rob Gronkowski had his boss", "Yes"),
]
_FUZZING_SHOTS = [
    ("The word \"of\" after a job title.", "the birth<< control>> access, but I assure<< you>> that", "No"),
    ("Words about American football positions, such as tight end.", "Media Day: LSU<< defensive end>> Isaiah Washington", "Yes"),
]


def explainer_messages(shown: Sequence[Context], promoted: Sequence[str]) -> Messages:
    """The explainer's chat: its instructions, then this feature's marked contexts and promoted tokens (no worked
    examples: small explainers copy them)."""
    lines = [f"{i}. {marked_text(c.tokens, firing_marks(c.acts))}" for i, c in enumerate(shown, 1)]
    tokens = ", ".join(f'"{clean_text(t)}"' for t in promoted)
    task = "Examples:\n" + "\n".join(lines) + (f"\nPromoted tokens: {tokens}" if tokens else "")
    return [{"role": "system", "content": EXPLAINER_SYSTEM}, {"role": "user", "content": task}]


def _scoring_messages(explanation: str, text: str, question: str, shots: list[tuple[str, str, str]]) -> Messages:
    messages: Messages = [{"role": "system", "content": SCORER_SYSTEM}]
    for shot_explanation, shot_text, answer in shots:
        messages += [{"role": "user", "content": f"Explanation: {shot_explanation}\n{question}\nText: {shot_text}"},
                     {"role": "assistant", "content": answer}]
    # the text comes last: every chat of one explanation and task shares everything before it
    return messages + [{"role": "user", "content": f"Explanation: {one_line(explanation)}\n{question}\nText: {text}"}]


def detection_messages(explanation: str, context: Context) -> Messages:
    """Does the explanation pick out this (activating or non-activating) context? No marks are shown."""
    return _scoring_messages(explanation, plain_text(context.tokens), DETECTION_QUESTION, _DETECTION_SHOTS)


def fuzzing_messages(explanation: str, context: Context, marked: Sequence[bool]) -> Messages:
    """Are these marks (right for an activating context, random for a non-activating one) where the feature fires?"""
    return _scoring_messages(explanation, marked_text(context.tokens, marked), FUZZING_QUESTION, _FUZZING_SHOTS)


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"“])")
_PREFIX = re.compile(r"^\s*(\[?explanation\]?\s*:|the feature (?:responds to|fires on)\s*:)\s*", re.IGNORECASE)


def parse_explanation(reply: str) -> str:
    """The explanation in a reply: after an `[EXPLANATION]:` tag if there is one, the first sentence of its first
    non-empty line, without marks or wrapping quotes, at most 300 characters ("" when there is nothing)."""
    tagged = re.search(r"\[EXPLANATION\]\s*:\s*(.*)", reply, re.IGNORECASE | re.DOTALL)
    text = tagged.group(1) if tagged else reply
    line = next((ln for ln in text.splitlines() if ln.strip()), "")
    line = _PREFIX.sub("", line).replace("<<", "").replace(">>", "")
    line = _SENTENCE_END.split(line.strip(), maxsplit=1)[0]
    return one_line(line.strip().strip('"“”\'` '))
