"""Sentiment per entity without a model: mention names normalised, the alias file, the index's interval,
mentions stored once per text and entity (also when a run fails half-way) and counted per window, the
params checks and `finetune entities`. The monitor flow tags with a real NER champion in test_flows.py."""

from __future__ import annotations

import re
from datetime import date

import numpy as np
import pytest

from tests.conftest import LABELS, tiny_params, write_params

ORGS = ["Nokia Oyj", "NOKIA", "Nokia's", "Stora Enso", "NOK", "Fortum Corp."]


@pytest.mark.parametrize("mention, name", [
    ("Nokia Oyj", "Nokia"), ("NOKIA CORPORATION", "NOKIA"), ("Nokia's", "Nokia"), ('"Apple Inc."', "Apple"),
    ("The Boeing Company", "Boeing"), ("H&M AB (publ)", "H&M"), ("Stora  Enso Oyj", "Stora Enso"), ("Group", "Group"),
    ("Halden Shipping ASA", "Halden Shipping"), ("The", "The"),
])
def test_a_mention_is_named_without_case_spaces_punctuation_or_legal_suffixes(mention, name):
    from pipeline.monitoring.entities import entity_key, entity_name

    assert entity_name(mention) == name and entity_key(mention) == name.casefold()


def test_an_alias_file_maps_spellings_onto_one_name_and_a_bad_one_is_one_line(tmp_path):
    from pipeline.errors import ConfigError
    from pipeline.monitoring.entities import read_aliases

    aliases = tmp_path / "aliases.yaml"
    aliases.write_text("Nokia: [NOK, Nokia Networks Oyj]\nStora Enso: []\n", encoding="utf-8")
    assert read_aliases(str(aliases)) == {"nokia": "Nokia", "nok": "Nokia", "nokia networks": "Nokia", "stora enso": "Stora Enso"}
    assert read_aliases(None) == {}
    for content, problem in [("Nokia: NOK\n", "'Nokia' must map to a list of spellings, got 'NOK'"),
                             ("Nokia: [NOK]\nNordea: [nok]\n", "'nok' is a spelling of both 'Nokia' and 'Nordea': keep it under one"),
                             ("- Nokia\n", "expected a mapping of names to lists of spellings"), ("Nokia: [NOK\n", "not valid UTF-8 YAML")]:
        aliases.write_text(content, encoding="utf-8")
        with pytest.raises(ConfigError, match=f"^monitoring.entities.aliases: {aliases}: .*{problem}".replace("[", r"\[")):
            read_aliases(str(aliases))
    with pytest.raises(ConfigError, match="file not found"):
        read_aliases(str(tmp_path / "missing.yaml"))


def test_the_index_interval_covers_the_true_index_at_its_confidence():
    from pipeline.monitoring.entities import index_interval

    rng = np.random.default_rng(0)
    for shares in [(0.6, 0.1, 0.3), (0.2, 0.5, 0.3), (0.9, 0.02, 0.08), (1 / 3, 1 / 3, 1 / 3)]:
        for texts in (5, 20, 200):
            counts = rng.multinomial(texts, shares, size=2000)
            covered = [low <= shares[0] - shares[1] <= high for low, high in (index_interval(p, n, texts) for p, n, _ in counts)]
            assert 0.93 <= np.mean(covered) <= 0.995, (shares, texts)  # about 95%, wider rather than narrower for few texts
    assert index_interval(1, 0, 1) == pytest.approx((-0.7335, 1.0), abs=1e-4)  # one text: wide, not a point


def tagger(texts: list[str]) -> list[dict]:
    """Stands in for the NER champion: each of ORGS in a text, as an ORG, and the first word as a PER."""
    return [{"entities": [{"type": "ORG", "text": org} for org in ORGS if re.search(rf"(?<!\w){re.escape(org)}(?!\w)", text)]
                         + [{"type": "PER", "text": text.split()[0]}]} for text in texts]


def scored_store(location: str):
    """A store with two sentiment batches scored: day 1 (2026-11-20) and day 8 (2026-11-27)."""
    from pipeline.monitoring.store import open_store, store

    engine = open_store(location, "sentiment")
    batches = {
        "day-1.csv": [("2026-11-20", "Nokia Oyj profit rose, NOKIA said", "positive"), ("2026-11-20", "Stora Enso cuts jobs", "negative")],
        "day-8.csv": [("2026-11-27", "Nokia's loss widened", "negative"), ("2026-11-27", "NOK fell as Fortum Corp. rose", "negative"),
                      ("2026-11-27", "Stora Enso steady", "neutral"), ("2026-11-27", "Markets were calm", "neutral")],
    }
    for name, rows in batches.items():
        texts = [{"timestamp": f"{day}T09:00:00Z", "text": text, "batch": name, "position": i} for i, (day, text, _) in enumerate(rows)]
        store(engine, "sentiment", texts, [{"counted": [label], "score": 0.9} for _, _, label in rows], "3", [name])
    return engine


