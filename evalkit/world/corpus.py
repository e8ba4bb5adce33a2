"""Template corpus with token-level concept labels and long-range structure (induction, key-value recall, code
vars).

One word is one token (the tokenizer is word-level), so labels are attached to words as they are generated.
Labels are
kept as one int bitmask per token (bit i = CONCEPTS[i]) so tens of thousands of sequences stay small;
`labels_bool`
expands a slice to a bool matrix.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import accumulate

import numpy as np

from evalkit.world import words as W

CONCEPTS: tuple[str, ...] = (
    # word classes
    "colour",
    "animal",
    "number_word",
    "number_digit",
    "month",
    "weekday",
    "city",
    "emotion",
    "person_name",
    "food",
    "object",
    "verb",
    "determiner",
    "preposition",
    # context spans
    "in_quotes",
    "in_code",
    "in_parens",
    "question",
    "negated_clause",
    "invented_language",
    # positions and punctuation roles
    "sentence_start",
    "sentence_end",
    "comma",
    "quote_mark",
    "paren_mark",
    "code_symbol",
    # long-range structure
    "induction_copy",
    "kv_key",
    "kv_value",
    "kv_recall",
    "code_var_bind",
    "code_var_use",
)
BIT = {name: 1 << i for i, name in enumerate(CONCEPTS)}

_CLASS_OF_LIST: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("colour", W.COLOURS),
    ("animal", W.ANIMALS),
    ("number_word", W.NUMBER_WORDS),
    ("number_digit", W.NUMBER_DIGITS),
    ("month", W.MONTHS),
    ("weekday", W.WEEKDAYS),
    ("city", W.CITIES),
    ("emotion", W.EMOTIONS),
    ("person_name", W.NAMES),
    ("food", W.FOODS),
    ("object", W.OBJECTS),
    ("verb", W.VERBS + W.MOTION_VERBS),
    ("determiner", W.DETERMINERS),
    ("preposition", W.PREPOSITIONS),
    ("sentence_end", W.SENTENCE_DELIMITERS),
    ("comma", (W.COMMA,)),
)


def _static_labels() -> dict[str, int]:
    """Labels a word carries wherever it appears (its word class)."""
    table: dict[str, int] = {}
    for concept, words in _CLASS_OF_LIST:
        for word in words:
            table[word] = table.get(word, 0) | BIT[concept]
    return table


STATIC = _static_labels()


class _Zipf:
    """Draws from a word list with P(rank r) ∝ 1/r^1.1, so each class has common and rare members."""

    def __init__(self, words: Sequence[str], exponent: float = 1.1) -> None:
        self.words = list(words)
        self.cum = list(accumulate(1.0 / (r + 1) ** exponent for r in range(len(words))))

    def __call__(self, rng: random.Random) -> str:
        return rng.choices(self.words, cum_weights=self.cum)[0]


Z = {
    name: _Zipf(ws)
    for name, ws in (
        ("colour", W.COLOURS),
        ("animal", W.ANIMALS),
        ("number_word", W.NUMBER_WORDS),
        ("digit", W.NUMBER_DIGITS),
        ("month", W.MONTHS),
        ("weekday", W.WEEKDAYS),
        ("city", W.CITIES),
        ("emotion", W.EMOTIONS),
        ("name", W.NAMES),
        ("food", W.FOODS),
        ("object", W.OBJECTS),
        ("verb", W.VERBS),
        ("motion", W.MOTION_VERBS),
        ("adverb", W.ADVERBS),
        ("prep", W.PREPOSITIONS),
        ("det", W.DETERMINERS),
        ("conn", W.CONNECTIVES),
        ("var", W.CODE_VARS),
        ("func", W.CODE_FUNCS),
        ("op", W.CODE_OPS),
        ("invented", W.INVENTED),
        ("key", W.KV_KEYS),
    )
}


class _Writer:
    """Accumulates one sequence's words and label bitmasks, plus the state long-range segments refer back
    to."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.words: list[str] = []
        self.labels: list[int] = []
        self.context = 0  # bits of the spans currently open
        self.sentences: list[tuple[int, int]] = []  # (start, end) of finished prose sentences, for induction copies
        self.kv_pairs: list[tuple[str, str]] = []
        self.used_keys: set[str] = set()

    def emit(self, word: str, extra: int = 0) -> None:
        self.words.append(word)
        self.labels.append(STATIC.get(word, 0) | self.context | extra)

    def pick(self, table: str) -> str:
        return Z[table](self.rng)


# ---- prose
# -------------------------------------------------------------------------------------------------------


