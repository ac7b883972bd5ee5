"""Read labelled records from files, drop folders and pre-split sources.

Every record keeps where it came from (`source` file and `row` number) so that any later
error or quarantine entry can point at the exact line of the original file.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import statistics
from pathlib import Path
from typing import Any, Callable, Iterator

from pipeline.decoding import decode
from pipeline.errors import DataError
from pipeline.records import Record

EXTENSION_FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".parquet": "parquet", ".conll": "conll"}
DOCUMENT_START = "-DOCSTART-"
FORMAT_ENCODINGS = {"phrasebank": "latin-1"}  # the published PhraseBank files are not UTF-8
# Spreadsheets run a cell that starts with one of these as a formula (CSV injection).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def read_source(
    source: str | dict[str, str], fmt: str, encoding: str | None = None, languages: tuple[str, str] | None = None
) -> list[Record]:
    """Read a file, a drop folder of batches, or a {train, val, test} mapping of files.

    `languages` names the two files of the `parallel` format: PREFIX.<source> and PREFIX.<target>.
    """
    encoding = encoding or FORMAT_ENCODINGS.get(fmt, "utf-8")
    if isinstance(source, dict):  # its keys (train, val, test) are checked when params load
        records = []
        for split, path in source.items():
            for record in read_path(Path(path), fmt, encoding, languages, key=f"data.source.{split}"):
                record["given_split"] = split
                records.append(record)
        return records
    return read_path(Path(source), fmt, encoding, languages)


def read_path(
    path: Path, fmt: str, encoding: str, languages: tuple[str, str] | None = None, key: str = "data.source"
) -> list[Record]:
    """Read one file, or every batch file of a drop folder (format taken from each extension); `key` names it in params.yaml."""
    if fmt == "parallel" and not path.is_dir():
        if languages is None:
            raise DataError(f"{path}: the parallel format needs a language pair (translation.languages)")
        return read_parallel(path, languages, encoding)
    if path.is_dir():
        return [record for batch in batch_files(path) for record in read_batch(batch, encoding)]
    if not path.exists():
        raise DataError(f"{path}: no such file or folder ({key} in params.yaml)")
    return read_file(path, fmt, encoding)


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes, read a block at a time."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def batch_files(folder: Path) -> list[Path]:
    """The batch files of a drop folder, in name order (hidden files and READMEs are not batches)."""
    return sorted(p for p in folder.iterdir() if p.is_file() and not _ignored(p))


def from_drop_folder(records: list[Record], folder: str) -> list[bool]:
    """Whether each record was read from a batch of the drop folder `folder` (its `source` is a file directly in it)."""
    resolved = Path(folder).resolve()
    return ["source" in record and Path(record["source"]).resolve().parent == resolved for record in records]


def read_batch(path: Path, encoding: str | None) -> list[Record]:
    """Read one drop-folder batch, its format taken from its extension; each record keeps its `batch` name."""
    batch_format = EXTENSION_FORMATS.get(path.suffix.lower())
    if batch_format is None:
        raise DataError(f"{path}: unknown batch file type '{path.suffix}' (expected one of {', '.join(EXTENSION_FORMATS)})")
    records = read_file(path, batch_format, encoding or FORMAT_ENCODINGS.get(batch_format, "utf-8"))
    return [{**record, "batch": path.name} for record in records]


def read_file(path: Path, fmt: str, encoding: str) -> list[Record]:
    """Read one file into records tagged with `source` and 1-based `row` numbers."""
    readers: dict[str, Callable[[Path, str], Iterator[tuple[int, Record]]]] = {
        "csv": lambda p, e: _read_delimited(p, e, ","),
        "tsv": lambda p, e: _read_delimited(p, e, "\t"),
        "jsonl": _read_jsonl,
        "parquet": _read_parquet,
        "phrasebank": _read_phrasebank,
        "conll": _read_conll,
    }
    if fmt not in readers:
        raise DataError(f"{path}: unknown format '{fmt}' (known: {', '.join(readers)})")
    records = [{**record, "source": str(path), "row": row} for row, record in readers[fmt](path, encoding)]
    if not records:
        raise DataError(f"{path}: the file holds no records")
    return records


def _ignored(path: Path) -> bool:
    return path.name.startswith(".") or path.name.lower().startswith("readme")


def _read_delimited(path: Path, encoding: str, delimiter: str) -> Iterator[tuple[int, Record]]:
    """CSV as spreadsheets write it, or TSV (no quoting: a quote is text); `row` is a record's first line."""
    text = decode(path, encoding)
    csv.field_size_limit(max(csv.field_size_limit(), len(text)))  # a huge field is validate's to quarantine, not a crash
    quoting = csv.QUOTE_MINIMAL if delimiter == "," else csv.QUOTE_NONE  # TSV: '"Hi," he said' keeps its quotes
    rows = _delimited_rows(path, csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, quoting=quoting))
    first = next(rows, None)
    if first is None or not first[1]:
        raise DataError(f"{path}: the file is empty (expected a header line)")
    header = _header(path, first[1])
    for line, values in rows:
        if not any(v.strip() for v in values):
            continue
        if len(values) != len(header):
            raise DataError(
                f"{path}: line {line}: {len(values)} fields where the header has {len(header)} "
                f"({', '.join(header)}); check the delimiter and quoting"
            )
        yield line, {name: from_spreadsheet_safe(value) for name, value in zip(header, values)}