def mentions_are_stored_once_and_counted_per_window(location: str) -> None:
    from sqlalchemy import func, select

    from pipeline.monitoring.entities import entity_index, tag_batches, untagged
    from pipeline.monitoring.store import MENTIONS, TAGGED

    engine = scored_store(location)

    def failing_on_day_8(texts):
        if "Markets were calm" in texts:
            raise RuntimeError("killed")
        return tagger(texts)

    with pytest.raises(RuntimeError):
        tag_batches(engine, "sentiment", "ner", "2", failing_on_day_8, ["ORG"])
    assert untagged(engine, "sentiment") == ["day-8.csv"]  # day 1 whole, day 8 not at all
    assert tag_batches(engine, "sentiment", "ner", "2", tagger, ["ORG"]) == (1, 4, 4)
    assert tag_batches(engine, "sentiment", "ner", "2", tagger, ["ORG"]) == (0, 0, 0)
    with engine.begin() as connection:
        stored = connection.execute(select(MENTIONS.c.batch, MENTIONS.c.position, MENTIONS.c.entity, MENTIONS.c.mention)
                                    .order_by(MENTIONS.c.batch, MENTIONS.c.position, MENTIONS.c.entity)).all()
        assert connection.scalar(select(func.count()).select_from(TAGGED).where(TAGGED.c.model_version == "2")) == 2
    assert [tuple(row) for row in stored] == [  # 'Nokia Oyj' and 'NOKIA' in one text: one mention of one company; no PER
        ("day-1.csv", 0, "nokia", "Nokia Oyj"), ("day-1.csv", 1, "stora enso", "Stora Enso"), ("day-8.csv", 0, "nokia", "Nokia's"),
        ("day-8.csv", 1, "fortum", "Fortum Corp."), ("day-8.csv", 1, "nok", "NOK"), ("day-8.csv", 2, "stora enso", "Stora Enso")]

    week = entity_index(engine, "sentiment", LABELS, {}, window_days=7)  # the last 7 days: day 8 only
    assert [(r["entity"], r["window"], r["texts"], r["counts"]["negative"], r["index"]) for r in week] == [
        ("Fortum", ["2026-11-21", "2026-11-27"], 1, 1, -1.0), ("NOK", ["2026-11-21", "2026-11-27"], 1, 1, -1.0),
        ("Nokia", ["2026-11-21", "2026-11-27"], 1, 1, -1.0), ("Stora Enso", ["2026-11-21", "2026-11-27"], 1, 0, 0.0)]
    aliased = entity_index(engine, "sentiment", LABELS, {"nok": "Nokia", "nokia": "Nokia"}, window_days=7, count=2, entity="nok")
    assert [(r["window"][0], r["texts"], r["shares"]["negative"], r["index"]) for r in aliased] == [
        ("2026-11-14", 1, 0.0, 1.0), ("2026-11-21", 2, 1.0, -1.0)]  # NOK is Nokia: two texts on day 8, counted once each
    low, high = aliased[1]["interval"]
    assert -1.0 <= low < -0.5 < high <= 1.0
    assert entity_index(engine, "sentiment", LABELS, {}, window_days=7, top=1, end=date(2026, 11, 20))[0]["entity"] == "Nokia"
    assert entity_index(engine, "intents", LABELS, {}, window_days=7) == []


def test_mentions_are_stored_once_per_text_and_entity_and_counted_per_window_on_sqlite(tmp_path):
    mentions_are_stored_once_and_counted_per_window(str(tmp_path / "predictions.db"))


@pytest.mark.e2e
def test_mentions_are_stored_once_per_text_and_entity_and_counted_per_window_on_postgresql(postgres):
    mentions_are_stored_once_and_counted_per_window(postgres.create_database("entities"))


@pytest.mark.parametrize("entities, problem", [
    ({"tagger": "sentiment"}, "'monitoring.entities.tagger' names 'sentiment', a text_classification pipeline: name a token classification"),
    ({"tagger": "nerr"}, "names 'nerr', not a pipeline (did you mean 'ner'?)"),
    ({"tagger": "ner", "pipelines": ["intents"]}, "'monitoring.entities.pipelines' names 'intents', which is not monitored"),
    ({"tagger": "ner", "types": ["COMPANY"]}, "'monitoring.entities.types' names 'COMPANY', which the ner pipeline does not find"),
])
def test_entities_params_that_cannot_work_are_one_line(tmp_path, tiny_model, entities, problem):
    from pipeline.errors import ConfigError
    from pipeline.tasks import load_params
    from tests.ner_data import ner_params

    params = {**tiny_params(tiny_model), "ner": ner_params(tiny_model)["ner"], "monitoring": {"pipelines": ["sentiment"], "entities": entities}}
    with pytest.raises(ConfigError, match=re.escape(problem)):
        load_params(write_params(tmp_path, params))


def test_finetune_entities_prints_the_index_per_entity_and_window(tmp_path, tiny_model, monkeypatch, capsys):
    from pipeline.cli import main
    from pipeline.monitoring.entities import tag_batches
    from tests.ner_data import ner_params

    monkeypatch.chdir(tmp_path)
    (tmp_path / "aliases.yaml").write_text("Nokia: [NOK]\n", encoding="utf-8")
    params = {**tiny_params(tiny_model), "ner": ner_params(tiny_model)["ner"],
              "monitoring": {"pipelines": ["sentiment"], "db": "predictions.db", "entities": {"tagger": "ner", "aliases": "aliases.yaml"}}}
    write_params(tmp_path, params)
    assert main(["entities"]) == 0
    assert capsys.readouterr().out.startswith("no mentions stored for sentiment in those windows")
    tag_batches(scored_store("predictions.db"), "sentiment", "ner", "2", tagger, ["ORG"])
    assert main(["entities", "--entity", "NOKIA OYJ", "--windows", "2"]) == 0
    assert capsys.readouterr().out.splitlines()[2:] == [
        "| Nokia | 2026-11-14 to 2026-11-20 | 1 | 0% | +1.00 (-0.73 to +1.00) |",
        "| Nokia | 2026-11-21 to 2026-11-27 | 2 | 100% | -1.00 (-1.00 to +0.35) |"]
    with pytest.raises(SystemExit):  # argparse's usage error
        main(["entities", "--end", "2026-13-01"])
    assert "must be a date as YYYY-MM-DD, got '2026-13-01'" in capsys.readouterr().err
    params["monitoring"]["entities"] = None
    write_params(tmp_path, params)
    assert main(["entities"]) == 2
    assert "monitoring.entities is null: set its tagger" in capsys.readouterr().err
