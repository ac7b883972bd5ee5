"""The desk page (pipeline/monitoring/page.py) of a replayed stream, and its screenshot for the docs.

Replays one seed of benchmarks/sentiment_alerts.py's stream (FiQA/SemEval headlines and posts with
negative bursts injected; gold labels stand in for the sentiment champion and the data set's company
names for the NER champion's mentions, so their versions read "gold"), writes the page as the monitor
does, and opens it in headless Chromium for a full-page screenshot. Needs ../shared/data and
Chromium (apt-get install chromium). Only the screenshot is kept: the page holds the data set's
texts, which the project does not copy.

    python benchmarks/desk_page.py [--seed 1] [--judged-days 28]   # -> docs/desk.png
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from common import benchmark_parser
from sentiment_alerts import pool, replay

from pipeline.monitoring.page import desk_figures, desk_html
from pipeline.monitoring.store import open_store
from pipeline.tasks import load_params

DOCS = Path("docs")


def screenshot(page: Path, image: Path) -> list[str]:
    """A full-page screenshot of `page` in headless Chromium; returns the console errors it logged."""
    from playwright.sync_api import sync_playwright

    errors: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=shutil.which("chromium"))
        tab = browser.new_page(viewport={"width": 1100, "height": 900})
        tab.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
        tab.goto(page.resolve().as_uri())
        tab.screenshot(path=image, full_page=True)
        browser.close()
    return errors


def main() -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--judged-days", type=int, default=28)
    arguments = parser.parse_args()
    params = load_params(Path("params.yaml"))
    entities = params.monitoring.entities
    with tempfile.TemporaryDirectory(prefix="desk-") as folder:
        run = replay(pool(), entities.alert, [1, 3, 6, 10, 15, 20, 30, 40], 600, arguments.judged_days, 15, 6, arguments.seed, Path(folder))
        engine = open_store(str(Path(folder) / f"seed-{arguments.seed}.db"), "sentiment")
        figures = desk_figures(engine, "sentiment", params.pipeline("sentiment").validate.labels, {}, entities.window_days)
        engine.dispose()
        page = Path(folder) / "desk.html"
        page.write_text(desk_html(figures, "FiQA/SemEval labels", "data set names"), encoding="utf-8")
        errors = screenshot(page, DOCS / "desk.png")
    print(f"{len(run['alerts'])} alerts sent over {arguments.judged_days} judged days, {len(figures['alerts'])} open on {figures['end']}; "
          f"wrote {DOCS / 'desk.png'}; console errors: {errors or 'none'}")


if __name__ == "__main__":
    main()
