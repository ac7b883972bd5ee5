"""The monitor's report per pipeline: reports/monitor/<pipeline>.json with its plots in
reports/monitor/<pipeline>/. Per day it gives the sentiment index (share positive minus share
negative) for label sets with both, and otherwise the share of each label or entity type.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from pipeline.monitoring.drift import how_far
from pipeline.monitoring.entities import entity_table
from pipeline.plots import label_shares_png, sentiment_index_html, sentiment_index_png
from pipeline.tasks import Task

REPORTS = Path("reports/monitor")  # <pipeline>.json, and the pipeline's plots in <pipeline>/


def report_path(pipeline: str) -> Path:
    return REPORTS / f"{pipeline}.json"


def daily_index(days: dict[str, tuple[int, Counter]]) -> list[dict]:
    """Share positive minus share negative, per day."""
    return [{"date": day, "index": (c["positive"] - c["negative"]) / texts, "texts": texts} for day, (texts, c) in days.items()]


def daily_shares(days: dict[str, tuple[int, Counter]]) -> list[dict]:
    """Each label's (or entity type's) share of what was counted, per day."""
    return [
        {"date": day, "texts": texts, "counted": c.total(), "shares": {label: n / c.total() for label, n in c.most_common()}}
        for day, (texts, c) in days.items()
    ]


def write_daily(report: dict, days: dict[str, tuple[int, Counter]], task: Task, version: str) -> list[Path]:
    """The daily figures into the report, and their plots: the sentiment index for a label set with
    positive and negative, else each label's (or entity type's) share. Returns the plot files."""
    folder, title = REPORTS / task.pipeline, f"{task.config.registry.name} v{version}"
    if not task.counts.several and {"positive", "negative"} <= set(task.config.validate.labels):
        index = report["index"] = daily_index(days)
        dates, values, counts = [d["date"] for d in index], [d["index"] for d in index], [d["texts"] for d in index]
        sentiment_index_png(dates, values, folder / "index.png", f"Sentiment index ({title})")
        sentiment_index_html(dates, values, counts, folder / "index.html", f"Sentiment index ({title})")
        return [folder / "index.png", folder / "index.html"]
    shares = report["shares"] = daily_shares(days)
    label_shares_png([d["date"] for d in shares], [d["shares"] for d in shares], folder / "shares.png",
                     f"Share of each {task.counts.noun} ({title})")
    return [folder / "shares.png"]


def summary_markdown(report: dict) -> str:
    drift = report["drift"]
    rows = "\n".join(f"| {how_far(name, figure)} | {figure['drifted']} |" for name, figure in drift.items())
    if "index" in report:
        daily = "Daily sentiment index\n\n| date | index | texts |\n|---|---|---|\n" + "\n".join(
            f"| {d['date']} | {d['index']:+.3f} | {d['texts']} |" for d in report["index"])
    else:
        daily = "Daily shares\n\n| date | texts | top shares |\n|---|---|---|\n" + "\n".join(
            f"| {d['date']} | {d['texts']} | {', '.join(f'{k} {v:.0%}' for k, v in list(d['shares'].items())[:5])} |"
            for d in report["shares"])
    if "entities" in report:
        daily += (f"\n\n## The most mentioned entities, last {report['entities']['window_days']} days\n\n"
                  f"{entity_table(report['entities']['top'])}")
    for alert in report.get("alerts", []):
        daily += (f"\n\n## Alert: negative news about {alert['entity']}, {alert['window'][0]} to {alert['window'][1]}\n\n"
                  f"{alert['negative']} of {alert['texts']} texts negative ({alert['share']:.0%}; baseline {alert['baseline']['share']:.0%} "
                  f"of the {alert['baseline']['of']}, p {alert['pvalue']:.1e}):\n\n" + "\n".join(f"- {text}" for text in alert["examples"]))
    return (
        f"# Monitor {report['pipeline']}: {report['model']} v{report['model_version']}\n\n"
        f"**drift detected: {report['drift_detected']}** on {report['texts']} texts"
        f"{': ' + '; '.join(report['alarm']) if report['alarm'] else ''}\n\n"
        f"| figure against its threshold | drifted |\n|---|---|\n{rows}\n\n"
        f"## {daily}\n\nPlots: `{REPORTS / report['pipeline']}/`{'; the desk page: `' + report['desk'] + '`' if 'desk' in report else ''}\n"
    )
