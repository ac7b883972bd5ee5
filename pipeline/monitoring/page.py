"""The desk page: one static HTML file per sentiment pipeline that monitoring.entities reads, for the
people who watch the market's mood. It shows the open alerts with the texts that drove them, the
market's daily sentiment index, the most mentioned entities with their trend over the last windows,
and the model versions behind each figure. Everything comes from the prediction store; the page needs
no server and no script (charts are inline SVG, values on hover), so it can be mailed or archived.

The monitor flow writes it to reports/monitor/<pipeline>/desk.html after each run; `finetune report`
writes it on demand.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timezone
from html import escape
from pathlib import Path

from sqlalchemy import Engine, func, select

from pipeline.monitoring.alerts import open_alerts
from pipeline.monitoring.entities import entity_index, last_day
from pipeline.monitoring.report import REPORTS, daily_index
from pipeline.monitoring.store import PREDICTIONS, TAGGED, daily_counts
from pipeline.params import Params
from pipeline.plots import index_scale, index_svg
from pipeline.records import Record, write_whole

TREND_WINDOWS = 8  # windows in each entity's trend, the newest last
TOP_ENTITIES = 10  # entities shown, the most mentioned in the newest window first
STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 24px auto; max-width: 980px; color: #222; }
h1 { font-size: 22px; margin-bottom: 2px; } h2 { font-size: 17px; margin-top: 28px; border-bottom: 1px solid #ddd; }
.muted { color: #666; } table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: 4px 8px; border-bottom: 1px solid #eee; vertical-align: middle; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
.alert { border-left: 4px solid #c0392b; background: #fdf2f1; padding: 8px 12px; margin: 10px 0; }
.alert ul { margin: 6px 0 0; padding-left: 20px; } .alert li { margin: 2px 0; }
.negative { color: #c0392b; } .positive { color: #1e8449; }
"""


def version_counts(engine: Engine, pipeline: str) -> dict[str, Counter]:
    """Per day, the texts each sentiment model version scored."""
    day = func.substr(PREDICTIONS.c.timestamp, 1, 10)
    query = (select(day, PREDICTIONS.c.model_version, func.count()).where(PREDICTIONS.c.pipeline == pipeline)
             .group_by(day, PREDICTIONS.c.model_version))
    days: dict[str, Counter] = {}
    with engine.begin() as connection:
        for date, version, n in connection.execute(query):
            days.setdefault(date, Counter())[version] += n
    return days


def model_spans(engine: Engine, pipeline: str) -> list[Record]:
    """Each model version behind the pipeline's figures, the sentiment model's and the tagger's: the
    first and last day of the texts it read, and how many."""
    p, t = PREDICTIONS.c, TAGGED.c
    day = func.substr(p.timestamp, 1, 10)
    scored = select(p.model_version, func.min(day), func.max(day), func.count()).where(p.pipeline == pipeline).group_by(p.model_version)
    tagged = (select(t.model_version, func.min(day), func.max(day), func.count())
              .join(TAGGED, (t.pipeline == p.pipeline) & (t.batch == p.batch)).where(p.pipeline == pipeline).group_by(t.model_version))
    with engine.begin() as connection:
        return [{"role": role, "version": number, "first": first, "last": last, "texts": texts}
                for role, query in (("model", scored), ("tagger", tagged)) for number, first, last, texts in connection.execute(query)]


def desk_figures(engine: Engine, pipeline: str, labels: list[str], aliases: dict[str, str], window_days: int) -> Record | None:
    """Everything the page shows, as JSON-able figures; None when the pipeline has stored no text."""
    end = last_day(engine, pipeline)
    if end is None:
        return None
    versions = version_counts(engine, pipeline)
    market = [{**day, "versions": dict(versions.get(day["date"], {}))} for day in daily_index(daily_counts(engine, pipeline, False))]
    rows = entity_index(engine, pipeline, labels, aliases, window_days, TREND_WINDOWS, end, TOP_ENTITIES, by_newest=True)
    trends = [rows[start:start + TREND_WINDOWS] for start in range(0, len(rows), TREND_WINDOWS)]
    alerts = sorted((a for a in open_alerts(engine, end) if a["pipeline"] == pipeline), key=lambda a: (a["window"], -a["negative"]), reverse=True)
    return {"pipeline": pipeline, "end": end.isoformat(), "window_days": window_days, "market": market,
            "entities": trends, "alerts": alerts, "models": model_spans(engine, pipeline)}


def version(number: str) -> str:
    """'v3' for a registered version; any other label (a replay's 'gold') as it is."""
    return f"v{number}" if number.isdigit() else number


def named(versions: list[str] | dict, name: str) -> str:
    """'fin-sentiment v1, v2' for a model's versions."""
    return f"{name} " + ", ".join(map(version, sorted(versions, key=lambda v: (len(v), v)))) if versions else ""


def signed(value: float | None) -> str:
    return "" if value is None else f'<span class="{"negative" if value < 0 else "positive"}">{value:+.2f}</span>'


def alerts_html(alerts: list[Record]) -> str:
    if not alerts:
        return '<p class="muted">No open alert: no entity\'s negative share rose above its baseline in the last windows.</p>'
    cards = []
    for a in alerts:
        base = a["baseline"]
        texts = "".join(f"<li>{escape(text)}{f' <span class=muted>(×{n})</span>' if n > 1 else ''}</li>"
                        for text, n in Counter(a["examples"]).items())  # a headline syndicated twice: once, counted
        cards.append(
            f'<div class="alert"><b>{escape(a["entity"])}</b>: {a["negative"]} of {a["texts"]} texts negative '
            f'({a["share"]:.0%}) from {a["window"][0]} to {a["window"][1]}, against {base["share"]:.0%} of the {base["of"]}\'s '
            f'{base["texts"]} texts from {base["windows"][0]} to {base["windows"][1]} (p {a["pvalue"]:.1e}).'
            f'<ul>{texts}</ul></div>')
    return "".join(cards)


