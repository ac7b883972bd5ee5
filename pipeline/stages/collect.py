"""collect: read the configured source into one raw table per task, with provenance."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from pipeline.config import SourceConfig
from pipeline.paths import TaskPaths
from pipeline.records import Record, save_json, save_records
from pipeline.tasks.base import Task


def run(task: Task, data: SourceConfig, paths: TaskPaths) -> dict:
    """Read `data.source` and the `data.incoming` drop folder, drop exact duplicates, write the raw table."""
    rows = task.read_source(data.source)
    if Path(data.incoming).is_dir():  # optional: batches arrive there over time
        rows += task.read_source(data.incoming)
    records = [task.to_example(record) for record in rows]
    unique, duplicates = drop_exact_duplicates(records)
    save_records(paths.raw, unique)
    provenance = {
        "source": data.source,
        "format": data.format,
        "rows_read": len(records),
        "exact_duplicates_dropped": duplicates,
        "rows": len(unique),
        "files": sorted({str(r["source"]) for r in unique}),
        "content_hash": content_hash(unique),
    }
    save_json(paths.provenance, provenance)
    print(f"collect[{task.name}]: {len(unique)} rows from {data.source} ({duplicates} exact duplicates dropped)")
    return provenance


def drop_exact_duplicates(records: list[Record]) -> tuple[list[Record], int]:
    """Keep the first of records whose task fields (all but provenance) are identical."""
    seen: set[str] = set()
    unique = []
    for record in records:
        key = json.dumps(_content(record), sort_keys=True, ensure_ascii=False)
        if key not in seen:
            seen.add(key)
            unique.append(record)
    return unique, len(records) - len(unique)


def content_hash(records: list[Record]) -> str:
    """A hash of the data itself, independent of file names and row numbers."""
    digest = hashlib.sha256()
    for record in records:
        digest.update(json.dumps(_content(record), sort_keys=True, ensure_ascii=False).encode())
    return digest.hexdigest()[:16]


def _content(record: Record) -> Record:
    return {k: v for k, v in record.items() if k not in ("source", "row", "batch")}
