"""collect: read the configured source and the drop folder into one raw table per pipeline, with provenance.

A drop folder only grows: its batches are merged in name order and exact duplicates dropped. A
batch that cannot be read (an empty or binary file, other column names, an unknown file type) is
set aside whole, so one bad file never blocks the loop: it is recorded with its size, SHA-256 and
reason in data/quarantine/<pipeline>.batches.jsonl (the file itself is never edited or deleted), and
it is not read again until its content or the task's `data` params change. The configured
`data.source` file is different: when it cannot be read, the run stops.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from pathlib import Path

from pipeline.errors import DataError
from pipeline.params import Params, section_hash
from pipeline.paths import PipelinePaths, ensure_writable
from pipeline.readers import batch_files, file_sha256, read_batch
from pipeline.records import Record, load_records, save_json, save_records
from pipeline.tasks import Task


def run(task: Task, params: Params, paths: PipelinePaths) -> dict:
    """Read `data.source` and the `data.incoming` drop folder, set bad batches aside, write the raw table."""
    data = task.config.data
    ensure_writable(paths.raw.parent, paths.rejected_batches.parent)
    earlier = {(r["file"], r["sha256"], r["data_params"]): r for r in load_records_if_any(paths.rejected_batches)}
    source_is_folder = isinstance(data.source, str) and Path(data.source).is_dir()
    records = [] if source_is_folder else [task.to_example(r) for r in task.read_source(data.source)]
    folders = [Path(data.source)] if source_is_folder else []
    folders += [Path(data.incoming)] if Path(data.incoming).is_dir() else []
    set_aside = []
    for folder in folders:
        read, rejected = read_drop_folder(task, folder, section_hash(data), earlier)
        records += read
        set_aside += rejected
    new = [{k: v for k, v in r.items() if k != "new"} for r in set_aside if r["new"]]
    save_records(paths.rejected_batches, [*earlier.values(), *new])
    if not records:
        raise DataError(f"{data.source}: no readable rows (every batch was set aside; see {paths.rejected_batches})")
    unique, duplicates = drop_exact_duplicates(records)
    save_records(paths.raw, unique)
    provenance = {
        "source": data.source,
        "format": data.format,
        "rows_read": len(records),
        "exact_duplicates_dropped": duplicates,
        "rows": len(unique),
        "files": sorted({str(r["source"]) for r in unique}),
        "rejected_batches": [{k: v for k, v in r.items() if k != "data_params"} for r in set_aside],
        "content_hash": content_hash(unique),
    }
    save_json(paths.provenance, provenance)
    print(f"collect[{task.pipeline}]: {len(unique)} rows from {data.source} ({duplicates} exact duplicates dropped)")
    for batch in set_aside:
        print(f"collect[{task.pipeline}]: batch {batch['file']} set aside ({batch['reason']}); fix it and drop it again "
              f"-> {paths.rejected_batches}")
    return provenance


def read_drop_folder(task: Task, folder: Path, data_params: str, earlier: dict) -> tuple[list[Record], list[dict]]:
    """(examples of the readable batches, records of the batches set aside: new ones, and earlier ones not read again)."""
    examples, rejected = [], []
    for path in batch_files(folder):
        fingerprint = {"file": str(path), "bytes": path.stat().st_size, "sha256": file_sha256(path), "data_params": data_params}
        known = earlier.get((fingerprint["file"], fingerprint["sha256"], data_params))
        if known is not None:
            rejected.append({**known, "new": False})
            continue
        try:
            examples += [task.to_example(record) for record in read_batch(path, task.config.data.encoding)]
        except DataError as exc:
            reason = str(exc).removeprefix(f"{path}: ")
            rejected_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
            rejected.append({**fingerprint, "reason": reason, "rejected_at": rejected_at, "new": True})
    return examples, rejected


def load_records_if_any(path: Path) -> list[Record]:
    return load_records(path) if path.exists() else []


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
