"""Negative-news alerts per entity, from the mentions the monitor stores (entities.py).

The rule (`monitoring.entities.alert`): in the last window (`window_days`, ending on the newest text's
date) an entity fires when
- at least `min_mentions` texts mention it,
- its share negative is at least `margin` above the baseline: its own over the `baseline_windows`
  windows before, or, where those hold fewer than `min_mentions` of its texts, that of every text the
  pipeline stored then (the market's),
- and a one-sided Fisher exact test finds the window's share higher than the baseline's at p at most
  `pvalue`,
so one angry headline about a rarely named firm pages nobody.

An alert is stored once per pipeline, entity and window, whichever runs find it; it is sent (its event
emitted) by the run that finds it unsent and then marked sent, so a run killed in between leaves it to
the next run rather than losing it.
"""

from __future__ import annotations

import json
from datetime import date, timedelta

from sqlalchemy import Engine, and_, func, select, tuple_, update

from pipeline.monitoring.entities import Mentioned, commonest, grouped_mentions, last_day, windows
from pipeline.monitoring.store import ALERTS, PREDICTIONS, insert, now
from pipeline.params import AlertConfig
from pipeline.records import Record

EXAMPLES = 10  # negative texts kept with an alert, the newest first


def market_counts(engine: Engine, pipeline: str, first: str, last: str) -> tuple[int, int]:
    """(texts, negative ones) among all the pipeline's texts dated first..last."""
    day = func.substr(PREDICTIONS.c.timestamp, 1, 10)
    query = (select(func.count(), func.count().filter(PREDICTIONS.c.label == "negative"))
             .where(PREDICTIONS.c.pipeline == pipeline, day >= first, day <= last))
    with engine.begin() as connection:
        texts, negative = connection.execute(query).one()
    return texts, negative


def greater_pvalue(negative: int, texts: int, base_negative: int, base_texts: int) -> float:
    """One-sided Fisher exact test: the p-value of a share negative this much higher than the baseline's by chance."""
    from scipy.stats import fisher_exact

    table = [[negative, texts - negative], [base_negative, base_texts - base_negative]]
    return float(fisher_exact(table, alternative="greater").pvalue)


def examples(engine: Engine, pipeline: str, rows: set[Mentioned]) -> list[str]:
    """The texts of the negative ones among `rows`, the newest first."""
    keys = [(row.batch, row.position) for row in rows if row.label == "negative"]
    columns = PREDICTIONS.c
    query = (select(columns.text).where(columns.pipeline == pipeline, tuple_(columns.batch, columns.position).in_(keys))
             .order_by(columns.timestamp.desc(), columns.batch, columns.position).limit(EXAMPLES))
    with engine.begin() as connection:
        return list(connection.scalars(query)) if keys else []


def find_alerts(engine: Engine, pipeline: str, aliases: dict[str, str], rule: AlertConfig, end: date | None = None) -> list[Record]:
    """The entities the rule fires for in the window ending on `end` (default: the newest text's date)."""
    end = end or last_day(engine, pipeline)
    if end is None:
        return []
    spans = windows(end, rule.window_days, rule.baseline_windows + 1)
    grouped, spellings = grouped_mentions(engine, pipeline, aliases, spans)
    market = market_counts(engine, pipeline, spans[0][0], spans[-2][1])
    found = []
    for key, per_window in sorted(grouped.items()):
        window = per_window[-1]
        texts, negative = len(window), sum(row.label == "negative" for row in window)
        own = [row for rows in per_window[:-1] for row in rows]
        base_texts, base_negative = len(own), sum(row.label == "negative" for row in own)
        baseline = "entity" if base_texts >= rule.min_mentions else "market"
        if baseline == "market":
            base_texts, base_negative = market
        if texts < rule.min_mentions or base_texts == 0 or negative / texts - base_negative / base_texts < rule.margin:
            continue
        pvalue = greater_pvalue(negative, texts, base_negative, base_texts)
        if pvalue <= rule.pvalue:
            found.append({
                "key": key, "entity": commonest(spellings[key]), "window": list(spans[-1]), "texts": texts, "negative": negative,
                "share": negative / texts, "baseline": {"of": baseline, "texts": base_texts, "negative": base_negative,
                                                        "share": base_negative / base_texts, "windows": [spans[0][0], spans[-2][1]]},
                "pvalue": pvalue, "examples": examples(engine, pipeline, window),
            })
    return found


def unsent(engine: Engine, pipeline: str, found: list[Record]) -> list[Record]:
    """Store the alerts found (one per entity and window: one found before is kept as it was) and return
    every alert of the pipeline not sent yet, earlier runs' included."""
    with engine.begin() as connection:
        if found:
            connection.execute(insert(engine, ALERTS).on_conflict_do_nothing(), [
                {"pipeline": pipeline, "entity": a["key"], "window_start": a["window"][0], "window_end": a["window"][1],
                 "figures": json.dumps(a), "found_at": now()} for a in found])
        query = select(ALERTS.c.figures).where(ALERTS.c.pipeline == pipeline, ALERTS.c.sent_at.is_(None)).order_by(ALERTS.c.found_at)
        return [json.loads(figures) for figures in connection.scalars(query)]


def mark_sent(engine: Engine, pipeline: str, alert: Record) -> None:
    """Record that the alert's event was emitted."""
    c = ALERTS.c
    with engine.begin() as connection:
        connection.execute(update(ALERTS).where(and_(c.pipeline == pipeline, c.entity == alert["key"], c.window_start == alert["window"][0],
                                                     c.window_end == alert["window"][1])).values(sent_at=now()))


def open_alerts(engine: Engine, today: date) -> list[Record]:
    """The alerts still open on `today`: those of the current window and of the one before it (an alert on a
    window of N days stays open for N days after the window ends), each with its pipeline."""
    c = ALERTS.c
    query = select(c.pipeline, c.window_start, c.window_end, c.figures).where(c.window_end >= (today - timedelta(days=400)).isoformat())
    with engine.begin() as connection:
        rows = connection.execute(query).all()
    return [{"pipeline": pipeline, **json.loads(figures)} for pipeline, start, end, figures in rows
            if date.fromisoformat(end) + (date.fromisoformat(end) - date.fromisoformat(start) + timedelta(days=1)) >= today]
