"""A workspace of its own for each pipeline's retrains, so that different pipelines can run `dvc repro`
at the same time (DVC allows one per workspace).

The workspace is a git worktree of this checkout, `.dvc/tmp/workspaces/<pipeline>` (ignored by git
and by DVC), moved to this checkout's commit at the start of every run: the code, params.yaml and
dvc.yaml it runs are the committed ones. It shares with this checkout what must be one:

- the DVC cache (`cache.dir`): a stage already run in any workspace is restored from DVC's run
  cache instead of run again, and outputs are linked from the cache, not copied;
- the DVC configuration: the committed .dvc/config, and .dvc/config.local copied at every run (a
  remote's endpoint and credentials set with `dvc remote modify --local`);
- the embedded MLflow store (`mlflow/mlflow.db` and `mlflow/artifacts` are links to this
  checkout's; a tracking server set in MLFLOW_TRACKING_URI is shared anyway);
- the pipeline's input files git does not have: its `data.source` and the batches of its
  `data.incoming`, linked, so a batch dropped here is read there.

Its outputs (data/, models/, metrics/, reports/, dvc.lock) are its own and stay between runs, so
DVC skips what is up to date. Creating and moving worktrees is serialised under one lock: git
takes none on `.git/worktrees/`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from pipeline import tracking
from pipeline.errors import ConfigError, UsageError
from pipeline.locks import file_lock
from pipeline.params import SourceConfig
from pipeline.stages.sources import files_behind

WORKSPACES = Path(".dvc/tmp/workspaces")  # inside .dvc/tmp: ignored by git and by DVC in every DVC repo
WORKTREE_LOCK = WORKSPACES / "git-worktree.lock"
CACHE_LINKS = "reflink,hardlink,copy"  # DVC's link types, best first: no copy where the file system can link


def command_env() -> dict[str, str]:
    """The environment for `dvc`: this interpreter's bin first, so dvc and `finetune` resolve to the venv."""
    bin_dir = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}


def git(*args: str, cwd: Path | None = None) -> str:
    """Run git; its output, stripped. A failure says what git said."""
    done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        raise UsageError(f"git {' '.join(args)} failed in {cwd or Path.cwd()}: {done.stderr.strip()}")
    return done.stdout.strip()


def deployed_commit() -> str:
    """This checkout's commit: what every pipeline's workspace runs."""
    done = subprocess.run(["git", "rev-parse", "--verify", "HEAD"], capture_output=True, text=True)
    if done.returncode != 0:
        raise UsageError(f"{Path.cwd()}: the retrain flow runs each pipeline in a git worktree of this checkout at its "
                         "commit, and there is none: run it in a git repository with at least one commit")
    return done.stdout.strip()


def uncommitted(paths: tuple[str, ...] = ("params.yaml", "dvc.yaml")) -> list[str]:
    """Those of `paths` with changes not committed (a workspace runs the committed ones)."""
    return git("status", "--porcelain", "--", *paths).splitlines()


def latest_outputs(pipeline: str) -> Path:
    """Where a pipeline's latest outputs (splits, model, reports) are: its retrain workspace once it has one,
    else this checkout (`dvc repro` typed here)."""
    workspace = WORKSPACES / pipeline
    return workspace if is_worktree(workspace.resolve()) else Path(".")


def pipeline_workspace(pipeline: str, data: SourceConfig) -> Path:
    """The pipeline's worktree at this checkout's commit, with the DVC cache, the MLflow store and the
    pipeline's inputs linked; created on first use."""
    path = (WORKSPACES / pipeline).resolve()
    commit = deployed_commit()
    with file_lock(WORKTREE_LOCK):
        if not is_worktree(path):
            shutil.rmtree(path, ignore_errors=True)  # left half made by a killed run
            git("worktree", "prune")
            git("worktree", "add", "--detach", str(path), commit)
        else:
            git("checkout", "--force", "--detach", commit, cwd=path)  # dvc.lock may differ from the committed one
    share_dvc_config(path)
    link_store(path)
    link_inputs(path, data)
    return path


def is_worktree(path: Path) -> bool:
    """Whether `path` is a worktree git knows."""
    if not (path / ".git").is_file():
        return False
    done = subprocess.run(["git", "rev-parse", "--is-inside-work-tree"], cwd=path, capture_output=True, text=True)
    return done.returncode == 0


def share_dvc_config(path: Path) -> None:
    """The worktree's .dvc/config.local: this checkout's (a remote's credentials and endpoint often live there),
    with DVC pointed at this checkout's cache, linking from it."""
    cache = subprocess.run(["dvc", "cache", "dir"], capture_output=True, text=True, check=True, env=command_env()).stdout.strip()
    local = Path(".dvc/config.local")
    (path / local).write_text(local.read_text() if local.exists() else "")
    for key, value in (("cache.dir", cache), ("cache.type", CACHE_LINKS)):
        subprocess.run(["dvc", "config", "--local", key, value], cwd=path, capture_output=True, check=True, env=command_env())


def link(target: Path, at: Path) -> None:
    """Make `at` a symbolic link to `target` (absolute), unless it already is one."""
    if at.is_symlink() and at.readlink() == target:
        return
    at.parent.mkdir(parents=True, exist_ok=True)
    at.unlink(missing_ok=True)
    at.symlink_to(target)


def link_store(path: Path) -> None:
    """Link the worktree's embedded MLflow store to this checkout's (created here first if need be)."""
    tracking.STORE_DIR.mkdir(exist_ok=True)
    for name in ("mlflow.db", "artifacts"):
        link((tracking.STORE_DIR / name).resolve(), path / tracking.STORE_DIR / name)


def link_inputs(path: Path, data: SourceConfig) -> None:
    """Link each of the pipeline's input files (data.source, the batches of data.incoming) that the worktree
    lacks; drop links to batches removed here. Paths outside this checkout are the same in both."""
    sources = data.source.values() if isinstance(data.source, dict) else [data.source]
    for name in (*sources, data.incoming):
        if Path(name).is_absolute():
            continue
        if ".." in Path(name).parts:
            raise ConfigError(f"params.yaml: '{name}' lies outside this checkout, where a pipeline's workspace (a worktree "
                              f"in {WORKSPACES}) cannot find it by the same relative path: give it as an absolute path")
        for file in files_behind(Path(name)):
            if (path / file).is_symlink() or not (path / file).exists():
                link(file.resolve(), path / file)
        folder = path / name
        for stale in (p for p in folder.iterdir() if p.is_symlink() and not p.exists()) if folder.is_dir() else []:
            stale.unlink()
