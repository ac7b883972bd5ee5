"""Negative-news alerts measured on a replayed stream: bursts detected, detection delay, false alerts per day.

The stream: the texts of ../shared/data/fiqa_semeval, SemEval-2017 headlines (each naming its company)
and FiQA microblog posts (each naming its target ticker), their gold score mapped to three classes
(below -0.1 negative, above 0.1 positive, else neutral, as benchmarks/drift.py reads the same data),
replayed as --texts-per-day texts a day, each drawn at random from the pool at a random second of
its day. The first `baseline_windows` days fill the baseline; the --judged-days after them are judged.

What is measured is the rule (pipeline/monitoring/alerts.py with monitoring.entities.alert from
params.yaml): the mentions are the names the data set gives each text, normalised as the monitor
normalises NER mentions, and the labels are the gold ones, so neither the NER nor the sentiment
champion's errors are in these figures.

Bursts: on each judged day one entity of --burst-ranks (by how often the pool names it, 1 the most:
the default spans names in about 20 texts a day down to about 3) gets --burst-texts extra negative
texts about it (its own negative texts, drawn with replacement), spread evenly over --burst-hours
hours from a random hour of the day. Every hour the monitor's steps run on that hour's texts as one
batch, as the flow does: store, tag, find_alerts, unsent, mark_sent.

Per seed and pooled: the share of bursts detected (an alert on the burst's entity for a window its
texts fall in), the delay from the burst's first text to the end of the hour whose run fired, and
false alerts (every other alert) per judged day. Writes benchmarks/results/sentiment_alerts.json and
sentiment_alerts.png (detections and delays by the burst entity's rank).

    python benchmarks/sentiment_alerts.py [--seeds 1 2 3] [--texts-per-day 600] [--judged-days 28]
"""

from __future__ import annotations

import json
import random
import statistics
import tempfile
import time
from collections import defaultdict
from dataclasses import replace
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

from common import RESULTS, SHARED_DATA, benchmark_parser, cpu_facts, spread, write_result

from pipeline.monitoring.alerts import find_alerts, mark_sent, unsent
from pipeline.monitoring.entities import entity_key, tag_batches
from pipeline.monitoring.store import open_store, store
from pipeline.params import AlertConfig
from pipeline.tasks import load_params

FIQA = SHARED_DATA / "fiqa_semeval"
START = date(2026, 1, 1)


def label(score: float) -> str:
    return "negative" if score < -0.1 else "positive" if score > 0.1 else "neutral"


def pool() -> list[tuple[str, str, str]]:
    """(text, entity named, gold label) of every headline and post."""
    headlines = json.loads((FIQA / "SemEval2017Task5Headlines.json").read_text(encoding="utf-8"))
    posts = json.loads((FIQA / "FiQA_post.json").read_text(encoding="utf-8"))
    found = [(h["title"], h["company"], label(float(h["sentiment"]))) for h in headlines]
    found += [(p["sentence"], info["target"], label(float(info["sentiment_score"]))) for p in posts.values() for info in p["info"][:1]]
    return found


def replay(texts: list[tuple], rule: AlertConfig, ranks: list[int], per_day: int, judged: int, burst_texts: int, burst_hours: int,
           seed: int, folder: Path) -> dict:
    """One replay: the bursts injected and every alert sent, with when."""
    rng = random.Random(seed)
    by_entity: dict[str, list[tuple]] = defaultdict(list)
    for text in texts:
        by_entity[entity_key(text[1])].append(text)
    ranked = sorted(by_entity, key=lambda k: (-len(by_entity[k]), k))
    days = rule.baseline_windows * rule.window_days + judged
    hourly: dict[datetime, list[tuple]] = defaultdict(list)
    for d in range(days):
        for _ in range(per_day):
            at = datetime.combine(START + timedelta(days=d), datetime.min.time(), timezone.utc) + timedelta(seconds=rng.randrange(86400))
            hourly[at.replace(minute=0, second=0)].append((at, *rng.choice(texts)))
    bursts = []
    for d in range(days - judged, days):
        rank = rng.choice(ranks)
        key = ranked[rank - 1]
        negative = [t for t in by_entity[key] if t[2] == "negative"] or [t for t in texts if t[2] == "negative"]
        start = datetime.combine(START + timedelta(days=d), datetime.min.time(), timezone.utc) + timedelta(hours=rng.randrange(24))
        for i in range(burst_texts):
            at = start + timedelta(seconds=int(i * burst_hours * 3600 / burst_texts))
            text, _, gold = rng.choice(negative)
            hourly[at.replace(minute=0, second=0)].append((at, text, by_entity[key][0][1], gold))
        bursts.append({"entity": key, "rank": rank, "daily_mentions": len(by_entity[key]) * per_day / len(texts), "start": start,
                       "last": start + timedelta(hours=burst_hours)})

    engine = open_store(str(folder / f"seed-{seed}.db"), "sentiment")
    named: dict[str, set[str]] = defaultdict(set)
    sent, judged_from = [], datetime.combine(START + timedelta(days=days - judged), datetime.min.time(), timezone.utc)
    for hour in sorted(hourly):
        rows = sorted(hourly[hour])
        for _, text, entity, _ in rows:
            named[text].add(entity)
        batch = [{"timestamp": at.isoformat(), "text": text, "batch": hour.isoformat(), "position": i} for i, (at, text, _, _) in enumerate(rows)]
        store(engine, "sentiment", batch, [{"counted": [gold], "score": 1.0} for *_, gold in rows], "gold", [hour.isoformat()])
        tag_batches(engine, "sentiment", "dataset", "gold",
                    lambda batch_texts: [{"entities": [{"type": "ORG", "text": e} for e in sorted(named[t])]} for t in batch_texts], ["ORG"])
        if hour < judged_from:
            continue
        for alert in unsent(engine, "sentiment", find_alerts(engine, "sentiment", {}, rule, end=hour.date())):
            mark_sent(engine, "sentiment", alert)
            sent.append({**alert, "sent": hour + timedelta(hours=1)})
    return {"bursts": bursts, "alerts": sent}


