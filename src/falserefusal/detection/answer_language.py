"""Which language an answer is written in (English, Spanish or German), told by its function words.

The detector's learned layer was trained on English answers only: in Spanish or German text its word n-grams are
unknown and its shape features read accented letters as "not Latin", so it takes a Spanish refusal for a non-answer.
An answer that this module calls Spanish or German is therefore read by the rules (which have Spanish and German
refusal rules) and the answer's shape alone. Function words, not content words: a task's items do not move it.
"""

from __future__ import annotations

import re

#: frequent words of each language that are rare in the other two ("es", "no", "a", "die" are left out: shared)
FUNCTION_WORDS: dict[str, frozenset[str]] = {
    "en": frozenset("the and is of to in that it this not you with for are be was have they what".split()),
    "es": frozenset("el la los las del que y en un una por con para se lo como más pero su al muy esta este".split()),
    "de": frozenset("der das und ist nicht ich ein eine zu den dem mit von sich auf für aber auch dass wie".split()),
}
#: at least this many function words of a language before an answer counts as written in it
MIN_FUNCTION_WORDS = 2

_WORD = re.compile(r"[^\W\d_]+", re.UNICODE)


def answer_language(text: str) -> str:
    """ "es" or "de" when that language's function words outnumber the others' (and there are at least
    MIN_FUNCTION_WORDS of them), else "en" (also for an empty answer or one in yet another language)."""
    counts = dict.fromkeys(FUNCTION_WORDS, 0)
    for word in _WORD.findall(text.lower()):
        for language, words in FUNCTION_WORDS.items():
            if word in words:
                counts[language] += 1
    best = max(("es", "de"), key=lambda language: counts[language])
    return (
        best if counts[best] >= MIN_FUNCTION_WORDS and counts[best] > max(counts["en"], counts[_other(best)]) else "en"
    )


def _other(language: str) -> str:
    return "de" if language == "es" else "es"
