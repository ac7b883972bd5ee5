"""Parameter-efficient fine-tuning (`<pipeline>.train.peft`) with the peft library.

LoRA and AdaLoRA are merged into the base weights when training ends, so the saved model is a
plain Hugging Face model like any other. Prompt and prefix tuning cannot be merged: the model
folder then holds the base model and, in `adapter/`, the trained prompt (and head), so it still
loads offline from the folder or the registry alone.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from pipeline.errors import ConfigError
from pipeline.params import PeftSettings

ADAPTER_DIR = "adapter"
MERGEABLE = ("lora", "adalora")


def module_names(model: Any) -> str:
    """The distinct last parts of a model's module names (what target_modules names), for messages."""
    parts = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules() if name}
    return ", ".join(sorted(part for part in parts if not part.isdigit()))  # not the indices of layer lists


def targets_nothing(model: Any, targets: list[str]) -> bool:
    """Whether no module name is, or ends with, one of `targets` (how peft matches a list of names)."""
    return not any(name == target or name.endswith("." + target) for name, _ in model.named_modules() for target in targets)


def wrap(model: Any, settings: PeftSettings, task_type: str, steps_per_epoch: int, total_steps: int, key: str = "train.peft") -> Any:
    """The model with trainable adapters; everything else frozen except the new task head. A setting the
    model cannot take is a ConfigError naming `key`."""
    from peft import AdaLoraConfig, LoraConfig, PrefixTuningConfig, PromptTuningConfig, get_peft_model

    if settings.method in MERGEABLE and targets_nothing(model, settings.target_modules):
        raise ConfigError(f"params.yaml: {key}.target_modules [{', '.join(settings.target_modules)}] match no module of the model "
                          f"(its module names: {module_names(model)})")

    common = {"task_type": task_type}
    pruned_by = max(1, steps_per_epoch // 2)
    if settings.method == "lora":
        config = LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                            target_modules=settings.target_modules, **common)
    elif settings.method == "adalora":
        config = AdaLoraConfig(
            init_r=settings.r + settings.r // 2, target_r=settings.r, lora_alpha=settings.alpha,
            lora_dropout=settings.dropout, target_modules=settings.target_modules, total_step=total_steps,
            # Ranks are pruned to the budget within the first half epoch, then fixed: every epoch's
            # checkpoint then has the same shapes, so the best one can be reloaded at the end.
            tinit=pruned_by // 5, tfinal=total_steps - pruned_by, deltaT=max(1, pruned_by // 10),
            **common,
        )
    elif settings.method == "prompt_tuning":
        config = PromptTuningConfig(num_virtual_tokens=settings.virtual_tokens, **common)
    else:
        if "past_key_values" not in inspect.signature(model.forward).parameters:  # peft would fail only at the first step
            raise ConfigError(
                f"params.yaml: {key}.method prefix_tuning: a {type(model).__name__} takes no past key values to prefix; "
                "use prompt_tuning or lora"
            )
        config = PrefixTuningConfig(num_virtual_tokens=settings.virtual_tokens, **common)
    try:
        return get_peft_model(model, config)
    except ValueError as exc:  # another setting peft refuses for this model
        raise ConfigError(f"params.yaml: {key}: {str(exc).splitlines()[0]} (module names of this model: {module_names(model)})") from None


def trainable_parameters(model: Any) -> dict[str, float]:
    """Trainable and total parameter counts, and the trainable fraction."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return {"trainable_parameters": trainable, "total_parameters": total, "trainable_fraction": trainable / total}


def is_peft(model: Any) -> bool:
    from peft import PeftModel

    return isinstance(model, PeftModel)


def save(model: Any, out_dir: Path, load_base: Any) -> None:
    """Save a trained model: LoRA merged into plain weights; prompts as base + adapter/."""
    if not is_peft(model):
        model.save_pretrained(str(out_dir))
    elif model.peft_config["default"].peft_type.value.lower() in MERGEABLE:
        model.merge_and_unload().save_pretrained(str(out_dir))
    else:
        load_base().save_pretrained(str(out_dir))  # a clean copy: the adapter carries the trained head
        model.save_pretrained(str(out_dir / ADAPTER_DIR))


def has_adapter(model_dir: str | Path) -> bool:
    return (Path(model_dir) / ADAPTER_DIR).is_dir()


def attach(model: Any, model_dir: str | Path) -> Any:
    """The model with the prompt adapter saved beside it, when there is one."""
    if not has_adapter(model_dir):
        return model
    from peft import PeftModel

    return PeftModel.from_pretrained(model, str(Path(model_dir) / ADAPTER_DIR))

