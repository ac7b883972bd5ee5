"""pretrain: domain-adaptive pretraining, i.e. continued masked-language-model training on
unlabelled in-domain text (the train split's texts and `pretrain.texts` files) before fine-tuning.

The bundled model ships without an MLM head: `AutoModelForMaskedLM` gives it one, its output
layer tied to the word embeddings and the rest newly initialised. The train stage starts from
models/<pipeline>-pretrained when `pretrain.enabled` is on. Val and test texts are never used.
"""

from __future__ import annotations

import math
import random
import shutil
from pathlib import Path

from pipeline.decoding import decode
from pipeline.errors import DataError
from pipeline.models import check_max_length, pretrained_kwargs, resolve_model, use_all_cores
from pipeline.params import Params, PretrainConfig
from pipeline.paths import PipelinePaths, ensure_writable
from pipeline.records import load_records, save_json
from pipeline.tasks import Task

HELD_OUT = 0.05  # share of the texts kept aside to measure masked-LM loss before and after


def read_texts(task: Task, settings: PretrainConfig, paths: PipelinePaths) -> list[str]:
    """Unlabelled texts: the train split's (labels unused) and the lines of each `texts` file, deduplicated."""
    texts = [task.unlabelled_text(example) for example in load_records(paths.split("train"))]
    for name in settings.texts:
        path = Path(name)
        if not path.is_file():
            raise DataError(f"{path}: no such file ({task.pipeline}.pretrain.texts in params.yaml)")
        texts += decode(path, "utf-8", hint="save the file as UTF-8").splitlines()
    return list(dict.fromkeys(t.strip() for t in texts if t.strip()))


def run(task: Task, params: Params, paths: PipelinePaths) -> dict:
    """Write models/<pipeline>-pretrained (or, when disabled, only a note saying so) and its report."""
    settings, base_model = task.config.pretrain, task.config.model.name
    ensure_writable(paths.pretrained.parent, paths.reports)
    shutil.rmtree(paths.pretrained, ignore_errors=True)
    paths.pretrained.mkdir(parents=True)
    if not settings.enabled:
        report = {"enabled": False}
        save_json(paths.pretrained / "pretrain.json", report)  # DVC needs the output to exist
        save_json(paths.pretrain_report, report)
        print(f"pretrain[{task.pipeline}]: off (pretrain.enabled is false)")
        return report

    from transformers import (
        AutoModelForMaskedLM,
        AutoTokenizer,
        DataCollatorForLanguageModeling,
        Trainer,
        TrainingArguments,
        set_seed,
    )

    use_all_cores()
    set_seed(settings.seed)
    texts = read_texts(task, settings, paths)
    random.Random(settings.seed).shuffle(texts)
    held_out = max(1, int(HELD_OUT * len(texts)))
    source = resolve_model(base_model, f"{task.pipeline}.model.name")
    tokenizer = AutoTokenizer.from_pretrained(source, **pretrained_kwargs())
    model = AutoModelForMaskedLM.from_pretrained(source, **pretrained_kwargs())
    check_max_length(model, settings.max_length, f"{task.pipeline}.pretrain.max_length")

    def encode(batch: list[str]) -> list[dict]:
        encoded = tokenizer(batch, truncation=True, max_length=settings.max_length, return_special_tokens_mask=True)
        return [{key: values[i] for key, values in encoded.items()} for i in range(len(batch))]

    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=settings.mlm_probability, seed=settings.seed)
    trainer = Trainer(
        model=model,
        args=TrainingArguments(
            output_dir=str(paths.checkpoints / "pretrain"),
            num_train_epochs=settings.epochs,
            learning_rate=settings.learning_rate,
            per_device_train_batch_size=settings.batch_size,
            per_device_eval_batch_size=2 * settings.batch_size,
            warmup_steps=0.06,
            weight_decay=0.01,
            eval_strategy="epoch",
            logging_strategy="epoch",
            save_strategy="no",
            seed=settings.seed,
            report_to="none",
            dataloader_num_workers=0,
        ),
        train_dataset=encode(texts[held_out:]),
        eval_dataset=encode(texts[:held_out]),
        data_collator=collator,
    )
    before = trainer.evaluate()["eval_loss"]
    result = trainer.train()
    after = trainer.evaluate()["eval_loss"]
    model.save_pretrained(str(paths.pretrained))
    tokenizer.save_pretrained(str(paths.pretrained))
    report = {
        "enabled": True,
        "base_model": base_model,
        "texts": len(texts) - held_out,
        "held_out_texts": held_out,
        "files": settings.texts,
        "held_out_perplexity_before": round(math.exp(before), 3),
        "held_out_perplexity_after": round(math.exp(after), 3),
        "train_seconds": round(result.metrics["train_runtime"], 1),
    }
    save_json(paths.pretrained / "pretrain.json", report)
    save_json(paths.pretrain_report, report)
    shutil.rmtree(paths.checkpoints / "pretrain", ignore_errors=True)
    print(f"pretrain[{task.pipeline}]: masked-LM perplexity on held-out in-domain text {report['held_out_perplexity_before']} -> {report['held_out_perplexity_after']}")
    return report
