"""Tiny NER data for tests: financial-news-like sentences whose entities come from closed lists."""

from __future__ import annotations

import random
from pathlib import Path

NAMES = {
    "PER": [["Anna", "Berg"], ["Tom", "Hale"], ["Maria", "Rossi"], ["Li", "Wei"], ["Omar", "Haddad"], ["Eva", "Lund"]],
    "ORG": [["Norvik", "Bank"], ["Siemens"], ["Halden", "Shipping", "ASA"], ["Reuters"], ["Kestrel", "Motors"]],
    "LOC": [["Oslo"], ["Frankfurt"], ["New", "York"], ["Brazil"], ["Hong", "Kong"], ["Milan"]],
    "MISC": [["German"], ["Nasdaq"], ["Brexit"], ["Olympics"], ["British"]],
}
TEMPLATES = [
    "{PER} , chief executive of {ORG} , said in {LOC} on Monday .",
    "{ORG} shares rose 3 percent after the {MISC} news .",
    "Analysts in {LOC} expect {ORG} to raise its dividend .",
    "{PER} joined {ORG} from a rival in {LOC} last year .",
    "The {MISC} market closed lower as {ORG} fell .",
    "{PER} told {ORG} investors that {LOC} demand was weak .",
]


def make_sentences(n: int, seed: int = 0) -> list[tuple[list[str], list[str]]]:
    """n unique (tokens, tags) sentences in IOB2."""
    rng = random.Random(seed)
    sentences, seen = [], set()
    while len(sentences) < n:
        tokens, tags = [], []
        for piece in rng.choice(TEMPLATES).split():
            kind = piece.strip("{}")
            if kind in NAMES:
                name = rng.choice(NAMES[kind])
                tokens += name
                tags += [f"B-{kind}"] + [f"I-{kind}"] * (len(name) - 1)
            else:
                tokens.append(piece)
                tags.append("O")
        tokens.append(str(rng.randint(1, 10**6)))  # makes sentences unique
        tags.append("O")
        if " ".join(tokens) not in seen:
            seen.add(" ".join(tokens))
            sentences.append((tokens, tags))
    return sentences


def write_conll(path: Path, sentences: list[tuple[list[str], list[str]]], per_document: int = 5) -> Path:
    """Sentences as a CoNLL file, `per_document` sentences to each -DOCSTART- document."""
    lines = []
    for i, (tokens, tags) in enumerate(sentences):
        if i % per_document == 0:
            lines += ["-DOCSTART- O", ""]
        lines += [f"{token} {tag}" for token, tag in zip(tokens, tags)] + [""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def ner_params(base_model: Path, source: str = "data/ner.conll", **sections) -> dict:
    """A params.yaml `ner:` section for fast tests with the tiny model."""
    section = {
        "data": {"source": source, "format": "conll", "text_column": "tokens", "label_column": "tags"},
        "validate": {"labels": ["PER", "ORG", "LOC", "MISC"], "min_mentions_per_type": 3, "max_reject_fraction": 0.3},
        "split": {"val": 0.2, "test": 0.2},
        "augment": {"copies": 1, "rate": 0.1, "methods": ["mention", "synonym"], "seed": 1},
        "model": {"name": str(base_model), "crf": False},
        "pretrain": {"enabled": False},
        "train": {"epochs": 4, "learning_rate": 1.0e-3, "batch_size": 16, "max_length": 32,
                  "warmup": 0.0, "early_stopping_patience": 2, "seed": 1},
        "promotion": {"min_delta": 0.0},
        "registry": {"name": "ner"},
    }
    for name, values in sections.items():
        section[name] = {**section[name], **values}
    return {"pipelines": ["ner"], "tracking": {"experiment": "test"}, "ner": section}