def _noun_phrase(w: _Writer, kind: str = "any") -> None:
    rng = w.rng
    if kind == "any" and rng.random() < 0.3:
        w.emit(w.pick("name"))
        return
    if rng.random() < 0.25:
        w.emit(w.pick("number_word" if rng.random() < 0.6 else "digit"))
    else:
        w.emit(w.pick("det"))
    if rng.random() < 0.45:
        w.emit(w.pick("colour"))
    noun = rng.choice(("animal", "object", "food")) if kind == "any" else kind
    w.emit(w.pick(noun))


def _tail(w: _Writer) -> None:
    """Optional place / time / parenthesis after the verb phrase."""
    rng = w.rng
    r = rng.random()
    if r < 0.25:
        w.emit(w.pick("prep"))
        _noun_phrase(w, "object")
    elif r < 0.45:
        w.emit("in" if rng.random() < 0.6 else "on")
        w.emit(w.pick("month") if rng.random() < 0.6 else w.pick("weekday"))
    if rng.random() < 0.12:
        _parenthesis(w)


def _parenthesis(w: _Writer) -> None:
    w.emit(W.LPAREN, BIT["paren_mark"])
    w.context |= BIT["in_parens"]
    if w.rng.random() < 0.5:
        w.emit(w.pick("digit"))
        w.emit(w.pick("food"))
    else:
        w.emit(w.pick("prep"))
        w.emit(w.pick("city"))
    w.context &= ~BIT["in_parens"]
    w.emit(W.RPAREN, BIT["paren_mark"])


def _clause(w: _Writer) -> None:
    rng = w.rng
    r = rng.random()
    if r < 0.5:
        _noun_phrase(w)
        if rng.random() < 0.2:
            w.emit(w.pick("adverb"))
        w.emit(w.pick("verb"))
        _noun_phrase(w)
    elif r < 0.75:
        _noun_phrase(w, "animal" if rng.random() < 0.5 else "any")
        w.emit(w.pick("motion"))
        w.emit("to")
        w.emit(w.pick("city"))
    else:
        w.emit(w.pick("name"))
        w.emit("felt")
        if rng.random() < 0.3:
            w.emit("very")
        w.emit(w.pick("emotion"))
    _tail(w)


def _negated(w: _Writer) -> None:
    _noun_phrase(w)
    w.emit("did")
    w.context |= BIT["negated_clause"]
    w.emit("not")
    w.emit(w.pick("verb"))
    _noun_phrase(w)
    w.context &= ~BIT["negated_clause"]


def _sentence(w: _Writer) -> None:
    """A prose sentence: declarative, negated, question or quoted speech."""
    rng, start = w.rng, len(w.words)
    r = rng.random()
    if r < 0.15:
        w.context |= BIT["question"]
        w.emit(rng.choice(("did", "where", "why", "when")), BIT["sentence_start"])
        _noun_phrase(w)
        w.emit(w.pick("verb") if rng.random() < 0.5 else w.pick("motion"))
        _noun_phrase(w)
        w.emit(W.QMARK)
        w.context &= ~BIT["question"]
    elif r < 0.3:
        w.emit(w.pick("name"), BIT["sentence_start"])
        w.emit("said")
        w.emit(W.QUOTE, BIT["quote_mark"])
        w.context |= BIT["in_quotes"]
        _clause(w)
        w.context &= ~BIT["in_quotes"]
        w.emit(W.QUOTE, BIT["quote_mark"])
        w.emit(W.PERIOD)
    else:
        first = len(w.words)
        _negated(w) if r < 0.42 else _clause(w)
        w.labels[first] |= BIT["sentence_start"]
        if rng.random() < 0.25:
            w.emit(W.COMMA)
            w.emit(w.pick("conn"))
            _clause(w)
        w.emit(W.EXCLAIM if rng.random() < 0.1 else W.PERIOD)
    w.sentences.append((start, len(w.words)))


# ---- long-range segments
# -----------------------------------------------------------------------------------------


def _code(w: _Writer) -> None:
    """A snippet whose variables are bound, then used again several statements later."""
    rng = w.rng
    w.context |= BIT["in_code"]
    sym = BIT["code_symbol"]
    w.emit(W.CODE_OPEN, sym)
    bound: list[str] = []
    for _ in range(rng.randint(3, 6)):
        if bound and rng.random() < 0.55:
            target = w.pick("var")
            w.emit(target, 0 if target in bound else BIT["code_var_bind"])
            w.emit("=", sym)
            w.emit(rng.choice(bound), BIT["code_var_use"])
            w.emit(w.pick("op"), sym)
            w.emit(w.pick("digit"))
            if target not in bound:
                bound.append(target)
        else:
            target = w.pick("var")
            w.emit(target, 0 if target in bound else BIT["code_var_bind"])
            w.emit("=", sym)
            w.emit(w.pick("digit"))
            if target not in bound:
                bound.append(target)
        w.emit(";", sym)
    w.emit(w.pick("func"))
    w.emit(W.LPAREN, sym)
    w.emit(rng.choice(bound), BIT["code_var_use"])
    w.emit(W.RPAREN, sym)
    w.emit(W.CODE_CLOSE, sym)
    w.context &= ~BIT["in_code"]


