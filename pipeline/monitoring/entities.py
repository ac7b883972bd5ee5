"""Sentiment per entity: the organisations that a tagger pipeline's champion (NER) finds in each
monitored text, stored beside the text's own prediction, and an index per entity and window.

A mention is normalised to one name per company: case, spaces, surrounding punctuation, a possessive
's and legal suffixes (Oyj, plc, Inc., ...) are ignored, and an alias file the user edits maps other
spellings (NOK, Nokia Networks) onto one name. The store keeps the normalised name and the spelling;
aliases are applied when the index is read, so an edit of the file counts for the past too.

Each scored batch is tagged once, in one transaction with its mentions: a run killed half-way tags
the batch again, and a mention stored before is not stored again.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from datetime import date, timedelta
from pathlib import Path
from statistics import NormalDist
from typing import Callable, NamedTuple

import yaml
from sqlalchemy import Engine, and_, func, select

from pipeline.errors import ConfigError
from pipeline.monitoring.store import BATCHES, MENTIONS, PREDICTIONS, TAGGED, insert, now
from pipeline.records import Record

# Legal forms that do not change which company is meant, casefolded and without dots (Inc. = inc).
LEGAL_SUFFIXES = frozenset({
    "oyj", "oy", "abp", "ab", "publ", "asa", "as", "a/s", "aps", "ag", "se", "sa", "nv", "bv", "spa", "gmbh", "kgaa",
    "plc", "ltd", "limited", "llc", "lp", "inc", "incorporated", "corp", "corporation", "co", "company", "group", "holding", "holdings",
})
EDGES = " \t\n\"'“”‘’`.,;:!?()[]{}<>-–—"  # punctuation a mention may be wrapped in
POSSESSIVE = re.compile(r"['’]s$", re.IGNORECASE)
TAG_AT_ONCE = 256  # texts the tagger reads in one call
POLARITY = ("positive", "negative")  # the labels a sentiment index needs


class Mentioned(NamedTuple):
    """A stored text that mentions an entity: where it is, its label and the model versions behind both."""

    batch: str
    position: int
    label: str
    model_version: str  # the sentiment model's
    tagger_version: str


def entity_name(mention: str) -> str:
    """The mention as one name: spaces collapsed, outer punctuation, a possessive 's and trailing legal
    suffixes removed ('Nokia Oyj' -> 'Nokia'); never empty when the mention has a word."""
    words = POSSESSIVE.sub("", " ".join(mention.split()).strip(EDGES)).split()
    while len(words) > 1 and words[-1].strip("().,").replace(".", "").casefold() in LEGAL_SUFFIXES:
        words.pop()
    if len(words) > 1 and words[0].casefold() == "the":
        words.pop(0)
    return " ".join(words).strip(EDGES)


def entity_key(mention: str) -> str:
    """What mentions of one company share: their name, casefolded ('' when nothing is left)."""
    return entity_name(mention).casefold()


def read_aliases(path: str | None) -> dict[str, str]:
    """entity key -> the name an alias file gives it. The file maps each name to its other spellings,
    e.g. `Nokia: [NOK, Nokia Networks]`; None reads as no aliases."""
    if path is None:
        return {}
    where = f"monitoring.entities.aliases: {path}"
    if not Path(path).is_file():
        raise ConfigError(f"{where}: file not found (create it, e.g. `Nokia: [NOK, Nokia Networks]`, or set aliases: null)")
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{where}: not valid UTF-8 YAML ({' '.join(str(exc).split())[:200]})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping of names to lists of spellings, e.g. `Nokia: [NOK, Nokia Networks]`")
    aliases: dict[str, str] = {}
    for name, spellings in raw.items():
        if not isinstance(spellings, list) or not all(isinstance(s, str) for s in spellings):
            raise ConfigError(f"{where}: '{name}' must map to a list of spellings, got {spellings!r}")
        for spelling in [str(name), *spellings]:
            key = entity_key(spelling)
            if aliases.get(key, str(name)) != str(name):
                raise ConfigError(f"{where}: '{spelling}' is a spelling of both '{aliases[key]}' and '{name}': keep it under one")
            aliases[key] = str(name)
    return aliases


def canonical(key: str, aliases: dict[str, str]) -> str:
    """The name an entity key is counted under: its alias file name, else the key itself."""
    return aliases.get(key) or key


def mentions(prediction: Record, types: list[str]) -> dict[str, str]:
    """entity key -> the spelling of its first mention, for the tagger's entities of `types` in one text."""
    found: dict[str, str] = {}
    for entity in prediction["entities"]:
        key = entity_key(entity["text"])
        if entity["type"] in types and key:
            found.setdefault(key, entity["text"])
    return found


