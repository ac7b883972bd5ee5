"""collect, validate, split and augment on real files, with a real Great Expectations suite."""

import json
from pathlib import Path

import pytest

from pipeline.errors import DataError, ValidationError
from pipeline.params import SplitConfig
from pipeline.paths import PipelinePaths
from pipeline.records import load_json, load_records
from pipeline.stages import run_stage
from pipeline.stages.split import assign_split
from tests.conftest import make_rows, tiny_params, write_csv, write_params

PATHS = PipelinePaths("sentiment")
PARAMS = Path("params.yaml")


def run_data_stages(*stages: str) -> None:
    for stage in stages:
        run_stage(stage, "sentiment", PARAMS)


def test_bad_rows_are_quarantined_with_reasons(workspace):
    rows = make_rows(60) + [
        {"text": "", "label": "neutral"},
        {"text": "   ", "label": "positive"},
        {"text": "Profit rose sharply in the quarter", "label": "bullish"},
        {"text": "x" * 3000, "label": "neutral"},
        {"text": "Sales fell  in\tJanuary", "label": "negative"},
        {"text": "Sales fell in January", "label": "positive"},  # same text once normalised, other label
    ]
    write_csv(workspace / "data" / "sample.csv", rows)
    run_data_stages("collect", "validate")
    quarantine = {r["text"]: r for r in load_records(PATHS.quarantine)}
    assert "text length outside 3..2000" in quarantine[""]["reason"]
    assert "text length outside" in quarantine["   "]["reason"]
    assert quarantine["Profit rose sharply in the quarter"]["reason"] == (
        "label 'bullish' not in [negative, neutral, positive] "
        "(add it to sentiment.validate.labels, or map it onto one with sentiment.validate.label_map)"
    )
    assert "text length outside" in quarantine["x" * 3000]["reason"]
    duplicate = quarantine["Sales fell in January"]
    assert duplicate["reason"].startswith("duplicate of data/sample.csv row 66 with different label")
    assert duplicate["row"] == 67 and duplicate["source"] == "data/sample.csv"
    clean = load_records(PATHS.clean)
    assert len(clean) + len(quarantine) == len(rows)  # nothing lost
    assert {"Sales fell in January", "Sales fell  in\tJanuary"} & {r["text"] for r in clean} == {"Sales fell in January"}
    report = load_json(PATHS.validation_report)
    assert report["quarantined"] == 5 and report["success"]
    assert (PATHS.data_docs / "index.html").exists()


def test_too_few_rows_of_a_class_stops_the_run_naming_the_file(workspace):
    rows = [r for r in make_rows(80) if r["label"] != "negative"] + [{"text": "Loss widened", "label": "negative"}]
    write_csv(workspace / "data" / "sample.csv", rows)
    run_data_stages("collect")
    with pytest.raises(ValidationError, match=r"data/sample.csv failed: label 'negative' has 1 clean rows, fewer than sentiment.validate.min_rows_per_class=3 \(report"):
        run_data_stages("validate")
    assert len(load_records(PATHS.clean)) == len(rows)  # the report and tables are still written


def test_unknown_labels_beyond_the_reject_limit_stop_the_run(workspace):
    rows = make_rows(40) + [{"text": f"Unlabelled sentence number {i}", "label": "bullish"} for i in range(30)]
    write_csv(workspace / "data" / "sample.csv", rows)
    run_data_stages("collect")
    with pytest.raises(ValidationError, match="30 of 70 rows .43%. were rejected"):
        run_data_stages("validate")
    assert len(load_records(PATHS.quarantine)) == 30


def test_a_file_of_only_duplicates_is_a_clear_error(workspace):
    write_csv(workspace / "data" / "sample.csv", [{"text": "Profit rose", "label": "positive"}] * 50)
    run_data_stages("collect")
    assert load_json(PATHS.provenance)["exact_duplicates_dropped"] == 49
    with pytest.raises(ValidationError, match="label 'negative' has 0 clean rows"):
        run_data_stages("validate")


def test_missing_column_names_file_row_and_columns(workspace):
    write_csv(workspace / "data" / "sample.csv", [{"text": "a", "sentiment": "positive"}], ("text", "sentiment"))
    with pytest.raises(DataError, match=r"data/sample.csv: row 2: missing column\(s\) label \(found: text, sentiment"):
        run_data_stages("collect")