def _kv_define(w: _Writer) -> None:
    rng = w.rng
    w.emit("remember", BIT["sentence_start"])
    w.emit(W.COLON)
    for i in range(rng.randint(2, 3)):
        free = [k for k in W.KV_KEYS if k not in w.used_keys]
        if not free:
            break
        key = rng.choice(free)
        value = w.pick("digit") if rng.random() < 0.6 else w.pick("colour")
        w.used_keys.add(key)
        w.kv_pairs.append((key, value))
        if i:
            w.emit(W.COMMA)
        w.emit(key, BIT["kv_key"])
        w.emit("is")
        w.emit(value, BIT["kv_value"])
    w.emit(W.PERIOD)


def _kv_recall(w: _Writer) -> None:
    key, value = w.rng.choice(w.kv_pairs)
    w.emit("recall", BIT["sentence_start"])
    w.emit(key, BIT["kv_key"])
    w.emit("is")
    w.emit(value, BIT["kv_recall"])
    w.emit(W.PERIOD)


def _induction(w: _Writer) -> None:
    """Copy an earlier sentence verbatim: after its first word, every token is predictable by induction."""
    start, end = w.rng.choice(w.sentences)
    w.emit("again", BIT["sentence_start"])
    w.emit(W.COLON)
    for i in range(start, end):
        w.words.append(w.words[i])
        w.labels.append(w.labels[i] | BIT["induction_copy"])


def _invented(w: _Writer) -> None:
    w.context |= BIT["invented_language"]
    for i in range(w.rng.randint(3, 8)):
        w.emit(w.pick("invented"), BIT["sentence_start"] if i == 0 else 0)
    w.emit(W.PERIOD)
    w.context &= ~BIT["invented_language"]


def _next_segment(w: _Writer) -> None:
    r = w.rng.random()
    if r < 0.12 and w.sentences:
        _induction(w)
    elif r < 0.24 and w.kv_pairs:
        _kv_recall(w)
    elif r < 0.32:
        _kv_define(w)
    elif r < 0.42:
        _code(w)
    elif r < 0.48:
        _invented(w)
    else:
        _sentence(w)


# ---- corpus
# ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Corpus:
    """Token ids with BOS at position 0 and per-token label bitmasks, both [n_seq, seq_len]."""

    tokens_NS: np.ndarray
    label_bits_NS: np.ndarray
    vocab: tuple[str, ...]
    concepts: tuple[str, ...] = CONCEPTS

    def texts(self, start: int = 0, stop: int | None = None) -> list[str]:
        """Space-joined words of each sequence without the BOS token (what the tokenizer turns back into
        ids)."""
        vocab = self.vocab
        return [" ".join(vocab[t] for t in row[1:]) for row in self.tokens_NS[start:stop]]


def labels_bool(label_bits: np.ndarray, n_concepts: int = len(CONCEPTS)) -> np.ndarray:
    """Expand bitmasks [...] to a bool matrix [..., n_concepts]."""
    bits = np.asarray(label_bits, dtype=np.int64)[..., None] >> np.arange(n_concepts, dtype=np.int64)
    return (bits & 1).astype(bool)


def generate_corpus(n_seq: int, seq_len: int = 128, seed: int = 0) -> Corpus:
    """`n_seq` sequences of `seq_len` tokens (BOS + words), deterministic from `seed`."""
    vocab = tuple(W.vocabulary())
    index = {word: i for i, word in enumerate(vocab)}
    bos = index["<bos>"]
    rng = random.Random(seed)
    tokens = np.empty((n_seq, seq_len), dtype=np.int32)
    bits = np.zeros((n_seq, seq_len), dtype=np.int64)
    n_words = seq_len - 1
    for row in range(n_seq):
        w = _Writer(rng)
        while len(w.words) < n_words:
            _next_segment(w)
        tokens[row, 0] = bos
        tokens[row, 1:] = [index[word] for word in w.words[:n_words]]
        bits[row, 1:] = w.labels[:n_words]
    return Corpus(tokens_NS=tokens, label_bits_NS=bits, vocab=vocab)


def unigram_entropy(tokens_NS: np.ndarray, vocab_size: int) -> float:
    """Entropy (nats) of the unigram distribution of non-BOS tokens: the loss of a model that ignores
    context."""
    counts = np.bincount(tokens_NS[:, 1:].ravel(), minlength=vocab_size).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())