def score(run: dict, rule: AlertConfig, judged: int) -> dict:
    """Bursts detected and their delay in hours; the false alerts per judged day."""
    def covers(alert: dict, burst: dict) -> bool:
        first, last = (date.fromisoformat(d) for d in alert["window"])
        return alert["key"] == burst["entity"] and first <= burst["last"].date() and burst["start"].date() <= last and alert["sent"] > burst["start"]

    delays, matched, outcomes = [], set(), []
    for burst in run["bursts"]:
        hits = [i for i, alert in enumerate(run["alerts"]) if covers(alert, burst)]
        matched.update(hits)
        delay = min((run["alerts"][i]["sent"] - burst["start"]).total_seconds() / 3600 for i in hits) if hits else None
        delays += [delay] if hits else []
        outcomes.append({"rank": burst["rank"], "daily_mentions": round(burst["daily_mentions"], 1), "delay_hours": delay})
    false = [a for i, a in enumerate(run["alerts"]) if i not in matched]
    return {"bursts": len(run["bursts"]), "detected": len(delays) / len(run["bursts"]),
            "delay_hours": {"median": statistics.median(delays), "min": min(delays), "max": max(delays)} if delays else None,
            "delays": [round(d, 2) for d in delays], "false_alerts": len(false), "false_alerts_per_day": len(false) / judged,
            "false_alert_entities": sorted({a["entity"] for a in false}), "outcomes": outcomes}


def plot(runs: dict, path: Path) -> None:
    """Per burst entity rank: the share of its bursts detected, and their delays."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    outcomes = [o for run in runs.values() for o in run["outcomes"]]
    ranks = sorted({o["rank"] for o in outcomes})
    mentions = {o["rank"]: o["daily_mentions"] for o in outcomes}
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    labels = [f"#{r}\n{mentions[r]:.0f}/day" for r in ranks]
    left.bar(labels, [statistics.mean(o["delay_hours"] is not None for o in outcomes if o["rank"] == r) for r in ranks])
    left.set(title="Bursts detected, by the entity's rank", ylabel="share of its bursts", ylim=(0, 1.05))
    right.boxplot([[o["delay_hours"] for o in outcomes if o["rank"] == r and o["delay_hours"] is not None] or [float("nan")] for r in ranks],
                  tick_labels=labels)
    right.set(title="Delay from the burst's first text to the alert", ylabel="hours")
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--texts-per-day", type=int, default=600)
    parser.add_argument("--judged-days", type=int, default=28)
    parser.add_argument("--burst-ranks", type=int, nargs="+", default=[1, 3, 6, 10, 15, 20, 30, 40])
    parser.add_argument("--burst-texts", type=int, default=15)
    parser.add_argument("--burst-hours", type=int, default=6)
    arguments = parser.parse_args()
    rule = load_params(Path("params.yaml")).monitoring.entities.alert
    for override in arguments.set:  # e.g. --set margin=0.1
        key, value = override.split("=", 1)
        rule = replace(rule, **{key: type(getattr(rule, key))(value)})
    texts = pool()
    started, runs = time.time(), {}
    with tempfile.TemporaryDirectory(prefix="alerts-") as folder:
        for seed in arguments.seeds:
            run = replay(texts, rule, arguments.burst_ranks, arguments.texts_per_day, arguments.judged_days, arguments.burst_texts,
                         arguments.burst_hours, seed, Path(folder))
            runs[seed] = score(run, rule, arguments.judged_days)
            print(f"seed {seed}: {runs[seed]['detected']:.0%} of bursts detected, median delay {runs[seed]['delay_hours']}, "
                  f"{runs[seed]['false_alerts_per_day']:.2f} false alerts a day", flush=True)
    delays = [d for run in runs.values() for d in run["delays"]]
    write_result("sentiment_alerts", arguments.set, {
        "rule": vars(rule), "stream": {"texts_per_day": arguments.texts_per_day, "judged_days": arguments.judged_days,
                                       "pool": len(texts), "entities_named": len({entity_key(t[1]) for t in texts}),
                                       "labels": "gold score < -0.1 negative, > 0.1 positive, else neutral",
                                       "data": "fiqa_semeval: SemEval2017Task5Headlines.json (company) + FiQA_post.json (first target)"},
        "bursts": {"ranks": arguments.burst_ranks, "texts": arguments.burst_texts, "hours": arguments.burst_hours, "per_day": 1},
        "detected": spread([run["detected"] for run in runs.values()]),
        "delay_hours": {"median": round(statistics.median(delays), 2), "min": round(min(delays), 2), "max": round(max(delays), 2)} if delays else None,
        "false_alerts_per_day": spread([run["false_alerts_per_day"] for run in runs.values()]),
        "per_seed": runs, "seconds": round(time.time() - started, 1), **cpu_facts(),
    })
    plot(runs, RESULTS / "sentiment_alerts.png")
    print(f"wrote {RESULTS / 'sentiment_alerts.png'}")


if __name__ == "__main__":
    main()
