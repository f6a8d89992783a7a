"""The miniature suite's next-word task: which of 4 words of the same shape comes next?

Distractors match the true word's length, token count and near-equal frequency, so that only
the context tells the answer (chance 0.25): the task on which tiny models show learning.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

_WORD = re.compile(r"\S+")
_ALPHA_WORD = re.compile(r"^[A-Za-z]{2,}$")


def _word_counts(texts: Sequence[str]) -> dict[str, int]:
    """How often each alphabetic word (2+ letters, case kept) occurs in ``texts``."""
    counts: dict[str, int] = {}
    for text in texts:
        for match in _WORD.finditer(text):
            word = match.group()
            if _ALPHA_WORD.match(word):
                counts[word] = counts.get(word, 0) + 1
    return counts


def _matched_distractors(
    word: str, counts: Mapping[str, int], pool: Sequence[str], k: int, rng: Any
) -> list[str] | None:
    """``k`` words of ``pool`` closest to ``word`` in frequency (None if too few exist).

    ``pool`` holds the words of ``word``'s shape: its length in characters, and in tokens when
    a tokenizer is given. With near-equal frequency too, neither length nor the unigram prior
    tells the answer: only the context does. At initialisation a model's logits are near
    uniform, so a choice's loglikelihood is about minus its token count times ln(vocabulary):
    equal token counts keep step 0 at chance. Picked at random among the ``2k`` nearest in log
    frequency.
    """
    target = math.log(counts[word])
    nearest = sorted(pool, key=lambda w: (abs(math.log(counts[w]) - target), w))
    seen, candidates = {word.lower()}, []
    for w in nearest:  # one spelling per word: "Said" and "said" are the same choice
        if w.lower() not in seen:
            seen.add(w.lower())
            candidates.append(w)
    if len(candidates) < k:
        return None
    return rng.sample(candidates[: 2 * k], k)


def build_next_word_items(
    texts: Sequence[str],
    n_items: int,
    seed: int,
    *,
    n_choices: int = 4,
    context_words: int = 24,
    min_context_words: int = 16,
    max_context_chars: int = 160,
    token_count: Callable[[Sequence[str]], list[int]] | None = None,
    max_items_per_answer: int = 3,
) -> list[dict[str, Any]]:
    """Multiple-choice next-word items from held-out text: which word comes next?

    Each item is ``{"context", "choices", "gold", "doc"}``: up to ``context_words`` words of a
    document (its own spacing kept; at most ``max_context_chars``, so that the miniature
    models' 128-token window holds it), then ``n_choices`` candidate next words, one of them the
    true one (at position ``gold``, drawn at random), the others length- and frequency-matched
    words from the held-out text (:func:`_matched_distractors`), also matched in token count
    when ``token_count`` is given (it maps words to the number of tokens each costs as a
    continuation, ``" " + word``). Targets are alphabetic words preceded by one space, at
    random positions; documents are visited in turn so that every document contributes.
    Deterministic in ``seed``; built before training, from text the model never trains on, so
    an untrained model scores chance (``1 / n_choices``).

    A word is the answer of at most ``max_items_per_answer`` items (case ignored). An untrained
    model still prefers some words to others at random; were "the" the answer of fifty items,
    that one preference would move step 0's accuracy by several standard errors. Uncapped,
    step 0's accuracy on 1,000 items spread with a standard deviation of 0.033 over ten
    initialisations of the 1.3m model, against a binomial 0.014; capped at 3, 0.010
    (``benchmarks/next_word_control.py``).

    Raises:
        ValueError: fewer than ``n_items`` items can be built (naming both counts).
    """
    rng = random.Random(seed)
    counts = _word_counts(texts)
    words_sorted = sorted(counts)
    tokens = dict(zip(words_sorted, token_count(words_sorted), strict=True)) if token_count else {}

    def shape(word: str) -> tuple[int, int]:
        return len(word), tokens.get(word, 0)

    by_shape: dict[tuple[int, int], list[str]] = {}
    for word in words_sorted:
        by_shape.setdefault(shape(word), []).append(word)
    positions = _target_positions(texts, min_context_words, rng)
    items: list[dict[str, Any]] = []
    answered: dict[str, int] = {}  # lower-cased answer -> items it answers
    while len(items) < n_items and any(usable for _, _, usable in positions):
        for doc, (text, words, usable) in enumerate(positions):
            if len(items) == n_items or not usable:
                continue
            i = usable.pop()
            target = words[i].group()
            if answered.get(target.lower(), 0) == max_items_per_answer:
                continue
            pool = by_shape[shape(target)]
            distractors = _matched_distractors(target, counts, pool, n_choices - 1, rng)
            if distractors is None:
                continue
            gold = rng.randrange(n_choices)
            choices = distractors[:gold] + [target] + distractors[gold:]
            context = _context_before(text, words, i, context_words, max_context_chars)
            items.append({"context": context, "choices": choices, "gold": gold, "doc": doc})
            answered[target.lower()] = answered.get(target.lower(), 0) + 1
    if len(items) < n_items:
        raise ValueError(
            f"{len(texts)} held-out documents give {len(items)} next-word items; "
            f"{n_items} were asked for"
        )
    return items


def _target_positions(
    texts: Sequence[str], min_context_words: int, rng: random.Random
) -> list[tuple[str, list[re.Match[str]], list[int]]]:
    """Per document: its text, its words, and the shuffled indices of the words that may be a
    target (alphabetic, after at least ``min_context_words`` words and one plain space)."""
    positions = []
    for text in texts:
        words = list(_WORD.finditer(text))
        usable = [
            i
            for i in range(min_context_words, len(words))
            # one plain space before the target: lm-eval joins context and choice with " "
            if _ALPHA_WORD.match(words[i].group())
            and words[i].start() - words[i - 1].end() == 1
            and text[words[i].start() - 1] == " "
        ]
        rng.shuffle(usable)
        positions.append((text, words, usable))
    return positions


def _context_before(
    text: str, words: Sequence[re.Match[str]], i: int, context_words: int, max_context_chars: int
) -> str:
    """The text before word ``i``: up to ``context_words`` words, at most ``max_context_chars``
    (though never less than one word), the document's own spacing kept."""
    end = words[i - 1].end()
    first = max(0, i - context_words)
    while first < i - 1 and end - words[first].start() > max_context_chars:
        first += 1
    return text[words[first].start() : end]
