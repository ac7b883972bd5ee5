"""Find pretrained models (hub id, local folder or Python package) and run them on CPU efficiently."""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Callable, Sequence

PACKAGE_PREFIX = "package:"


def resolve_model(name: str) -> str:
    """Turn `model.name` into something `from_pretrained` accepts.

    `package:NAME` is a model folder shipped inside an installed Python package (its `model/`
    folder, or what its `get_model_path()` returns); an existing folder is used as is; anything
    else is a Hugging Face hub id, loaded from the local cache only when HF_HUB_OFFLINE is set.
    """
    if name.startswith(PACKAGE_PREFIX):
        package = name[len(PACKAGE_PREFIX):]
        try:
            module = importlib.import_module(package)
        except ImportError:
            raise ValueError(f"model.name '{name}': Python package '{package}' is not installed") from None
        if hasattr(module, "get_model_path"):
            return str(module.get_model_path())
        return str(Path(module.__file__).parent / "model")
    return name


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def pretrained_kwargs() -> dict:
    """Keyword arguments every `from_pretrained` call in the pipeline uses."""
    return {"local_files_only": offline(), "trust_remote_code": False}


def use_all_cores() -> None:
    """Let torch use every core this process may run on (containers often report fewer)."""
    import torch

    torch.set_num_threads(max(1, len(os.sched_getaffinity(0))))


def batched_by_length(
    lengths: Sequence[int], batch_size: int, run_batch: Callable[[list[int]], list]
) -> list:
    """Run `run_batch` on index batches of similar length and return results in input order.

    Sorting by length keeps padding (and so wasted compute) small during inference.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    results: list = [None] * len(lengths)
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        for index, result in zip(batch, run_batch(batch)):
            results[index] = result
    return results
