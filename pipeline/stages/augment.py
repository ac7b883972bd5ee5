"""augment: synthetic variants of the training split only (val and test stay untouched).

Word-level methods draw `copies` variants per row; back-translation adds one paraphrase per row,
its text translated into a pivot language and back by the configured translation models.
"""

from __future__ import annotations

import random

from pipeline.augmentation import BACK_TRANSLATION
from pipeline.params import AugmentConfig, Params
from pipeline.paths import PipelinePaths, ensure_writable
from pipeline.records import Record, load_records, save_records
from pipeline.tasks import Task


def run(task: Task, params: Params, paths: PipelinePaths) -> int:
    """Write the training split plus `copies` marked synthetic rows per example; returns the count added."""
    settings = task.config.augment
    ensure_writable(paths.augmented_train.parent)
    rng = random.Random(settings.seed)
    train = load_records(paths.split("train"))
    task.prepare_augmentation(train)
    word_methods = [m for m in settings.methods if m != BACK_TRANSLATION]
    synthetic = []
    for example in train:
        for _ in range(settings.copies if word_methods else 0):
            method = rng.choice(word_methods)
            variant = task.augment(example, method, settings.rate, rng)
            if task.content_key(variant) != task.content_key(example):
                synthetic.append({**variant, "synthetic": True, "augmentation": method})
    if BACK_TRANSLATION in settings.methods:
        synthetic += back_translate(task, train, settings)
    save_records(paths.augmented_train, train + synthetic)
    print(f"augment[{task.pipeline}]: {len(train)} rows + {len(synthetic)} synthetic")
    return len(synthetic)


def back_translate(task: Task, train: list[Record], settings: AugmentConfig) -> list[Record]:
    """A paraphrase of each row's text: translated into the pivot language and back (new texts only)."""
    from pipeline.registry import load_translator
    from pipeline.seq2seq import translate

    models = settings.back_translation  # set: check_augment made sure
    texts = [example["text"] for example in train]
    print(f"augment[{task.pipeline}]: back-translating {len(texts)} texts via {models.to_pivot} and {models.from_pivot}")
    key = f"{task.pipeline}.augment.back_translation"
    pivots = translate(*load_translator(models.to_pivot, f"{key}.to_pivot"), texts, max_length=512, batch_size=models.batch_size)
    returned = translate(*load_translator(models.from_pivot, f"{key}.from_pivot"), pivots, max_length=512, batch_size=models.batch_size)
    paraphrases = []
    for example, pivot, text in zip(train, pivots, returned):
        variant = {**example, "text": text}
        if text and task.content_key(variant) != task.content_key(example):
            paraphrases.append({**variant, "synthetic": True, "augmentation": BACK_TRANSLATION, "pivot": pivot})
    return paraphrases
