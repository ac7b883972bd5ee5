"""The negative-news alert rule on a stored stream: it fires on a burst about one entity (against its own
baseline, or the market's for a name rarely seen before), stays quiet on a steady stream and on one
angry headline about a rarely named firm, and sends each alert once, even when a run stops between
finding it and sending it."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

import pytest

from pipeline.params import AlertConfig

RULE = AlertConfig(window_days=1, baseline_windows=28, min_mentions=10, margin=0.15, pvalue=0.01)
LAST = date(2026, 11, 29)


def tagger(texts: list[str]) -> list[dict]:
    """Stands in for the NER champion: a text names its company before ' | '."""
    return [{"entities": [{"type": "ORG", "text": text.split(" | ")[0]}] if " | " in text else []} for text in texts]


def stream(location: str, last_day: dict[str, tuple[int, int]], last: date = LAST):
    """29 days of texts up to `last`: each day 20 about Nokia and 20 about Fortum, 2 of each negative, and 40
    naming no company, 8 negative; on the last day, per company in `last_day`, (texts, negative ones) instead."""
    from pipeline.monitoring.entities import tag_batches
    from pipeline.monitoring.store import open_store, store

    engine = open_store(location, "sentiment")
    for k in range(29):
        day = (last - timedelta(days=28 - k)).isoformat()
        counts = {"Nokia Oyj": (20, 2), "Fortum": (20, 2), "": (40, 8)} | (last_day if k == 28 else {})
        labelled = [(f"{name} | news {i}" if name else f"markets {i}", "negative" if i < negative else "neutral")
                    for name, (texts, negative) in counts.items() for i in range(texts)]
        rows = [{"timestamp": f"{day}T09:00:00Z", "text": text, "batch": day, "position": i} for i, (text, _) in enumerate(labelled)]
        store(engine, "sentiment", rows, [{"counted": [label], "score": 0.9} for _, label in labelled], "3", [day])
    tag_batches(engine, "sentiment", "ner", "1", tagger, ["ORG"])
    return engine


def alerts(engine) -> dict[str, tuple]:
    from pipeline.monitoring.alerts import find_alerts

    return {a["entity"]: (a["negative"], a["texts"], a["baseline"]["of"], a["window"]) for a in find_alerts(engine, "sentiment", {}, RULE)}


def test_a_steady_stream_and_one_angry_headline_about_a_rare_name_page_nobody(tmp_path):
    engine = stream(str(tmp_path / "predictions.db"), {"Kestrel Motors": (1, 1), "Nokia Oyj": (20, 4)})  # Nokia: 20% against 10%
    assert alerts(engine) == {}


def test_a_burst_fires_against_the_entitys_baseline_or_the_markets_for_a_new_name(tmp_path):
    from pipeline.monitoring.alerts import find_alerts

    engine = stream(str(tmp_path / "predictions.db"), {"Nokia Oyj": (20, 12), "Halden Shipping ASA": (12, 9)})
    assert alerts(engine) == {"Nokia": (12, 20, "entity", ["2026-11-29", "2026-11-29"]),
                              "Halden Shipping": (9, 12, "market", ["2026-11-29", "2026-11-29"])}
    nokia = next(a for a in find_alerts(engine, "sentiment", {}, RULE) if a["entity"] == "Nokia")
    assert nokia["baseline"] == {"of": "entity", "texts": 560, "negative": 56, "share": 0.1, "windows": ["2026-11-01", "2026-11-28"]}
    assert nokia["pvalue"] < 1e-6 and len(nokia["examples"]) == 10 and all(t.startswith("Nokia Oyj | news") for t in nokia["examples"])


def test_an_alert_is_sent_once_per_entity_and_window_and_none_is_lost_by_a_stopped_run(tmp_path):
    from pipeline.monitoring.alerts import find_alerts, mark_sent, unsent

    engine = stream(str(tmp_path / "predictions.db"), {"Nokia Oyj": (20, 12)})
    found = find_alerts(engine, "sentiment", {}, RULE)
    assert [a["entity"] for a in unsent(engine, "sentiment", found)] == ["Nokia"]
    assert [a["entity"] for a in unsent(engine, "sentiment", found)] == ["Nokia"]  # a run stopped before sending: the next one sends it
    mark_sent(engine, "sentiment", found[0])
    assert unsent(engine, "sentiment", find_alerts(engine, "sentiment", {}, RULE)) == []  # found again, the same window: not sent twice


@pytest.mark.parametrize("margin, pvalue, fires", [(0.15, 0.01, True), (0.6, 0.01, False), (0.15, 1e-9, False)])
def test_the_margin_and_the_significance_level_each_hold_an_alert_back(tmp_path, margin, pvalue, fires):
    from pipeline.monitoring.alerts import find_alerts

    engine = stream(str(tmp_path / "predictions.db"), {"Nokia Oyj": (20, 12)})
    rule = AlertConfig(window_days=1, baseline_windows=28, min_mentions=10, margin=margin, pvalue=pvalue)
    assert bool(find_alerts(engine, "sentiment", {}, rule)) is fires


def test_an_open_alert_is_a_gauge_of_the_servers_metrics_until_the_window_after_its_own_has_passed(tmp_path):
    from types import SimpleNamespace

    from prometheus_client.parser import text_string_to_metric_families

    from pipeline.monitoring.alerts import find_alerts, open_alerts, unsent
    from pipeline.monitoring.served import PredictionLog
    from pipeline.serving.metrics import Metrics

    today = datetime.now(timezone.utc).date()
    engine = stream(str(tmp_path / "predictions.db"), {"Nokia Oyj": (20, 12)}, last=today)
    unsent(engine, "sentiment", find_alerts(engine, "sentiment", {}, RULE))
    assert [a["entity"] for a in open_alerts(engine, today + timedelta(days=1))] == ["Nokia"]  # the next day: still open
    assert open_alerts(engine, today + timedelta(days=2)) == []

    def scrape(location: str) -> dict:
        log = PredictionLog(location, "sentiment", ["sentiment"], share=1.0, capacity=10)  # as `finetune serve` holds it
        exposition = Metrics({"sentiment": SimpleNamespace(served=None, log=log)}).exposition().decode()
        return {(s.name, tuple(sorted(s.labels.items()))): s.value for family in text_string_to_metric_families(exposition)
                for s in family.samples}

    gauge = ("finetune_sentiment_alert", (("entity", "Nokia"), ("pipeline", "sentiment"), ("window", f"{today}/{today}")))
    assert scrape(str(tmp_path / "predictions.db"))[gauge] == 0.6
    down = scrape("postgresql://nobody@127.0.0.1:1/monitoring")  # a store that does not answer: the rest is scraped
    assert not any(name == "finetune_sentiment_alert" for name, _ in down) and ("finetune_pipeline_ready", (("pipeline", "sentiment"),)) in down
