"""Find pretrained models (hub id, local folder or Python package) and run them on CPU efficiently."""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any, Callable, Sequence

from pipeline.errors import ConfigError, ModelError

PACKAGE_PREFIX = "package:"
IGNORED = -100  # the label losses and metrics skip: padding, special tokens, sub-tokens after a word's first


def resolve_model(name: str, key: str = "model.name") -> str:
    """Turn a model reference (`model.name`, a teacher) into something `from_pretrained` accepts.

    `package:NAME` is a model folder shipped inside an installed Python package (its `model/`
    folder, or what its `get_model_path()` returns); an existing folder is used as is; anything
    else is a Hugging Face hub id, loaded from the local cache only when HF_HUB_OFFLINE is set.
    A reference that can be none of these is a ModelError naming `key`.
    """
    if name.startswith(PACKAGE_PREFIX):
        package = name[len(PACKAGE_PREFIX):]
        try:
            module = importlib.import_module(package)
        except ImportError:
            raise ModelError(f"params.yaml: {key} '{name}': Python package '{package}' is not installed (pip install it)") from None
        if hasattr(module, "get_model_path"):
            return str(module.get_model_path())
        return str(Path(module.__file__).parent / "model")
    if name.strip() and Path(name).is_dir():  # Path("") is the current folder
        return name
    check_hub_id(name, key)
    return name


def check_hub_id(name: str, key: str) -> None:
    """A ModelError unless `name` can be a hub id that loads here (when offline: one in the local cache)."""
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        raise ModelError(f"params.yaml: {key} '{name}': no such model folder (and not a Hugging Face hub id)") from None
    if offline() and not isinstance(try_to_load_from_cache(name, "config.json"), str):
        raise ModelError(
            f"params.yaml: {key} '{name}': no such model folder, and no hub model of that name in the local Hugging Face "
            "cache (HF_HUB_OFFLINE is set): give a model folder or package:NAME, or download the model once while online"
        )


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def pretrained_kwargs() -> dict:
    """Keyword arguments every `from_pretrained` call in the pipeline uses."""
    return {"local_files_only": offline(), "trust_remote_code": False}


def use_all_cores() -> None:
    """Let torch use every core this process may run on (containers often report fewer),
    shared out between the DDP workers on this machine."""
    import torch

    from pipeline.distributed import processes_on_this_machine

    torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // processes_on_this_machine()))


def cpu_flags() -> set[str]:
    """The instruction-set extensions this machine's CPU reports (empty where /proc/cpuinfo is absent)."""
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    return set(next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), []))


def bf16_is_native() -> bool:
    """Whether bf16 matrix maths runs in hardware here: a CUDA GPU with bf16, or a CPU with AVX-512 BF16 or AMX.
    Elsewhere bf16 autocast is emulated, so `auto` keeps fp32 there."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags())


def mixed_precision(precision: str) -> bool:
    """Whether training runs in bf16 mixed precision for `train.precision` (auto | bf16 | fp32)."""
    return precision == "bf16" or (precision == "auto" and bf16_is_native())


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


def check_max_length(model: Any, max_length: int, key: str) -> None:
    """A ConfigError naming `key` when `max_length` tokens are more than the model has positions for:
    training would otherwise fail only when it meets the first text that long."""
    positions = getattr(model.config, "max_position_embeddings", None)
    if positions is not None and max_length > positions:
        raise ConfigError(f"params.yaml: {key} is {max_length}, but the model takes at most {positions} tokens "
                          f"(set it to {positions} or less)")


def keep_layers(model: Any, count: int, key: str = "model.layers") -> Any:
    """Cut the encoder to `count` evenly spaced layers (first and last kept), as DistilBERT's student
    is initialised from its teacher; the model's config is updated so it saves and loads as cut.
    A count the model cannot give is a ConfigError naming `key`."""
    import torch

    stacks = [(name, module) for name, module in model.named_modules()
              if name.endswith("encoder.layer") and not name.startswith("decoder.") and isinstance(module, torch.nn.ModuleList)]
    if len(stacks) != 1:
        raise ConfigError(f"params.yaml: {key}: cannot find the encoder layers of a {type(model).__name__} "
                          "(a BERT-style encoder is needed; set it to null to keep every layer)")
    name, layers = stacks[0]
    if not 1 <= count <= len(layers):
        raise ConfigError(f"params.yaml: {key} is {count}, but the model has {len(layers)} layers "
                          f"(set it from 1 to {len(layers)}, or null to keep every layer)")
    keep = sorted({round(i * (len(layers) - 1) / max(count - 1, 1)) for i in range(count)})
    parent = model.get_submodule(name.rsplit(".", 1)[0])
    parent.layer = torch.nn.ModuleList([layers[i] for i in keep])
    for index, layer in enumerate(parent.layer):  # attention caches look layers up by index
        for module in layer.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = index
    config = model.config.encoder if getattr(model.config, "is_encoder_decoder", False) and hasattr(model.config, "encoder") else model.config
    config.num_hidden_layers = len(keep)
    return model
