"""The data gate at scale and with labels as real data sets write them.

Every raw row ends up clean or quarantined, whatever the number of failures: each task gets
12,000 rows with 1,000 or more failing each of its expectations (Great Expectations' own lists of
failing rows are not complete lists past a few hundred). Labels match ignoring case and spaces,
`label_map` maps a source's own labels, and NER tags in IOB1, BIOES, BILOU or as integer ids
become IOB2.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.paths import PipelinePaths
from pipeline.records import load_json, load_records
from tests.conftest import make_rows, tiny_params, write_csv, write_params
from tests.ner_data import make_sentences, ner_params, write_conll
from tests.test_translation import translation_section

ROWS = 12_000
BAD = 1_000  # failing rows per expectation
UNUSED_MODEL = Path("unused")  # collect and validate never load the model
LENIENT = {"max_reject_fraction": 1.0}


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return str(path.relative_to(Path.cwd()))


def validate(pipeline: str, capsys) -> tuple[int, str]:
    """Run collect and validate as `finetune stage` does; (exit code, everything printed)."""
    printed = ""
    for stage in ("collect", "validate"):
        code = main(["stage", stage, "--pipeline", pipeline])
        printed += "".join(capsys.readouterr())
        if code:
            break
    return code, printed


def accounted(pipeline: str) -> tuple[list[dict], dict[int, str]]:
    """(clean rows, reason by raw row number), after checking that every row read is one or the other."""
    paths = PipelinePaths(pipeline)
    clean, quarantined = load_records(paths.clean), load_records(paths.quarantine)
    read = load_json(paths.provenance)["rows"]
    assert len(clean) + len(quarantined) == read == len(load_records(paths.raw))
    assert not {r["row"] for r in clean} & {r["row"] for r in quarantined}
    return clean, {r["row"]: r["reason"] for r in quarantined}


def planted(reasons: dict[int, str], bad_rows: dict[str, set[int]]) -> None:
    """Each planted kind of bad row is quarantined, every one of them, with its reason, and nothing else is."""
    for fragment, rows in bad_rows.items():
        assert len(rows) >= BAD
        caught = {row for row, reason in reasons.items() if fragment in reason}
        assert rows <= caught, f"{fragment}: {len(rows - caught)} of {len(rows)} bad rows passed as clean"
    assert set(reasons) == set().union(*bad_rows.values())


def test_sentiment_every_failing_row_is_quarantined_at_scale(workspace, tiny_model, capsys):
    good = iter(make_rows(ROWS, seed=3))
    rows, bad = [], {}
    makers = {  # each bad row unique, or collect would drop it as an exact duplicate
        "text is missing": lambda row, n: {"text": None, "label": f"label {n}"},
        "text length outside 3..2000": lambda row, n: {**row, "text": "x" * 2000 + str(n)},
        "label is missing": lambda row, n: {**row, "label": None},
        "label 'bullish' not in": lambda row, n: {**row, "label": "bullish"},
    }
    for number in range(1, ROWS + 1):  # jsonl: row n is line n
        row = next(good)
        kind = list(makers)[number % 10] if number % 10 < len(makers) else None
        if kind:
            row = makers[kind](row, number)
            bad.setdefault(kind, set()).add(number)
        rows.append(row)
    write_params(workspace, tiny_params(tiny_model, write_jsonl(workspace / "data" / "big.jsonl", rows),
                                        sentiment__data__format="jsonl", sentiment__validate={**LENIENT, "labels": ["negative", "neutral", "positive"]}))
    code, printed = validate("sentiment", capsys)
    assert code == 0, printed
    clean, reasons = accounted("sentiment")
    planted(reasons, bad)
    assert {row["label"] for row in clean} == {"negative", "neutral", "positive"}
    report = load_json(PipelinePaths("sentiment").validation_report)
    assert report["reasons"]["label not in [negative, neutral, positive]"] == len(bad["label 'bullish' not in"]) + len(bad["text is missing"])


def test_too_many_rejects_stops_the_run_naming_the_commonest_reason(workspace, tiny_model, capsys):
    rows = [{**row, "text": row["text"] + " and more" * 5} for row in make_rows(300)]  # every row longer than max_chars
    write_csv(workspace / "data" / "sample.csv", rows)
    write_params(workspace, tiny_params(tiny_model, sentiment__validate={"labels": ["negative", "neutral", "positive"],
                                                                        "min_chars": 3, "max_chars": 50}))
    code, printed = validate("sentiment", capsys)
    assert code == 3 and "Traceback" not in printed
    assert ("error: validation of data/sample.csv failed: 300 of 300 rows (100%) were rejected, more than "
            "sentiment.validate.max_reject_fraction=20%; most often: text length outside 3..50 characters "
            "(300 rows; e.g. data/sample.csv row 2: text length outside 3..50 characters)") in printed
    clean, reasons = accounted("sentiment")
    assert not clean and len(reasons) == 300


def test_ner_every_failing_row_is_quarantined_at_scale(workspace, tiny_model, capsys):
    sentences = iter(make_sentences(ROWS, seed=4))
    rows, bad = [], {}
    makers = {
        "outside 1..50": lambda tokens, tags: (tokens * 10, tags * 10),
        "tokens but": lambda tokens, tags: (tokens, tags[:-1]),
        "is not one of O": lambda tokens, tags: (tokens, ["B-CITY"] + tags[1:]),
        "follows": lambda tokens, tags: (tokens, ["I-PER"] + tags[1:]),  # invalid_iob: reject
    }
    for number in range(1, ROWS + 1):
        tokens, tags = next(sentences)
        kind = list(makers)[number % 10] if number % 10 < len(makers) else None
        if kind:
            tokens, tags = makers[kind](tokens, tags)
            bad.setdefault(kind, set()).add(number)
        rows.append({"tokens": tokens, "tags": tags})
    source = write_jsonl(workspace / "data" / "ner.jsonl", rows)
    params = ner_params(UNUSED_MODEL, source, validate={**LENIENT, "max_tokens": 50, "invalid_iob": "reject"})
    params["ner"]["data"]["format"] = "jsonl"
    write_params(workspace, params)
    code, printed = validate("ner", capsys)
    assert code == 0, printed
    _, reasons = accounted("ner")
    planted(reasons, bad)


def test_translation_every_failing_row_is_quarantined_at_scale(workspace, tiny_model, capsys):
    rng = random.Random(5)
    words = "der die das Haus Hund Katze geht schnell nach the house dog cat goes fast to".split()
    rows, bad = [], {}
    makers = {
        "de is missing": lambda pair: {**pair, "de": None},
        "translation is missing": lambda pair: {**pair, "en": None},
        "text length outside 1..500": lambda pair: {**pair, "de": "x" * 600},
        "translation length outside 1..500": lambda pair: {**pair, "en": ""},
        "length_ratio": lambda pair: {**pair, "en": pair["en"] + " und" * 40},
    }
    for number in range(1, ROWS + 1):
        pair = {"de": " ".join(rng.choices(words[:9], k=6)) + f" {number}", "en": " ".join(rng.choices(words[9:], k=6)) + f" {number}"}
        kind = list(makers)[number % 10] if number % 10 < len(makers) else None
        if kind:
            pair = makers[kind](pair)
            bad.setdefault(kind, set()).add(number)
        rows.append(pair)
    bad["text is missing"] = bad.pop("de is missing")
    source = write_jsonl(workspace / "data" / "pairs.jsonl", rows)
    section = translation_section(UNUSED_MODEL, source, validate={**LENIENT, "min_pairs": 0})
    section["data"]["format"] = "jsonl"
    write_params(workspace, {"pipelines": ["translation"], "tracking": {"experiment": "test"}, "translation": section})
    code, printed = validate("translation", capsys)
    assert code == 0, printed
    _, reasons = accounted("translation")
    planted(reasons, bad)


def test_an_expectation_kind_without_a_row_check_is_refused_in_one_line_before_any_row_is_judged(workspace, tiny_model, capsys,
                                                                                                   monkeypatch):
    import great_expectations as gx

    from pipeline.tasks import task_class

    sentiment = task_class("text_classification")
    suite = sentiment.expectations
    monkeypatch.setattr(sentiment, "expectations", lambda self: [*suite(self), gx.expectations.ExpectColumnValuesToMatchRegex(
        column="text", regex="[a-z]")])
    code, printed = validate("sentiment", capsys)
    assert code != 0 and not Path(PipelinePaths("sentiment").clean).exists()
    assert ("validate[sentiment]: the text_classification task type expects expect_column_values_to_match_regex on 'text', "
            "which has no row check: use one of expect_column_values_to_be_null, ") in printed
    assert "Traceback" not in printed


# labels as published ------------------------------------------------------------------------------
def test_labels_match_ignoring_case_and_spaces(workspace, tiny_model, capsys):
    rows = make_rows(300)
    write_csv(workspace / "data" / "sample.csv", [{**row, "label": f"  {row['label'].upper()} "} for row in rows])
    code, printed = validate("sentiment", capsys)
    assert code == 0, printed
    clean, reasons = accounted("sentiment")
    assert not reasons and [row["label"] for row in clean] == [row["label"] for row in rows]


def test_label_map_maps_numbers_and_words_and_quarantines_the_rest(workspace, tiny_model, capsys):
    numbers = {"negative": 0, "positive": 1, "neutral": 2}
    original = make_rows(300)
    rows = [{**row, "label": numbers[row["label"]]} for row in original]
    rows[10]["label"] = 7  # a number the map does not know
    source = write_jsonl(workspace / "data" / "numbers.jsonl", rows)
    label_map = {0: "negative", 1: "positive", 2: "neutral"}
    write_params(workspace, tiny_params(tiny_model, source, sentiment__data__format="jsonl",
                                        sentiment__validate={"labels": ["negative", "neutral", "positive"], "label_map": label_map}))
    code, printed = validate("sentiment", capsys)
    assert code == 0, printed
    clean, reasons = accounted("sentiment")
    assert [row["label"] for row in clean] == [row["label"] for i, row in enumerate(original) if i != 10]
    assert reasons == {11: "label '7' not in [negative, neutral, positive] (add it to sentiment.validate.labels, "
                           "or map it onto one with sentiment.validate.label_map)"}


def test_label_map_onto_an_undeclared_label_is_a_params_error(workspace, tiny_model, capsys):
    write_params(workspace, tiny_params(tiny_model, sentiment__validate={"labels": ["negative", "neutral", "positive"],
                                                                        "label_map": {"Bullish": "bullish"}}))
    assert main(["stage", "validate"]) == 2
    assert ("error: params.yaml: 'sentiment.validate.label_map.Bullish' maps onto 'bullish', which is not in labels "
            "[negative, neutral, positive]") in capsys.readouterr().err


def to_bioes(tags: list[str]) -> list[str]:
    """IOB2 tags rewritten in BIOES: a one-word entity S-, the last word of a longer one E-."""
    out = []
    for i, tag in enumerate(tags):
        ends = i + 1 == len(tags) or not tags[i + 1].startswith("I-")
        if tag.startswith("B-") and ends:
            tag = "S-" + tag[2:]
        elif tag.startswith("I-") and ends:
            tag = "E-" + tag[2:]
        out.append(tag)
    return out


def to_iob1(tags: list[str]) -> list[str]:
    """IOB2 tags in IOB1: B- only where an entity directly follows one of the same type."""
    return [("I-" + tag[2:]) if tag.startswith("B-") and (i == 0 or tags[i - 1][2:] != tag[2:]) else tag for i, tag in enumerate(tags)]


@pytest.mark.parametrize("scheme", ["iob1", "bioes", "ids"])
def test_ner_tags_as_published_become_iob2(workspace, capsys, scheme):
    sentences = make_sentences(120, seed=6)
    names = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]
    convert = {"iob1": to_iob1, "bioes": to_bioes, "ids": lambda tags: [str(names.index(t)) for t in tags]}[scheme]
    assert all(convert(tags) != tags for _, tags in sentences[:5])  # the rewrite changes them
    write_conll(workspace / "data" / "ner.conll", [(tokens, convert(tags)) for tokens, tags in sentences])
    validate_section = {"tag_names": names} if scheme == "ids" else {}
    write_params(workspace, ner_params(UNUSED_MODEL, validate=validate_section))
    code, printed = validate("ner", capsys)
    assert code == 0, printed
    clean, reasons = accounted("ner")
    assert not reasons
    assert sorted((r["tokens"], r["tags"]) for r in clean) == sorted((list(t), list(g)) for t, g in sentences)


def test_ner_integer_tags_without_a_tag_list_name_the_key(workspace, capsys):
    names = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]
    sentences = make_sentences(60, seed=7)
    write_conll(workspace / "data" / "ner.conll", [(tokens, [str(names.index(t)) for t in tags]) for tokens, tags in sentences])
    write_params(workspace, ner_params(UNUSED_MODEL))
    code, printed = validate("ner", capsys)
    assert code == 3 and "Traceback" not in printed
    assert "is an integer id: set ner.validate.tag_names to the data set's tag list, in id order" in printed
    clean, reasons = accounted("ner")
    assert not clean and len(reasons) == 60


def test_ner_entity_types_map_through_label_map(workspace, capsys):
    sentences = make_sentences(120, seed=8)
    renamed = {"PER": "PERSON", "LOC": "GPE"}
    write_conll(workspace / "data" / "ner.conll",
                [(tokens, [t[:2] + renamed.get(t[2:], t[2:]) if t != "O" else t for t in tags]) for tokens, tags in sentences])
    write_params(workspace, ner_params(UNUSED_MODEL, validate={"label_map": {"person": "PER", "GPE": "LOC"}}))
    code, printed = validate("ner", capsys)
    assert code == 0, printed
    clean, reasons = accounted("ner")
    assert not reasons and sorted(r["tags"] for r in clean) == sorted(tags for _, tags in sentences)


# the drop folder ----------------------------------------------------------------------------------
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256))


def test_an_unreadable_batch_is_set_aside_and_the_good_ones_are_read(workspace, capsys):
    incoming = workspace / "data" / "incoming"
    write_csv(incoming / "batch-1.csv", make_rows(40, seed=11))
    (incoming / "batch-2.csv").write_bytes(b"")
    write_csv(incoming / "batch-3.csv", [{"sentence": "Profit rose", "sentiment": "positive"}], ("sentence", "sentiment"))
    (incoming / "batch-4.csv").write_bytes(PNG)
    (incoming / "batch-5.xlsx").write_bytes(b"PK\x03\x04 workbook")
    write_csv(incoming / "batch-6.csv", make_rows(45, seed=12)[40:])

    assert main(["stage", "collect"]) == 0
    printed = capsys.readouterr().out
    paths = PipelinePaths("sentiment")
    provenance = load_json(paths.provenance)
    assert provenance["rows"] == 300 + 40 + 5
    assert {r["batch"] for r in load_records(paths.raw) if "batch" in r} == {"batch-1.csv", "batch-6.csv"}
    reasons = {Path(r["file"]).name: r["reason"] for r in provenance["rejected_batches"]}
    assert reasons == {
        "batch-2.csv": "the file is empty (expected a header line)",
        "batch-3.csv": "row 2: missing column(s) text, label (found: sentence, sentiment; set sentiment.data.text_column / label_column in params.yaml)",
        "batch-4.csv": "this is a PNG image, not a text data file",
        "batch-5.xlsx": "unknown batch file type '.xlsx' (expected one of .csv, .tsv, .jsonl, .parquet, .conll)",
    }
    assert "collect[sentiment]: batch data/incoming/batch-4.csv set aside (this is a PNG image, not a text data file)" in printed
    recorded = load_records(paths.rejected_batches)
    assert [(r["file"], r["bytes"]) for r in recorded] == [(f"data/incoming/{name}", (incoming / name).stat().st_size) for name in sorted(reasons)]
    assert all(len(r["sha256"]) == 64 and r["rejected_at"] for r in recorded)
    assert (incoming / "batch-4.csv").read_bytes() == PNG  # never edited or deleted

    assert main(["stage", "collect"]) == 0  # unchanged: not read again, not recorded again
    assert load_records(paths.rejected_batches) == recorded
    assert [r["new"] for r in load_json(paths.provenance)["rejected_batches"]] == [False] * 4

    write_csv(incoming / "batch-3.csv", [{"text": "Net profit rose to EUR 4 mn", "label": "positive"}])  # fixed, dropped again
    assert main(["stage", "collect"]) == 0
    provenance = load_json(paths.provenance)
    assert provenance["rows"] == 300 + 40 + 5 + 1 and len(provenance["rejected_batches"]) == 3
    assert load_records(paths.rejected_batches) == recorded  # the record of the old copy stays


def test_a_bad_configured_source_still_stops_the_run(workspace, capsys):
    (workspace / "data" / "sample.csv").write_bytes(PNG)
    write_csv(workspace / "data" / "incoming" / "batch-1.csv", make_rows(40, seed=11))
    assert main(["stage", "collect"]) == 3
    assert capsys.readouterr().err == "error: data/sample.csv: this is a PNG image, not a text data file\n"


def test_a_drop_folder_as_the_source_with_no_readable_batch_stops_the_run(workspace, tiny_model, capsys):
    (workspace / "data" / "batches").mkdir()
    (workspace / "data" / "batches" / "bad.csv").write_bytes(PNG)
    write_params(workspace, tiny_params(tiny_model, "data/batches"))
    assert main(["stage", "collect"]) == 3
    assert capsys.readouterr().err == (
        "error: data/batches: no readable rows (every batch was set aside; see data/quarantine/sentiment.batches.jsonl)\n")