def market_html(market: list[Record], model: str) -> str:
    """The daily index as a chart, a marker where the model version changed, the versions on hover."""
    tips = [f"{d['date']}: index {d['index']:+.3f}, {d['texts']} texts, {named(d['versions'], model)}" for d in market]
    changes, seen = [], None
    for i, d in enumerate(market):
        newest = max(d["versions"], key=lambda v: (len(v), v)) if d["versions"] else seen
        if seen is not None and newest != seen:
            changes.append((i, version(newest)))
        seen = newest
    values = [d["index"] for d in market]
    svg = index_svg([d["date"] for d in market], values, tips, width=920, markers=changes, scale=index_scale(values))
    return (f"<p>Share of positive minus share of negative texts per day, {sum(d['texts'] for d in market)} texts "
            f"({named(sorted({v for d in market for v in d['versions']}), model)}); a dashed line marks a new model version.</p>{svg}")


def entities_html(trends: list[list[Record]], model: str, tagger: str, window_days: int) -> str:
    if not trends:
        return '<p class="muted">No entity mentioned yet: the tagger\'s champion reads each scored batch once it has one.</p>'
    lines = []
    for windows in trends:
        last = windows[-1]
        tips = [f"{w['window'][0]} to {w['window'][1]}: {w['texts']} texts" + ("" if w.get("index") is None else
                f", index {w['index']:+.2f} ({w['interval'][0]:+.2f} to {w['interval'][1]:+.2f})") for w in windows]
        svg = index_svg([w["window"][1] for w in windows], [w.get("index") for w in windows], tips, width=220, height=56,
                        intervals=[w.get("interval") for w in windows])
        negative = last["shares"].get("negative")
        interval = "" if last.get("index") is None else f' <span class="muted">({last["interval"][0]:+.2f} to {last["interval"][1]:+.2f})</span>'
        lines.append(
            f"<tr><td>{escape(last['entity'])}</td><td class='num'>{last['texts']}</td>"
            f"<td class='num'>{'' if negative is None else f'{negative:.0%}'}</td><td class='num'>{signed(last.get('index'))}{interval}</td>"
            f"<td>{svg}</td><td class='muted'>{named(last['versions']['model'], model)}<br>{named(last['versions']['tagger'], tagger)}</td></tr>")
    return (f"<p>Texts that mention each entity in the last {window_days} days, and the sentiment index with its 95% interval; "
            f"the trend shows the last {TREND_WINDOWS} windows of {window_days} days (the band is the interval).</p>"
            "<table><tr><th>entity</th><th class='num'>texts</th><th class='num'>negative</th><th class='num'>index</th>"
            f"<th>trend</th><th>models</th></tr>{''.join(lines)}</table>")


def models_html(models: list[Record], model: str, tagger: str) -> str:
    rows = "".join(f"<tr><td>{escape(model if m['role'] == 'model' else tagger)} {escape(version(str(m['version'])))}</td>"
                   f"<td>{'sentiment labels' if m['role'] == 'model' else 'entity mentions'}</td><td>{m['first']} to {m['last']}</td>"
                   f"<td class='num'>{m['texts']}</td></tr>" for m in models)
    return ("<table><tr><th>model</th><th>gave</th><th>texts dated</th><th class='num'>texts</th></tr>" + rows + "</table>")


def desk_html(figures: Record, model: str, tagger: str) -> str:
    """The page for `figures` (desk_figures), `model` and `tagger` naming the registered models."""
    pipeline, written = escape(figures["pipeline"]), datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    model, tagger = escape(model), escape(tagger)
    return (
        f"<!doctype html><html lang='en'><meta charset='utf-8'><title>Market mood: {pipeline}</title><style>{STYLE}</style>"
        f"<h1>Market mood: {pipeline}</h1><p class='muted'>Texts up to {figures['end']}; page written {written} "
        f"from the monitor's prediction store.</p>"
        f"<h2>Open alerts</h2>{alerts_html(figures['alerts'])}"
        f"<h2>Market sentiment index</h2>{market_html(figures['market'], model)}"
        f"<h2>Most mentioned entities, last {figures['window_days']} days</h2>"
        f"{entities_html(figures['entities'], model, tagger, figures['window_days'])}"
        f"<h2>Models behind the figures</h2>{models_html(figures['models'], model, tagger)}</html>\n"
    )


def desk_path(pipeline: str) -> Path:
    return REPORTS / pipeline / "desk.html"


def write_desk(engine: Engine, params: Params, pipeline: str, aliases: dict[str, str], path: Path | None = None) -> Path | None:
    """Write the pipeline's page (default: desk_path) from the store; None when it has stored no text.
    The pipeline is one that params' monitoring.entities reads."""
    entities = params.monitoring.entities
    figures = desk_figures(engine, pipeline, params.pipeline(pipeline).validate.labels, aliases, entities.window_days)
    if figures is None:
        return None
    path = path or desk_path(pipeline)  # whole: a reader, or `finetune report` beside the monitor, never sees part of a page
    write_whole(path, [desk_html(figures, params.pipeline(pipeline).registry.name, params.pipeline(entities.tagger).registry.name)])
    return path
