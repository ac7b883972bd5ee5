"""The pipeline's own intermediate tables: JSON Lines, one record a line, human-readable."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

Record = dict[str, object]


def write_whole(path: Path, lines: Iterable[str]) -> None:
    """Write a file whole: readers, and a killed writer, leave the old file or the new one, never a part
    (written aside, under a name of this process's own, then renamed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    with partial.open("w", encoding="utf-8") as f:
        f.writelines(lines)
    partial.replace(path)


def save_records(path: Path, records: list[Record]) -> None:
    """Write records as JSON Lines, whole."""
    write_whole(path, (json.dumps(record, ensure_ascii=False, default=str) + "\n" for record in records))


def load_records(path: Path) -> list[Record]:
    with Path(path).open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def save_json(path: Path, data: object) -> None:
    """Write JSON, whole."""
    write_whole(path, [json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n"])


def load_json(path: Path) -> object:
    return json.loads(Path(path).read_text(encoding="utf-8"))
