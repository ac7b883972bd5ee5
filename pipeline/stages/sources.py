"""sources: fingerprint each pipeline's input files, so that collect runs only when they changed.

A source may live outside the repository or be a drop folder that grows, which DVC cannot track
as a dependency, so this one stage always runs (`always_changed`). For every pipeline in `pipelines` it
writes data/sources/<pipeline>.json: each file its `data.source` and `data.incoming` name, with its
size and SHA-256. When nothing changed the files are byte-identical and DVC skips collect and
everything after it; hashing is much cheaper than parsing the sources again.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from pipeline.params import Params, SourceConfig
from pipeline.readers import file_sha256
from pipeline.records import save_json

FOLDER = Path("data/sources")


def run(params: Params, folder: Path = FOLDER) -> dict[str, dict]:
    """Write one fingerprint file per pipeline; returns them by pipeline."""
    shutil.rmtree(folder, ignore_errors=True)  # a pipeline dropped from `pipelines` leaves no stale file
    fingerprints = {name: fingerprint(params.pipeline(name).data) for name in params.pipelines}
    for name, found in fingerprints.items():
        save_json(folder / f"{name}.json", found)
        print(f"sources[{name}]: {sum(len(files) for files in found.values())} files")
    return fingerprints


def fingerprint(data: SourceConfig) -> dict[str, list[dict]]:
    """Every file behind `data.source` and `data.incoming`, with its size and content hash."""
    sources = data.source.values() if isinstance(data.source, dict) else [data.source]
    return {
        "source": [describe(path) for source in sources for path in files_behind(Path(source))],
        "incoming": [describe(path) for path in files_behind(Path(data.incoming))],
    }


def files_behind(path: Path) -> list[Path]:
    """A file; the files of a folder (a drop folder); else the files PATH.* (the parallel format's
    PREFIX.de and PREFIX.en). Missing ones are simply absent: collect reports them."""
    if path.is_file():
        return [path]
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.is_file())
    return sorted(p for p in path.parent.glob(f"{path.name}.*") if p.is_file()) if path.parent.is_dir() else []


def describe(path: Path) -> dict:
    return {"path": str(path), "bytes": path.stat().st_size, "sha256": file_sha256(path)}
