"""Easy data augmentation (Wei and Zou, 2019) on word lists: synonym replacement, random
swap and random deletion. Synonyms come from a lexicon written for this project, since no
WordNet download is possible offline and embedding neighbours often are antonyms."""

from __future__ import annotations

import random
from functools import lru_cache
from pathlib import Path
from typing import Callable, Sequence

METHODS = ("synonym", "swap", "delete")
BACK_TRANSLATION = "back_translation"  # model-based, done by the augment stage for tasks whose examples have a "text"


@lru_cache(maxsize=1)
def synonym_table() -> dict[str, list[str]]:
    """Map each single word of the bundled lexicon to its single-word synonyms."""
    text = (Path(__file__).parent / "resources" / "synonyms.txt").read_text(encoding="utf-8")
    table: dict[str, list[str]] = {}
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        words = [w.strip() for w in line.split(",") if w.strip() and " " not in w.strip()]
        for word in words:
            table.setdefault(word, []).extend(w for w in words if w != word and w not in table[word])
    return {word: synonyms for word, synonyms in table.items() if synonyms}


def synonym_replace(words: list[str], n: int, rng: random.Random, editable: Sequence[bool]) -> list[str]:
    """Replace up to n editable words that have lexicon synonyms, keeping their capitalisation."""
    table = synonym_table()
    candidates = [i for i, w in enumerate(words) if editable[i] and w.lower() in table]
    out = list(words)
    for i in rng.sample(candidates, min(n, len(candidates))):
        synonym = rng.choice(table[words[i].lower()])
        out[i] = synonym.capitalize() if words[i][:1].isupper() else synonym
    return out


def random_swap(words: list[str], n: int, rng: random.Random, editable: Sequence[bool]) -> list[str]:
    """Swap n random pairs of editable words."""
    positions = [i for i, ok in enumerate(editable) if ok]
    out = list(words)
    for _ in range(n if len(positions) >= 2 else 0):
        i, j = rng.sample(positions, 2)
        out[i], out[j] = out[j], out[i]
    return out


def random_delete(words: list[str], n: int, rng: random.Random, editable: Sequence[bool]) -> list[str]:
    """Delete n random editable words, never all of them."""
    positions = [i for i, ok in enumerate(editable) if ok]
    drop = set(rng.sample(positions, min(n, max(0, len(words) - 1), len(positions))))
    return [w for i, w in enumerate(words) if i not in drop]


OPERATIONS: dict[str, Callable[..., list[str]]] = {
    "synonym": synonym_replace,
    "swap": random_swap,
    "delete": random_delete,
}


def augment_words(
    words: list[str], method: str, rate: float, rng: random.Random, editable: Sequence[bool] | None = None
) -> list[str]:
    """Apply one method to about `rate` of the words (at least one)."""
    if method not in OPERATIONS:
        raise ValueError(f"unknown augmentation method '{method}' (known: {', '.join(METHODS)})")
    n = max(1, round(rate * len(words)))
    return OPERATIONS[method](words, n, rng, editable if editable is not None else [True] * len(words))
