"""Active learning: rank an unlabelled pool by how unsure the champion is, and queue the top k for labelling.

Strategies (Settles, 2009): least confidence (1 - max p), margin (1 - (p1 - p2)) and entropy;
random is the baseline. With `diversity` > 0 the picks are made one at a time, each text's
score lowered by `diversity` x its highest cosine similarity to a text already picked, so the
queue is not k near-copies of one confusing sentence. A text labelled already (in the pipeline's
collected data or its drop folder) or waiting in the labelling queue is never queued again.
"""

from __future__ import annotations

import csv
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.decoding import decode
from pipeline.errors import ConfigError, DataError
from pipeline.paths import PipelinePaths
from pipeline.readers import batch_files, from_spreadsheet_safe, read_batch, read_source, spreadsheet_safe
from pipeline.records import Record, load_records

STRATEGIES = ("least_confidence", "margin", "entropy", "random")
QUEUE = Path("data/to_label")
POOL_FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".parquet": "parquet"}


def uncertainty(probabilities: np.ndarray, strategy: str, seed: int = 0) -> np.ndarray:
    """One score per row of class probabilities; higher means the model is less sure."""
    if strategy == "least_confidence":
        return 1.0 - probabilities.max(axis=1)
    if strategy == "margin":
        top_two = np.sort(probabilities, axis=1)[:, -2:]
        return 1.0 - (top_two[:, 1] - top_two[:, 0])
    if strategy == "entropy":
        return -(probabilities * np.log(np.clip(probabilities, 1e-12, None))).sum(axis=1)
    if strategy == "random":
        return np.random.default_rng(seed).random(len(probabilities))
    raise ValueError(f"unknown strategy '{strategy}' (known: {', '.join(STRATEGIES)})")


def pick(scores: np.ndarray, k: int, embeddings: np.ndarray | None = None, diversity: float = 0.0) -> list[int]:
    """Indices of the k rows to label, best first: by score, or greedily by score minus redundancy."""
    k = min(k, len(scores))
    if diversity <= 0 or embeddings is None:
        return [int(i) for i in np.argsort(-scores, kind="stable")[:k]]
    unit = embeddings / np.clip(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12, None)
    closest = np.full(len(scores), -np.inf)  # each row's highest similarity to a picked row
    chosen: list[int] = []
    for _ in range(k):
        adjusted = scores - diversity * np.where(np.isinf(closest), 0.0, closest)
        adjusted[chosen] = -np.inf
        best = int(np.argmax(adjusted))
        chosen.append(best)
        closest = np.maximum(closest, unit @ unit[best])
    return chosen


def read_pool(source: str, text_column: str = "text") -> list[str]:
    """Unlabelled texts from a .txt file (one a line), a csv / tsv / jsonl / parquet file with a text column, or a folder of them."""
    path = Path(source)
    readable = (".txt", *POOL_FORMATS)
    files = sorted(p for p in path.iterdir() if p.suffix in readable) if path.is_dir() else [path]  # a folder's README is skipped
    if not files or not files[0].exists():
        raise DataError(f"{source}: no unlabelled pool found (set active_learning.pool or pass --pool)")
    texts: list[str] = []
    for file in files:
        if file.suffix == ".txt":
            texts += decode(file, "utf-8").splitlines()
        elif file.suffix in POOL_FORMATS:
            for record in read_source(str(file), POOL_FORMATS[file.suffix], None):
                if text_column not in record:
                    raise DataError(f"{file}: row {record['row']}: no '{text_column}' column")
                texts.append(str(record[text_column]))
        else:
            raise DataError(f"{file}: pool files must be {', '.join(readable)}")
    return list(dict.fromkeys(t.strip() for t in texts if t.strip()))


