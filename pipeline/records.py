"""The pipeline's own intermediate tables: JSON Lines, one record a line, human-readable."""

from __future__ import annotations

import json
from pathlib import Path

Record = dict[str, object]


def save_records(path: Path, records: list[Record]) -> None:
    """Write records atomically, so a killed stage never leaves half a table behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
    tmp.replace(path)


def load_records(path: Path) -> list[Record]:
    with Path(path).open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def save_json(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")


def load_json(path: Path) -> object:
    return json.loads(Path(path).read_text(encoding="utf-8"))
