"""Reading sources: every format, drop folders, pre-split sources, and clear errors on bad input."""

import json

import pandas as pd
import pytest

from pipeline.errors import DataError
from pipeline.readers import read_source
from tests.conftest import make_rows, write_csv


def test_csv_tsv_jsonl_parquet_read_the_same_rows(tmp_path):
    rows = make_rows(5)
    write_csv(tmp_path / "a.csv", rows)
    (tmp_path / "a.tsv").write_text("text\tlabel\n" + "".join(f"{r['text']}\t{r['label']}\n" for r in rows))
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    pd.DataFrame(rows).to_parquet(tmp_path / "a.parquet")
    for fmt in ("csv", "tsv", "jsonl", "parquet"):
        records = read_source(str(tmp_path / f"a.{fmt}"), fmt)
        assert [{"text": r["text"], "label": r["label"]} for r in records] == rows
        assert records[0]["source"].endswith(f"a.{fmt}")


def test_phrasebank_is_latin1_sentence_at_label(tmp_path):
    path = tmp_path / "Sentences.txt"
    path.write_bytes("Net sales rose 5 % in Espoo , Finland.@positive\nThe caf\xe9 opened@neutral\n".encode("latin-1"))
    records = read_source(str(path), "phrasebank")
    assert records[1]["text"] == "The café opened"
    assert [r["label"] for r in records] == ["positive", "neutral"]
    assert [r["row"] for r in records] == [1, 2]


def test_utf8_byte_order_mark_is_ignored(tmp_path):
    path = tmp_path / "bom.csv"
    path.write_bytes("\ufefftext,label\nProfit rose,positive\n".encode("utf-8"))
    assert read_source(str(path), "csv")[0]["text"] == "Profit rose"


def test_drop_folder_merges_batches_and_keeps_their_names(tmp_path):
    write_csv(tmp_path / "drop" / "2026-01.csv", make_rows(3, seed=1))
    (tmp_path / "drop" / "2026-02.jsonl").write_text(json.dumps({"text": "Sales fell", "label": "negative"}) + "\n")
    (tmp_path / "drop" / "README.md").write_text("ignored")
    records = read_source(str(tmp_path / "drop"), "csv")
    assert [r["batch"] for r in records] == ["2026-01.csv"] * 3 + ["2026-02.jsonl"]


def test_presplit_source_keeps_its_splits(tmp_path):
    source = {name: str(write_csv(tmp_path / f"{name}.csv", make_rows(2, seed=i))) for i, name in enumerate(("train", "val", "test"))}
    assert [r["given_split"] for r in read_source(source, "csv")] == ["train"] * 2 + ["val"] * 2 + ["test"] * 2


def test_non_utf8_byte_in_utf8_file_names_line_and_byte(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_bytes(b"text,label\nProfit rose,positive\nCaf\xe9 sales fell,negative\n")
    with pytest.raises(DataError, match=r"bad.csv: line 3, column 4: byte 0xe9 is not valid utf-8"):
        read_source(str(path), "csv")


def test_latin1_file_read_as_utf8_suggests_the_encoding(tmp_path):
    path = tmp_path / "latin.txt"
    path.write_bytes("Sales in M\xfcnchen rose@positive\n".encode("latin-1"))
    with pytest.raises(DataError, match="data.encoding"):
        read_source(str(path), "phrasebank", "utf-8")


@pytest.mark.parametrize(
    "content, fmt, message",
    [
        (b"", "csv", "the file is empty"),
        (b"text,label\n", "csv", "holds no records"),
        (b"text,label\nProfit rose,positive,extra\n", "csv", "line 2: 3 fields where the header has 2"),
        (b'{"text": "a", "label": "positive"}\n{broken\n', "jsonl", "line 2: not valid JSON"),
        (b"no label here\n", "phrasebank", "line 1: expected 'sentence@label'"),
        (b"not parquet", "parquet", "not a readable parquet file"),
    ],
)
def test_malformed_files_get_a_clear_error(tmp_path, content, fmt, message):
    path = tmp_path / f"input.{fmt}"
    path.write_bytes(content)
    with pytest.raises(DataError, match=message):
        read_source(str(path), fmt)


def test_missing_file_and_unknown_format(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        read_source(str(tmp_path / "nope.csv"), "csv")
    write_csv(tmp_path / "a.csv", make_rows(1))
    with pytest.raises(DataError, match="unknown format 'xml'"):
        read_source(str(tmp_path / "a.csv"), "xml")
