"""The learned layer of the refusal detector: features of one answer and the shipped three-outcome model.

The rules in `refusal_rules.yaml` stay the explainable part: which rules fire, where, and whether a task
label is stated become named features. Beside them the model reads hashed character and word n-grams of
the answer's opening (the read window) and a few shape features that mark non-answers (repetition,
non-Latin text, nothing said). A multinomial logistic regression over these gives refusal / compliance /
non_answer. Its weights ship as JSON (`answer_model.json`: plain numbers, reviewable, no pickle), written by
`scripts/train_detector.py`; hashing is stateless (scikit-learn's murmur3 `HashingVectorizer`), so the same
text gives the same features in every process.
"""

from __future__ import annotations

import hashlib
import json
import re
import string
from collections import Counter
from dataclasses import dataclass
from functools import cached_property, lru_cache
from importlib.resources import files
from typing import Any, Mapping, Sequence

import numpy as np
from scipy.sparse import csr_matrix

from falserefusal.types import OUTCOMES, FalseRefusalError

MODEL_RESOURCE = "answer_model.json"
#: feature-set version: bump when `shape_features` or the n-gram settings change (the weights must be retrained)
FEATURES_VERSION = 1

_WORD = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)?", re.UNICODE)
# letters are counted by deleting everything else (one pass in C, no list of one-character strings)
_DROP_ASCII_LETTERS = str.maketrans("", "", string.ascii_letters)
_NOT_LATIN = re.compile(r"[^A-Za-z]+")
_NOT_LETTER = re.compile(r"[\W\d_]+", re.UNICODE)
_SENTENCE_SPLIT = re.compile(r"(?<=[.!?])\s+|\n+")
_AS_PERSONA = re.compile(r"^\W*(?:well,?\s+|oh,?\s+)?as\s+(?:an?|the|someone|somebody)\b", re.I)


def shape_features(text: str) -> dict[str, float]:
    """Features of the answer's form, not its wording: what repetition loops, echoes and gibberish look like."""
    stripped = text.strip()
    features: dict[str, float] = {}
    if not stripped:
        features["shape:empty"] = 1.0
        return features
    ascii_only = stripped.isascii()  # then lower-casing first is the same and faster, and every letter is Latin
    words = _WORD.findall(stripped.lower()) if ascii_only else [w.lower() for w in _WORD.findall(stripped)]
    n_words = len(words)
    features[f"shape:words_{_bucket(n_words, (0, 1, 3, 8, 20, 50))}"] = 1.0
    if n_words:
        features["shape:distinct_word_share"] = len(set(words)) / n_words
        if n_words >= 3:
            counts = Counter(zip(words, words[1:], words[2:]))  # the word trigrams
            features["shape:repeated_trigram_share"] = sum(c for c in counts.values() if c > 1) / (n_words - 2)
    sentences = [s.strip().lower() for s in _SENTENCE_SPLIT.split(stripped) if s.strip()]
    if len(sentences) > 1:
        features["shape:repeated_sentence_share"] = 1.0 - len(set(sentences)) / len(sentences)
    if ascii_only:  # deleting the letters is one fast pass
        letters = latin = len(stripped) - len(stripped.translate(_DROP_ASCII_LETTERS))
    else:
        letters, latin = len(_NOT_LETTER.sub("", stripped)), len(_NOT_LATIN.sub("", stripped))
    if letters:
        features["shape:non_latin_share"] = 1.0 - latin / letters
    else:
        features["shape:no_letters"] = 1.0
    if _AS_PERSONA.search(stripped):
        features["shape:opens_as_someone"] = 1.0
    if not re.search(r"[.!?]", stripped):
        features["shape:no_sentence_end"] = 1.0
    return features


def _bucket(value: int, edges: Sequence[int]) -> str:
    for edge in edges:
        if value <= edge:
            return f"le{edge}"
    return f"gt{edges[-1]}"


