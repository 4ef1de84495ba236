"""Stand-ins for an explainer and a scorer that follow their instructions perfectly: known answers for tests."""

from __future__ import annotations

import re

TOKEN = "iv"
"""The token (inside "river") the constructed feature of the river run fires on, if a linear read-out separates it."""


class KeywordScorer:
    """A scorer that follows its instructions perfectly: the first quoted word of the explanation is what fires.

    Detection: Yes iff the text contains the word. Fuzzing: Yes iff every marked span contains it.
    """

    name = "keyword-scorer"

    def generate(self, conversations, max_new_tokens):
        raise AssertionError("a scorer is never asked to generate")

    def yes_probabilities(self, groups):
        out = []
        for group in groups:
            answers = []
            for messages in group:
                text = messages[-1]["content"]
                explanation, _, rest = text.partition("\n")
                word = (re.findall(r'"([^"]+)"', explanation) or ["\0"])[0]
                context = rest.split("Text: ", 1)[1]
                spans = re.findall(r"<<(.*?)>>", context)
                if spans:
                    answers.append(float(all(word in s for s in spans)))
                else:
                    answers.append(float(word in context))
            out.append(answers)
        return out


class CannedExplainer:
    """Explains the river feature rightly, the others with `other` (words that never occur); counts what it is asked."""

    name = "canned-explainer"

    def __init__(self, fail_after: int | None = None, other: str = 'The token "zzz".', token: str = TOKEN):
        self.asked: list[str] = []
        self.fail_after = fail_after
        self.other = other
        self.token = token

    def generate(self, conversations, max_new_tokens):
        if self.fail_after is not None and len(self.asked) >= self.fail_after:
            raise KeyboardInterrupt  # what a kill looks like to the job
        replies = []
        for messages in conversations:
            task = messages[-1]["content"]
            self.asked.append(task)
            replies.append(f'The token "{self.token}" of the corpus.' if f"<<{self.token}>>" in task else self.other)
        return replies
