"""The desk page (pipeline/monitoring/page.py) on a stored stream with a negative burst about Nokia: the
figures behind it, and the page itself opened in headless Chromium (a screenshot, no console error,
what a reader sees). `finetune report` writes it from the store."""

from __future__ import annotations

import shutil
from datetime import timedelta

import pytest

from tests.test_alerts import LAST, RULE, stream, tagger

HOSTILE = 'Nokia Oyj | <img src="missing.png" onerror="console.error(1)"> profit warning'  # a text is data, never markup


def burst_store(location: str):
    """29 days of the alert tests' stream with a burst about Nokia on the last day, scored by v3, and
    one more batch that day scored by a new sentiment version, v4, and tagged by a new NER version."""
    from pipeline.monitoring.alerts import find_alerts, unsent
    from pipeline.monitoring.entities import tag_batches
    from pipeline.monitoring.store import store

    engine = stream(location, {"Nokia Oyj": (20, 12)})
    rows = [{"timestamp": f"{LAST}T15:00:00Z", "text": HOSTILE, "batch": "late", "position": 0}]
    store(engine, "sentiment", rows, [{"counted": ["negative"], "score": 0.9}], "4", ["late"])
    tag_batches(engine, "sentiment", "ner", "2", tagger, ["ORG"])
    unsent(engine, "sentiment", find_alerts(engine, "sentiment", {}, RULE))
    return engine


def test_the_figures_hold_every_day_the_entities_trend_the_open_alert_and_the_versions_behind_each(tmp_path):
    from pipeline.monitoring.page import TREND_WINDOWS, alerts_html, desk_figures

    figures = desk_figures(burst_store(str(tmp_path / "predictions.db")), "sentiment", ["negative", "neutral", "positive"], {}, 7)
    market = figures["market"]
    assert len(market) == 29 and market[-1]["date"] == LAST.isoformat() and market[-1]["versions"] == {"3": 80, "4": 1}
    assert all(day["versions"] == {"3": 80} for day in market[:-1]) and market[0]["index"] == pytest.approx(-12 / 80)
    nokia, fortum = figures["entities"]
    assert [w["entity"] for w in nokia] == ["Nokia"] * TREND_WINDOWS and fortum[-1]["entity"] == "Fortum"
    assert nokia[-1]["window"] == [(LAST - timedelta(days=6)).isoformat(), LAST.isoformat()]
    assert nokia[-1]["texts"] == 6 * 20 + 21 and nokia[-1]["versions"] == {"model": ["3", "4"], "tagger": ["1", "2"]}
    assert nokia[0]["texts"] == 0 and nokia[0]["index"] is None  # before the stream began: a gap in the trend
    assert [(a["entity"], a["negative"], a["texts"]) for a in figures["alerts"]] == [("Nokia", 13, 21)]
    assert HOSTILE in figures["alerts"][0]["examples"]
    repeated = {**figures["alerts"][0], "examples": ["Nokia Oyj | news 1", "Nokia Oyj | news 2", "Nokia Oyj | news 1"]}
    assert alerts_html([repeated]).count("<li>") == 2 and "news 1 <span class=muted>(×2)</span>" in alerts_html([repeated])
    roles = {(m["role"], m["version"]): (m["first"], m["last"], m["texts"]) for m in figures["models"]}
    assert roles[("model", "4")] == roles[("tagger", "2")] == (LAST.isoformat(), LAST.isoformat(), 1)
    assert roles[("model", "3")] == ("2026-11-01", LAST.isoformat(), 29 * 80)


def test_the_page_ranks_the_entities_by_the_newest_window_the_one_its_table_shows(tmp_path):
    from pipeline.monitoring.entities import entity_index
    from pipeline.monitoring.page import TREND_WINDOWS, desk_figures

    engine = stream(str(tmp_path / "predictions.db"), {"Kestrel Motors": (200, 0)})  # new this week, more than Nokia's 140
    labels = ["negative", "neutral", "positive"]
    assert entity_index(engine, "sentiment", labels, {}, 7, TREND_WINDOWS, top=1)[0]["entity"] == "Fortum"  # all windows: 580 each
    assert [w[-1]["entity"] for w in desk_figures(engine, "sentiment", labels, {}, 7)["entities"]] == ["Kestrel Motors", "Fortum", "Nokia"]


def test_the_page_opens_in_headless_chromium_without_a_console_error_and_shows_the_alert(tmp_path):
    from pipeline.monitoring.page import desk_figures, desk_html

    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("no chromium on PATH (apt-get install chromium; .ci/run installs it)")
    figures = desk_figures(burst_store(str(tmp_path / "predictions.db")), "sentiment", ["negative", "neutral", "positive"], {}, 7)
    page_file = tmp_path / "desk.html"
    page_file.write_text(desk_html(figures, "fin-sentiment", "ner"), encoding="utf-8")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium)
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        problems: list[str] = []
        page.on("console", lambda message: problems.append(message.text) if message.type in ("error", "warning") else None)
        page.on("pageerror", lambda error: problems.append(str(error)))
        page.on("requestfailed", lambda request: problems.append(f"failed to load {request.url}"))
        page.goto(page_file.as_uri())
        page.screenshot(path=tmp_path / "desk.png", full_page=True)
        alert = page.locator(".alert").inner_text()
        headings = page.locator("h2").all_inner_texts()
        trend_points = page.locator("table svg").first.locator("circle").count()
        browser.close()
    assert problems == []
    assert (tmp_path / "desk.png").stat().st_size > 20_000
    assert headings == ["Open alerts", "Market sentiment index", "Most mentioned entities, last 7 days", "Models behind the figures"]
    assert alert.startswith("Nokia: 13 of 21 texts negative (62%)") and '<img src="missing.png"' in alert  # shown, not run
    assert trend_points == 5  # Nokia's 8 windows, the 3 before the stream began left empty


def test_finetune_report_writes_the_page_and_says_in_one_line_what_is_missing(tmp_path, tiny_model, monkeypatch, capsys):
    from pipeline.cli import main
    from tests.conftest import tiny_params, write_params
    from tests.ner_data import ner_params

    monkeypatch.chdir(tmp_path)
    params = {**tiny_params(tiny_model), "ner": ner_params(tiny_model)["ner"],
              "monitoring": {"pipelines": ["sentiment"], "db": "predictions.db", "entities": None}}
    write_params(tmp_path, params)
    assert main(["report"]) == 2
    assert "monitoring.entities is null: set its tagger" in capsys.readouterr().err
    params["monitoring"]["entities"] = {"tagger": "ner"}
    write_params(tmp_path, params)
    assert main(["report"]) == 0
    assert capsys.readouterr().out.startswith("no text stored for sentiment yet")
    burst_store("predictions.db")
    assert main(["report"]) == 0 and main(["report", "--output", "out/page.html"]) == 0
    assert capsys.readouterr().out.splitlines() == ["wrote reports/monitor/sentiment/desk.html (open it in a browser)",
                                                    "wrote out/page.html (open it in a browser)"]
    html = (tmp_path / "out" / "page.html").read_text(encoding="utf-8")
    assert "fin-sentiment v3, v4" in html and f"{params['ner']['registry']['name']} v1" in html
    assert "&lt;img src=" in html and "<img" not in html