@dataclass(frozen=True)
class AnswerModel:
    """The shipped multinomial logistic model: named features + hashed n-grams -> outcome probabilities."""

    classes: tuple[str, ...]
    window: int  # characters of the answer the model reads
    named: Mapping[str, np.ndarray]  # feature name -> weights per class
    char_weights: np.ndarray  # (n_char_features, n_classes)
    word_weights: np.ndarray
    intercept: np.ndarray
    char_ngrams: tuple[int, int] | None  # None: the model reads no character n-grams
    word_ngrams: tuple[int, int]
    n_hash: int
    digest: str  # sha256 of the weights file: part of the detector version
    metadata: Mapping[str, Any]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], digest: str) -> "AnswerModel":
        if data.get("features_version") != FEATURES_VERSION:
            raise FalseRefusalError(
                f"answer model: features version {data.get('features_version')} != {FEATURES_VERSION}; "
                "fix: retrain with scripts/train_detector.py"
            )
        classes = tuple(data["classes"])
        if set(classes) != set(OUTCOMES):
            raise FalseRefusalError(f"answer model: classes {classes} are not {OUTCOMES}; fix: retrain")
        k = len(classes)
        n_hash = int(data["n_hash"])
        char = np.zeros((n_hash if data.get("char_ngrams") else 0, k))
        word = np.zeros((n_hash, k))
        for index, weights in data["char_weights"].items():
            char[int(index)] = weights
        for index, weights in data["word_weights"].items():
            word[int(index)] = weights
        named = {name: np.asarray(weights, dtype=float) for name, weights in data["named_weights"].items()}
        return cls(
            classes=classes,
            window=int(data["window"]),
            named=named,
            char_weights=char,
            word_weights=word,
            intercept=np.asarray(data["intercept"], dtype=float),
            char_ngrams=(int(data["char_ngrams"][0]), int(data["char_ngrams"][1])) if data.get("char_ngrams") else None,
            word_ngrams=(int(data["word_ngrams"][0]), int(data["word_ngrams"][1])),
            n_hash=n_hash,
            digest=digest,
            metadata=dict(data.get("metadata", {})),
        )

    @cached_property
    def _named_columns(self) -> tuple[dict[str, int], np.ndarray]:
        """Named feature -> column, and the weights as a (features, classes) matrix."""
        names = list(self.named)
        weights = np.array([self.named[name] for name in names], dtype=float).reshape(len(names), len(self.classes))
        return {name: column for column, name in enumerate(names)}, weights

    def vectorizers(self) -> tuple[Any, Any]:
        return hashing_vectorizers(self.n_hash, self.char_ngrams, self.word_ngrams)

    def probabilities(self, windows: Sequence[str], named: Sequence[Mapping[str, float]]) -> np.ndarray:
        """Outcome probabilities (rows: answers, columns: `classes`) from window texts and named features."""
        char_vec, word_vec = self.vectorizers()
        scores = np.tile(self.intercept, (len(windows), 1))
        if windows:
            if char_vec is not None:
                scores += char_vec.transform(windows) @ self.char_weights
            scores += word_vec.transform(windows) @ self.word_weights
        # the named features of all answers as one sparse matrix, so their weights are one product too
        columns, named_weights = self._named_columns
        rows, cols, values = [], [], []
        for row, features in enumerate(named):
            for name, value in features.items():
                column = columns.get(name)
                if column is not None:
                    rows.append(row)
                    cols.append(column)
                    values.append(value)
        if values:
            scores += csr_matrix((values, (rows, cols)), shape=(len(named), len(columns))) @ named_weights
        scores -= scores.max(axis=1, keepdims=True)
        exp = np.exp(scores)
        return exp / exp.sum(axis=1, keepdims=True)


@lru_cache(maxsize=4)
def hashing_vectorizers(
    n_hash: int, char_ngrams: tuple[int, int] | None, word_ngrams: tuple[int, int]
) -> tuple[Any, Any]:
    """The stateless n-gram hashers shared by training and inference (scikit-learn is imported here only)."""
    from sklearn.feature_extraction.text import HashingVectorizer

    common: dict[str, Any] = dict(n_features=n_hash, alternate_sign=False, norm="l2", lowercase=True, dtype=np.float64)
    char = HashingVectorizer(analyzer="char_wb", ngram_range=char_ngrams, **common) if char_ngrams else None
    word = HashingVectorizer(analyzer="word", ngram_range=word_ngrams, token_pattern=r"(?u)\b\w+\b|[^\w\s]", **common)
    return char, word


@lru_cache(maxsize=1)
def default_answer_model() -> AnswerModel | None:
    """The packaged model, or None when the package ships none (rules alone then decide)."""
    resource = files("falserefusal.detection") / MODEL_RESOURCE
    if not resource.is_file():
        return None
    raw = resource.read_bytes()
    return AnswerModel.from_dict(json.loads(raw), hashlib.sha256(raw).hexdigest())