def untagged(engine: Engine, pipeline: str) -> list[str]:
    """The pipeline's scored batches the tagger has not read yet (a served batch once the monitor checked it)."""
    done = select(TAGGED.c.batch).where(TAGGED.c.pipeline == pipeline)
    query = select(BATCHES.c.name).where(BATCHES.c.pipeline == pipeline, BATCHES.c.scored_at.is_not(None), BATCHES.c.name.not_in(done))
    with engine.begin() as connection:
        return sorted(connection.scalars(query))


def stored_texts(engine: Engine, pipeline: str, batch: str) -> list[tuple[int, str]]:
    """(position, text) of each text stored in a batch."""
    columns = PREDICTIONS.c
    query = select(columns.position, columns.text).where(columns.pipeline == pipeline, columns.batch == batch).order_by(columns.position)
    with engine.begin() as connection:
        return [(position, text) for position, text in connection.execute(query)]


def tag_batches(engine: Engine, pipeline: str, tagger: str, version: str, predict: Callable[[list[str]], list[Record]],
                types: list[str]) -> tuple[int, int, int]:
    """Store the mentions `predict` (the tagger's champion, `version`) finds in each untagged batch of the
    pipeline and mark it tagged, a transaction per batch. Returns (batches, texts, mentions) added."""
    batches = texts = added = 0
    for batch in untagged(engine, pipeline):
        rows = stored_texts(engine, pipeline, batch)
        found = [m for start in range(0, len(rows), TAG_AT_ONCE) for m in predict([text for _, text in rows[start:start + TAG_AT_ONCE]])]
        values = [{"pipeline": pipeline, "batch": batch, "position": position, "entity": key, "mention": spelling, "model_version": version}
                  for (position, _), prediction in zip(rows, found) for key, spelling in mentions(prediction, types).items()]
        with engine.begin() as connection:
            if values:
                added += len(connection.execute(insert(engine, MENTIONS).on_conflict_do_nothing().returning(MENTIONS.c.entity), values).all())
            connection.execute(insert(engine, TAGGED).on_conflict_do_nothing(),
                               {"pipeline": pipeline, "batch": batch, "tagger": tagger, "model_version": version, "tagged_at": now()})
        batches, texts = batches + 1, texts + len(rows)
    return batches, texts, added


def index_interval(positive: int, negative: int, texts: int, confidence: float = 0.95) -> tuple[float, float]:
    """An interval for share positive minus share negative among `texts` (both from one multinomial
    sample): Wald's with one pseudo-text of each polarity added, so that a handful of texts, or all of
    one label, still gets a wide interval rather than a point."""
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    n = texts + 2
    p, q = (positive + 1) / n, (negative + 1) / n
    centre, spread = p - q, z * ((p + q - (p - q) ** 2) / n) ** 0.5
    return max(-1.0, centre - spread), min(1.0, centre + spread)


def windows(end: date, days: int, count: int) -> list[tuple[str, str]]:
    """`count` windows of `days` calendar days, the last ending on `end`, oldest first, as ISO dates (inclusive)."""
    ends = [end - timedelta(days=days * k) for k in reversed(range(count))]
    return [((last - timedelta(days=days - 1)).isoformat(), last.isoformat()) for last in ends]


def last_day(engine: Engine, pipeline: str) -> date | None:
    """The date of the pipeline's newest stored text; None when it has none."""
    query = select(func.max(func.substr(PREDICTIONS.c.timestamp, 1, 10))).where(PREDICTIONS.c.pipeline == pipeline)
    with engine.begin() as connection:
        newest = connection.scalar(query)
    try:
        return date.fromisoformat(newest) if newest else None
    except ValueError:
        return None