def not_yet_asked(texts: list[str], task: Any, outputs: Path = Path("."), queue: Path = QUEUE) -> list[str]:
    """The texts nobody has been asked to label: not in the pipeline's collected data (data/raw under
    `outputs`), not in a batch of its drop folder and not waiting in its labelling queue. Texts are
    compared with their whitespace collapsed; a drop-folder batch that cannot be read is collect's to set aside."""
    raw = outputs / PipelinePaths(task.pipeline).raw
    asked = [r.get("text") for r in load_records(raw)] if raw.exists() else []
    incoming = Path(task.config.data.incoming)
    for batch in batch_files(incoming) if incoming.is_dir() else []:
        try:
            asked += [r.get(task.config.data.text_column) for r in read_batch(batch, task.config.data.encoding)]
        except DataError:
            continue
    for waiting in sorted(queue.glob(f"{task.pipeline}-*.csv")):
        with waiting.open(newline="", encoding="utf-8") as f:
            asked += [from_spreadsheet_safe(row.get("text") or "") for row in csv.DictReader(f)]
    known = {" ".join(text.split()) for text in asked if isinstance(text, str)}
    return [text for text in texts if " ".join(text.split()) not in known]


def rank(task: Any, model: Any, tokenizer: Any, texts: list[str], strategy: str, k: int, diversity: float, seed: int) -> list[Record]:
    """The k texts to label next, with the model's guess, its confidence and the uncertainty score. A task
    type with no class distribution per text (token classification) has its texts go least confident first."""
    if not task.class_distribution:
        if task.counts is None:
            raise ConfigError(f"active learning ranks texts by a class distribution or by the confidence of what their predictions "
                              f"count: the {task.pipeline} pipeline's predictions have neither")
        observed = [task.observation(p) for p in task.predict(model, tokenizer, [{"text": t} for t in texts])]
        return least_confident(texts, [" ".join(o["counted"]) for o in observed], [o["score"] for o in observed], k)
    probabilities, embeddings = task.class_probabilities(model, tokenizer, [{"text": t} for t in texts])
    scores = uncertainty(probabilities, strategy, seed)
    id2label = model.config.id2label
    return [
        {
            "rank": position + 1,
            "text": texts[i],
            "predicted_label": id2label[int(probabilities[i].argmax())],
            "confidence": round(float(probabilities[i].max()), 4),
            "uncertainty": round(float(scores[i]), 4),
            "strategy": strategy,
        }
        for position, i in enumerate(pick(scores, k, embeddings, diversity))
    ]


def least_confident(texts: list[str], guesses: list[str], confidences: list[float], k: int) -> list[Record]:
    """The k texts with the lowest confidence (for token classification: the guess is the entity types
    found, the confidence the sentence's mean word tag probability)."""
    order = np.argsort(np.array(confidences), kind="stable")[:k]
    return [
        {"rank": position + 1, "text": texts[i], "predicted_label": guesses[i], "confidence": round(float(confidences[i]), 4),
         "uncertainty": round(1.0 - float(confidences[i]), 4), "strategy": "least_confidence"}
        for position, i in enumerate(order)
    ]


def write_queue(rows: list[Record], pipeline: str, queue: Path = QUEUE) -> Path:
    """A csv in the labelling queue: fill in a label column and drop it in the task's incoming folder.

    Texts that a spreadsheet would run as formulas get a leading quote; the csv reader takes it off again.
    A queue written in the same second as another (select and the monitor, say) gets a name of its own.
    """
    queue.mkdir(parents=True, exist_ok=True)
    stamp, attempt = f"{pipeline}-{datetime.now(timezone.utc):%Y%m%dT%H%M%S}", 1
    while True:
        path = queue / (f"{stamp}.csv" if attempt == 1 else f"{stamp}-{attempt}.csv")
        try:
            f = path.open("x", newline="", encoding="utf-8")  # created here or not at all: another writer's file is never replaced
        except FileExistsError:
            attempt += 1
            continue
        with f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["rank", "text"])
            writer.writeheader()
            writer.writerows({key: spreadsheet_safe(value) for key, value in row.items()} for row in rows)
        return path
