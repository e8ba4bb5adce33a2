"""The concept corpus: determinism, label ground truth, Zipf frequencies, tokenizer round trip."""

from __future__ import annotations

import numpy as np
import pytest

from evalkit.world import words as W
from evalkit.world.corpus import BIT, CONCEPTS, generate_corpus, labels_bool, unigram_entropy
from evalkit.world.tokenizer import load_tokenizer, save_tokenizer


@pytest.fixture(scope="module")
def corpus():
    return generate_corpus(400, seq_len=128, seed=3)


def _has(bits: np.ndarray, concept: str) -> np.ndarray:
    return (bits & BIT[concept]) != 0


def test_deterministic_and_seed_dependent(corpus) -> None:
    again = generate_corpus(400, seq_len=128, seed=3)
    assert np.array_equal(corpus.tokens_NS, again.tokens_NS)
    assert np.array_equal(corpus.label_bits_NS, again.label_bits_NS)
    other = generate_corpus(400, seq_len=128, seed=4)
    assert not np.array_equal(corpus.tokens_NS, other.tokens_NS)


def test_shape_bos_and_concept_count(corpus) -> None:
    assert corpus.tokens_NS.shape == (400, 128)
    assert (corpus.tokens_NS[:, 0] == corpus.vocab.index("<bos>")).all()
    assert (corpus.label_bits_NS[:, 0] == 0).all()
    assert 28 <= len(CONCEPTS) <= 40
    used = labels_bool(corpus.label_bits_NS).reshape(-1, len(CONCEPTS)).any(0)
    assert used.all(), [c for c, u in zip(CONCEPTS, used, strict=False) if not u]


def test_word_class_labels_match_word_lists(corpus) -> None:
    vocab = np.array(corpus.vocab)
    words = vocab[corpus.tokens_NS]
    for concept, members in (("colour", W.COLOURS), ("month", W.MONTHS), ("city", W.CITIES)):
        assert np.array_equal(_has(corpus.label_bits_NS, concept), np.isin(words, members)), concept


def test_span_labels(corpus) -> None:
    vocab = corpus.vocab
    for tokens, bits in zip(corpus.tokens_NS[:100], corpus.label_bits_NS[:100], strict=False):
        words = [vocab[t] for t in tokens]
        inside = False
        for word, b in zip(words, bits, strict=False):
            if word == W.QUOTE and not b & BIT["in_code"]:
                assert b & BIT["quote_mark"] and not b & BIT["in_quotes"]
                inside = not inside
            else:
                assert bool(b & BIT["in_quotes"]) == inside, (word, words)
        # the token after a sentence delimiter starts a sentence unless a code snippet opens there
        for prev, word, b in zip(words[1:], words[2:], bits[2:], strict=False):
            if prev in W.SENTENCE_DELIMITERS and not b & BIT["induction_copy"] and word != W.CODE_OPEN:
                assert b & BIT["sentence_start"], (prev, word)


def test_long_range_labels_refer_back(corpus) -> None:
    vocab = corpus.vocab
    n_recall = n_copy = 0
    for tokens, bits in zip(corpus.tokens_NS, corpus.label_bits_NS, strict=False):
        words = [vocab[t] for t in tokens]
        defined: dict[str, str] = {}
        for i, (word, b) in enumerate(zip(words, bits, strict=False)):
            if b & BIT["kv_value"]:
                defined[words[i - 2]] = word  # "<key> is <value>"
            if b & BIT["kv_recall"]:
                assert defined[words[i - 2]] == word
                n_recall += 1
        # each copied run equals the text it copies, found earlier in the sequence
        copy = _has(bits, "induction_copy")
        starts = np.flatnonzero(copy & ~np.roll(copy, 1))
        for s in starts:
            e = s
            while e < len(copy) and copy[e]:
                e += 1
            span = list(tokens[s:e])
            n_copy += 1
            assert any(list(tokens[j : j + len(span)]) == span for j in range(1, s - len(span) + 1))
    assert n_recall > 20 and n_copy > 20


def test_code_variables_are_bound_before_use(corpus) -> None:
    vocab = corpus.vocab
    for tokens, bits in zip(corpus.tokens_NS[:200], corpus.label_bits_NS[:200], strict=False):
        bound: set[str] = set()
        for t, b in zip(tokens, bits, strict=False):
            word = vocab[t]
            if word == W.CODE_OPEN:
                bound = set()
            if b & BIT["code_var_bind"]:
                bound.add(word)
            if b & BIT["code_var_use"]:
                assert word in bound


def test_zipf_frequencies_and_script_token() -> None:
    big = generate_corpus(3000, seed=0)
    counts = np.bincount(big.tokens_NS.ravel(), minlength=len(big.vocab))
    colour_counts = [counts[big.vocab.index(c)] for c in W.COLOURS]
    assert colour_counts[0] > 3 * colour_counts[7] > 0
    assert counts[big.vocab.index("<script>alert(1)</script>")] > 0


def test_unigram_entropy_hand_case() -> None:
    tokens = np.array([[1, 5, 5, 6, 7]])  # BOS then p = (1/2, 1/4, 1/4)
    expected = -(0.5 * np.log(0.5) + 2 * 0.25 * np.log(0.25))
    assert unigram_entropy(tokens, 10) == pytest.approx(expected)


def test_tokenizer_round_trip(tmp_path, corpus) -> None:
    save_tokenizer(corpus.vocab, tmp_path / "tok")
    tok = load_tokenizer(tmp_path / "tok")
    ids = tok(corpus.texts(0, 20))["input_ids"]
    assert np.array_equal(np.array(ids), corpus.tokens_NS[:20])
    assert tok.bos_token == "<bos>" and tok.eos_token == "<eos>" and tok.pad_token == "<pad>"
    assert tok.convert_tokens_to_ids("<script>alert(1)</script>") != tok.unk_token_id
