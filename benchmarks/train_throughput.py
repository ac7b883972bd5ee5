"""Training throughput on Financial PhraseBank (Sentences_50Agree): the pipeline's train stage against
a plain Hugging Face Trainer written the way `examples/pytorch/text-classification/run_glue.py` is.

Both train the bundled MiniLM on the same train split (the pipeline's 60/20/20 content-hash split,
no augmentation) with the same epochs, learning rate, batch size, warm-up, weight decay and seed,
each in a fresh process (so its peak memory is its own); both are scored on the same test split.
The baseline does what run_glue.py does by default: every text padded to `max_length` (128)
when the dataset is tokenised, `default_data_collator`, random batches, no evaluation during
training. The pipeline pads each batch to its longest text, groups texts of similar length into
batches, evaluates and checkpoints every epoch (inside its timed training) and may stop early.
Samples per second count the samples each really trained on (epochs run x train texts).
Writes benchmarks/results/train_throughput.json.

    python benchmarks/train_throughput.py [--set train.epochs=2 ...]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from common import PHRASEBANK, benchmark_parser, phrasebank_params, run_in_scratch, run_variant, write_result

TARGET = {"speedup": 3.0, "max_f1_drop": 0.005}
BASELINE_RESULT = "baseline.json"


def run_glue_baseline(workspace: Path) -> None:
    """Train and test the run_glue.py-style baseline in `workspace`; writes baseline.json there."""
    os.chdir(workspace)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from sklearn.metrics import f1_score
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        Trainer,
        TrainingArguments,
        default_data_collator,
        set_seed,
    )

    from pipeline.models import resolve_model
    from pipeline.paths import TaskPaths
    from pipeline.records import load_records
    from pipeline.tasks import load_params

    config = load_params(Path("params.yaml")).task("sentiment")
    settings, labels, paths = config.train, config.validate.labels, TaskPaths("sentiment")
    set_seed(settings.seed)
    name = resolve_model(config.model.name)
    tokenizer = AutoTokenizer.from_pretrained(name)
    model = AutoModelForSequenceClassification.from_pretrained(
        name, num_labels=len(labels), id2label=dict(enumerate(labels)), label2id={label: i for i, label in enumerate(labels)})

    def dataset(split: str) -> list[dict]:
        examples = load_records(paths.split(split))
        encoded = tokenizer([e["text"] for e in examples], padding="max_length", max_length=settings.max_length, truncation=True)
        return [{**{k: v[i] for k, v in encoded.items()}, "label": labels.index(e["label"])} for i, e in enumerate(examples)]

    train, test = dataset("train"), dataset("test")
    args = TrainingArguments(
        output_dir="baseline-output", num_train_epochs=settings.epochs, learning_rate=settings.learning_rate,
        per_device_train_batch_size=settings.batch_size, per_device_eval_batch_size=settings.batch_size,
        warmup_steps=settings.warmup, weight_decay=settings.weight_decay, seed=settings.seed,
        save_strategy="no", report_to="none",
    )
    trainer = Trainer(model=model, args=args, train_dataset=train, data_collator=default_data_collator)
    result = trainer.train()
    output = trainer.predict(test)
    report = {
        "train_seconds": result.metrics["train_runtime"],
        "epochs_run": trainer.state.epoch,
        "train_rows": len(train),
        "test_f1_macro": float(f1_score(output.label_ids, output.predictions.argmax(-1), average="macro")),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }
    Path(BASELINE_RESULT).write_text(json.dumps(report))


def samples_per_second(epochs_run: float, rows: int, seconds: float) -> float:
    return epochs_run * rows / seconds


def main() -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--baseline-in", type=Path, help=argparse.SUPPRESS)  # the baseline's own process
    args = parser.parse_args()
    if args.baseline_in:
        run_glue_baseline(args.baseline_in)
        return
    params = phrasebank_params(args.set)
    started = time.time()
    workspace = run_in_scratch(params, "sentiment", ("collect", "validate", "split", "augment", "pretrain"), "bench-throughput-")
    train_rows = sum(1 for _ in open(workspace / "data" / "augmented" / "sentiment.jsonl"))

    print("== baseline: run_glue.py-style Trainer, padded to max_length", flush=True)
    subprocess.run([sys.executable, __file__, "--baseline-in", str(workspace)], check=True,
                   env={**os.environ, "HF_HUB_OFFLINE": "1"})
    baseline = json.loads((workspace / BASELINE_RESULT).read_text())
    print("== pipeline: the train and evaluate stages", flush=True)
    pipeline = run_variant(params, "sentiment", ("train", "evaluate"))

    summary = pipeline["summary"]
    baseline_speed = samples_per_second(baseline["epochs_run"], baseline["train_rows"], baseline["train_seconds"])
    pipeline_speed = samples_per_second(summary["epochs_run"], train_rows, summary["train_seconds"])
    result = {
        "data": PHRASEBANK,
        "baseline_samples_per_second": round(baseline_speed, 2),
        "pipeline_samples_per_second": round(pipeline_speed, 2),
        "speedup": round(pipeline_speed / baseline_speed, 2),
        "baseline_test_f1_macro": round(baseline["test_f1_macro"], 4),
        "pipeline_test_f1_macro": round(pipeline["metrics"]["test"]["f1_macro"], 4),
        "f1_drop": round(baseline["test_f1_macro"] - pipeline["metrics"]["test"]["f1_macro"], 4),
        "peak_rss_mb": {"baseline": baseline["peak_rss_mb"], "pipeline": pipeline["peak_rss_mb"]},
        "train_seconds": {"baseline": round(baseline["train_seconds"], 1), "pipeline": summary["train_seconds"]},
        "epochs_run": {"baseline": baseline["epochs_run"], "pipeline": summary["epochs_run"]},
        "train_rows": train_rows,
        "train": params["sentiment"]["train"],
        "cpu_threads": len(os.sched_getaffinity(0)),
        "target": TARGET,
        "seconds": round(time.time() - started, 1),
    }
    write_result("train_throughput", args.set, result)


if __name__ == "__main__":
    main()