def _delimited_rows(path: Path, reader: Any) -> Iterator[tuple[int, list[str]]]:
    """(first line, fields) of each record of a csv reader; a syntax error names its line."""
    start = 1
    try:
        for values in reader:
            yield start, values
            start = reader.line_num + 1
    except csv.Error as exc:
        raise DataError(f"{path}: line {start}: {exc}; check the quoting") from None


def _header(path: Path, names: list[str]) -> list[str]:
    """Column names, each once: a repeated name would silently drop a column."""
    header = [name.strip() for name in names]
    repeated = sorted({name for name in header if header.count(name) > 1})
    if repeated:
        raise DataError(f"{path}: line 1: the header names column(s) {', '.join(map(repr, repeated))} more than once")
    return header


def spreadsheet_safe(value: object) -> object:
    """A cell for a csv that people open in a spreadsheet: text that would run as a formula gets a leading quote."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def from_spreadsheet_safe(value: str) -> str:
    """Undo `spreadsheet_safe`, so a labelled queue file read back has the texts as they were."""
    return value[1:] if value.startswith("'") and value[1:].startswith(FORMULA_STARTS) else value


def _read_jsonl(path: Path, encoding: str) -> Iterator[tuple[int, Record]]:
    for number, line in enumerate(decode(path, encoding).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: line {number}: not valid JSON ({exc.msg})") from None
        if not isinstance(record, dict):
            raise DataError(f"{path}: line {number}: expected a JSON object, got {type(record).__name__}")
        yield number, record


def _read_parquet(path: Path, encoding: str) -> Iterator[tuple[int, Record]]:
    import pandas as pd

    try:
        frame = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several types for damaged files
        raise DataError(f"{path}: not a readable parquet file ({exc})") from None
    for number, record in enumerate(frame.to_dict(orient="records"), start=1):
        yield number, record


def _read_phrasebank(path: Path, encoding: str) -> Iterator[tuple[int, Record]]:
    """Financial PhraseBank: one `sentence@label` a line (latin-1 in the published files)."""
    for number, line in enumerate(decode(path, encoding).splitlines(), start=1):
        if not line.strip():
            continue
        text, sep, label = line.rpartition("@")
        if not sep:
            raise DataError(f"{path}: line {number}: expected 'sentence@label', found no '@'")
        yield number, {"text": text, "label": label.strip()}


def _read_conll(path: Path, encoding: str) -> Iterator[tuple[int, Record]]:
    """CoNLL columns: a token a line, token first and tag last, a blank line after each sentence.

    `-DOCSTART-` lines separate documents; each sentence then carries its document's content
    hash, so a document is split as a whole. `row` is the line of a sentence's first token.
    """
    documents: list[list[tuple[int, Record]]] = [[]]
    tokens: list[str] = []
    tags: list[str] = []
    first_line, has_documents = 0, False
    columns: tuple[int, int] | None = None  # (count, line) of the first token line: every token line has as many
    for number, line in enumerate(decode(path, encoding).splitlines() + [""], start=1):
        fields = line.split()
        if fields and fields[0] != DOCUMENT_START:
            if len(fields) < 2:
                raise DataError(f"{path}: line {number}: expected 'TOKEN ... TAG' columns, found only {fields[0]!r}")
            columns = columns or (len(fields), number)
            if len(fields) != columns[0]:
                raise DataError(
                    f"{path}: line {number}: {len(fields)} columns where line {columns[1]} has {columns[0]} "
                    "(a column is missing or a token holds a space)"
                )
            first_line = first_line or number
            tokens.append(fields[0])
            tags.append(fields[-1])
            continue
        if tokens:  # a blank line or a new document ends the sentence
            documents[-1].append((first_line, {"tokens": tokens, "tags": tags}))
            tokens, tags, first_line = [], [], 0
        if fields:
            has_documents = True
            if documents[-1]:
                documents.append([])
    for sentences in documents:
        document = _document_hash(sentences) if has_documents else None
        for number, record in sentences:
            yield number, record if document is None else {**record, "document": document}


def read_parallel(prefix: Path, languages: tuple[str, str], encoding: str) -> list[Record]:
    """Two aligned files, PREFIX.<source> and PREFIX.<target>, one sentence a line, line n translating line n.

    Blank lines are kept (validation quarantines them); files of different lengths stop the run.
    """
    files = [prefix.with_name(f"{prefix.name}.{language}") for language in languages]
    for path in files:
        if not path.is_file():
            raise DataError(f"{path}: no such file (format parallel reads {prefix}.{languages[0]} and {prefix}.{languages[1]})")
    sides = [_lines(path, encoding) for path in files]
    if len(sides[0]) != len(sides[1]):
        raise DataError(misalignment(files, sides))
    if not sides[0]:
        raise DataError(f"{files[0]}: the file holds no records")
    return [
        {languages[0]: left, languages[1]: right, "source": str(files[0]), "row": number}
        for number, (left, right) in enumerate(zip(*sides), start=1)
    ]


def misalignment(files: list[Path], sides: list[list[str]]) -> str:
    """Say that two parallel files differ in length, and from which line they most likely diverge.

    The guess: lines before it pair up one to one, lines after it pair up shifted by the
    difference in length; of all such cut points, the one where the paired sentence lengths
    agree best (relative to the usual length ratio between the languages).
    """
    (short_file, short), (long_file, long) = sorted(zip(files, sides), key=lambda side: len(side[1]))
    shift = len(long) - len(short)
    usual = statistics.median(
        math.log1p(len(a)) - math.log1p(len(b)) for a, b in zip(short, long)
    ) if short else 0.0

    def cost(a: str, b: str) -> float:
        return abs(math.log1p(len(a)) - math.log1p(len(b)) - usual)

    aligned = [0.0]  # aligned[p]: cost of pairing the first p lines one to one
    for a, b in zip(short, long):
        aligned.append(aligned[-1] + cost(a, b))
    shifted = [0.0] * (len(short) + 1)  # shifted[p]: cost of pairing short[p:] with long[p + shift:]
    for i in range(len(short) - 1, -1, -1):
        shifted[i] = shifted[i + 1] + cost(short[i], long[i + shift])
    cut = min(range(len(short) + 1), key=lambda p: aligned[p] + shifted[p])
    line = cut + 1
    return (
        f"{files[0]} has {len(sides[0])} lines but {files[1]} has {len(sides[1])}: the files are not aligned. "
        f"They most likely diverge at line {line}: {long_file} has {shift} line(s) there that {short_file} lacks "
        f"({long_file} line {line}: {long[cut]!r}; {short_file} line {line}: {short[cut] if cut < len(short) else '(end of file)'!r}). "
        "Line n of one file must translate line n of the other."
    )


def _lines(path: Path, encoding: str) -> list[str]:
    """The lines of a text file, without the blank lines that may trail its end."""
    lines = decode(path, encoding).splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    return lines


def _document_hash(sentences: list[tuple[int, Record]]) -> str:
    digest = hashlib.sha256()
    for _, record in sentences:
        digest.update(" ".join(record["tokens"]).encode("utf-8") + b"\n")
    return digest.hexdigest()[:12]