def mention_rows(engine: Engine, pipeline: str, first: str, last: str) -> list[tuple]:
    """(day, entity key, spelling, batch, position, label, model version, tagger version) of each mention in texts dated first..last."""
    m, p = MENTIONS.c, PREDICTIONS.c
    day = func.substr(p.timestamp, 1, 10)
    query = (select(day, m.entity, m.mention, m.batch, m.position, p.label, p.model_version, m.model_version)
             .join(PREDICTIONS, and_(p.pipeline == m.pipeline, p.batch == m.batch, p.position == m.position))
             .where(m.pipeline == pipeline, day >= first, day <= last))
    with engine.begin() as connection:
        return [tuple(row) for row in connection.execute(query)]


def window_figures(counts: Counter, labels: list[str], confidence: float) -> Record:
    """Texts, counts and shares of each label, and for a label set with positive and negative the sentiment index with its interval."""
    texts = counts.total()
    figures: Record = {"texts": texts, "counts": {label: counts[label] for label in labels},
                       "shares": {label: counts[label] / texts if texts else None for label in labels}}
    if set(POLARITY) <= set(labels):
        positive, negative = counts["positive"], counts["negative"]
        figures["index"] = (positive - negative) / texts if texts else None
        figures["interval"] = list(index_interval(positive, negative, texts, confidence)) if texts else None
    return figures


def grouped_mentions(engine: Engine, pipeline: str, aliases: dict[str, str], spans: list[tuple[str, str]]) -> tuple[dict, dict]:
    """Per entity (its key, after aliases): per window of `spans`, each text mentioning it (a Mentioned),
    each text once; and the counts of its spellings, to name it by the commonest."""
    texts: dict[str, list[set[Mentioned]]] = defaultdict(lambda: [set() for _ in spans])
    spellings: dict[str, Counter] = defaultdict(Counter)
    for day, key, spelling, *text in mention_rows(engine, pipeline, spans[0][0], spans[-1][1]):
        name = canonical(key, aliases)
        k = next(i for i, (first, last) in enumerate(spans) if first <= day <= last)
        texts[name][k].add(Mentioned(*text))
        spellings[name][aliases.get(key) or entity_name(spelling)] += 1
    return texts, spellings


def commonest(spellings: Counter) -> str:
    """The spelling used most (the first in alphabetical order among equals)."""
    return min(spellings.most_common(), key=lambda s: (-s[1], s[0]))[0]


def entity_index(engine: Engine, pipeline: str, labels: list[str], aliases: dict[str, str], window_days: int, count: int = 1,
                 end: date | None = None, top: int | None = None, entity: str | None = None, confidence: float = 0.95,
                 by_newest: bool = False) -> list[Record]:
    """Per entity (the most mentioned in all the windows first, or with `by_newest` in the newest window;
    `top` of them, or only `entity`) and per window (`count`
    windows of `window_days`, the last ending on `end`, default the newest text's date): the texts that
    mention it, counted once each, with their labels' counts and shares, the sentiment index and the
    versions of the models that gave the labels and found the mentions."""
    end = end or last_day(engine, pipeline)
    if end is None:
        return []
    spans = windows(end, window_days, count)
    texts, spellings = grouped_mentions(engine, pipeline, aliases, spans)
    names = sorted(texts, key=lambda n: (-len(texts[n][-1]) if by_newest else -sum(map(len, texts[n])), n))
    if entity is not None:
        names = [n for n in names if n == canonical(entity_key(entity), aliases)]
    return [
        {"entity": commonest(spellings[name]), "window": list(span),
         **window_figures(Counter(text.label for text in texts[name][k]), labels, confidence),
         "versions": {"model": sorted({t.model_version for t in texts[name][k]}), "tagger": sorted({t.tagger_version for t in texts[name][k]})}}
        for name in names[:top] for k, span in enumerate(spans)
    ]


def entity_table(rows: list[Record]) -> str:
    """The index as a Markdown table: an entity's windows, its texts, the share negative and the sentiment index."""
    lines = ["| entity | window | texts | negative | index (95% interval) |", "|---|---|---|---|---|"]
    for row in rows:
        negative = row["shares"].get("negative")
        index = "" if row.get("index") is None else f"{row['index']:+.2f} ({row['interval'][0]:+.2f} to {row['interval'][1]:+.2f})"
        lines.append(f"| {row['entity']} | {row['window'][0]} to {row['window'][1]} | {row['texts']} | "
                     f"{'' if negative is None else f'{negative:.0%}'} | {index} |")
    return "\n".join(lines)