def test_split_is_a_stable_function_of_content():
    ratios = SplitConfig(val=0.2, test=0.2)
    keys = [f"sentence {i}" for i in range(5000)]
    splits = [assign_split(k, ratios) for k in keys]
    assert splits == [assign_split(k, ratios) for k in keys]
    shares = {name: splits.count(name) / len(keys) for name in ("train", "val", "test")}
    assert shares["train"] == pytest.approx(0.6, abs=0.03)
    assert shares["val"] == pytest.approx(0.2, abs=0.03)


def test_split_keeps_examples_in_place_as_data_grows(workspace):
    rows = make_rows(200)
    write_csv(workspace / "data" / "sample.csv", rows[:120])
    run_data_stages("collect", "validate", "split")
    before = {r["text"]: name for name in ("train", "val", "test") for r in load_records(PATHS.split(name))}
    write_csv(workspace / "data" / "sample.csv", rows)
    run_data_stages("collect", "validate", "split")
    after = {r["text"]: name for name in ("train", "val", "test") for r in load_records(PATHS.split(name))}
    assert all(after[text] == name for text, name in before.items())
    for label in ("negative", "neutral", "positive"):  # roughly stratified
        assert any(r["label"] == label for r in load_records(PATHS.split("val")))


def test_augment_adds_marked_rows_to_train_only(workspace):
    run_data_stages("collect", "validate", "split", "augment")
    train = load_records(PATHS.split("train"))
    augmented = load_records(PATHS.augmented_train)
    synthetic = [r for r in augmented if r.get("synthetic")]
    assert augmented[: len(train)] == train
    assert len(synthetic) > 0.8 * len(train)
    assert {r["augmentation"] for r in synthetic} == {"synonym", "swap", "delete"}
    texts = {r["text"] for r in train}
    assert all(r["text"] not in texts for r in synthetic)
    assert not any(r.get("synthetic") for split in ("val", "test") for r in load_records(PATHS.split(split)))


def test_copies_zero_turns_augmentation_off(workspace, tiny_model):
    write_params(workspace, tiny_params(tiny_model, sentiment__augment__copies=0))
    run_data_stages("collect", "validate", "split", "augment")
    assert load_records(PATHS.augmented_train) == load_records(PATHS.split("train"))


def test_synonym_replacement_keeps_sentiment_words_polarity():
    import random

    from pipeline.augmentation import augment_words, synonym_table

    table = synonym_table()
    assert "fell" not in table["rose"] and "loss" not in table["profit"]
    words = "Operating profit rose to EUR 5 mn".split()
    out = augment_words(words, "synonym", 0.5, random.Random(0))
    assert out != words and len(out) == len(words)


def test_sources_fingerprints_files_folders_and_parallel_prefixes(tmp_path, monkeypatch):
    from pipeline.params import SourceConfig
    from pipeline.stages.sources import fingerprint

    monkeypatch.chdir(tmp_path)
    write_csv(tmp_path / "train.csv", make_rows(5))
    (tmp_path / "pairs.de").write_text("ein Satz\n", encoding="utf-8")
    (tmp_path / "pairs.en").write_text("a sentence\n", encoding="utf-8")
    drop = tmp_path / "incoming"
    write_csv(drop / "batch-1.csv", make_rows(3, seed=1))

    found = fingerprint(SourceConfig(source={"train": "train.csv", "val": "pairs"}, incoming="incoming"))
    assert [f["path"] for f in found["source"]] == ["train.csv", "pairs.de", "pairs.en"]
    assert [f["path"] for f in found["incoming"]] == [str(Path("incoming") / "batch-1.csv")]
    assert found["source"][0]["bytes"] == (tmp_path / "train.csv").stat().st_size
    assert fingerprint(SourceConfig(source="missing.csv", incoming="nowhere")) == {"source": [], "incoming": []}


def test_sources_stage_output_changes_only_with_the_files(workspace):
    run_stage("sources", "sentiment", PARAMS)
    fingerprint_file = workspace / "data" / "sources" / "sentiment.json"
    first = fingerprint_file.read_bytes()
    run_stage("sources", "sentiment", PARAMS)
    assert fingerprint_file.read_bytes() == first  # byte-identical: DVC skips collect
    write_csv(workspace / "data" / "incoming" / "batch-1.csv", make_rows(4, seed=3))  # a batch arrives
    run_stage("sources", "sentiment", PARAMS)
    assert fingerprint_file.read_bytes() != first
    assert [f["path"] for f in json.loads(fingerprint_file.read_text())["incoming"]] == ["data/incoming/batch-1.csv"]
