"""Data-parallel training on several processes: PyTorch DDP under `torchrun` (gloo on CPU, nccl on GPUs).

`<pipeline>.train.processes: N` makes the train stage start itself again under torchrun with N
workers; the Trainer sees the environment torchrun sets and wraps the model in DDP. Each worker
trains on its share of every batch; only the first (rank 0) talks to MLflow and writes outputs.
"""

from __future__ import annotations

import os
import subprocess
import sys


def launched() -> bool:
    """True inside a worker that torchrun (or another DDP launcher) started."""
    return "LOCAL_RANK" in os.environ


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main() -> bool:
    """The process that logs, saves and reports: rank 0, or the only one."""
    return int(os.environ.get("RANK", "0")) == 0


def processes_on_this_machine() -> int:
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1"))


def relaunch(processes: int, arguments: list[str]) -> int:
    """Run `finetune ARGUMENTS` under torchrun with `processes` workers on this machine; the exit code."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
               "-m", "pipeline.cli", *arguments]
    print(f"train: starting {processes} DDP workers: {' '.join(command[1:])}", flush=True)
    return subprocess.run(command).returncode
