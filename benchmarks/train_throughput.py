"""Training throughput on Financial PhraseBank (Sentences_50Agree): the pipeline's train stage against
two plain Hugging Face Trainer recipes, on the same split, model and settings.

- `run_glue`: what `examples/pytorch/text-classification/run_glue.py` does by default: every text
  padded to max_length (128) when tokenised, `default_data_collator`, random batches, fp32.
- `strong`: what a seasoned user writes: `DataCollatorWithPadding` (each batch padded to its
  longest text) and `train_sampling_strategy="group_by_length"`, fp32, the default fused AdamW.
- `pipeline`: the train stage as params.yaml sets it (bf16 autocast where the CPU has bf16
  (`train.precision: auto`), evaluation, checkpoint and early stopping each epoch, all inside its
  timed window).
Speed: every side trains `--speed-epochs` epoch(s), the sides interleaved, `--repeats` times, each
run in a fresh process on all cores; samples/s = texts trained / the Trainer's train_runtime;
median and min-max. Quality: `strong` and `pipeline` trained the full `train.epochs` once per seed
(`--seeds`), `--jobs` at once with the cores split between them, scored on the test split; mean
and sd (run_glue is left out of quality: at its speed three full runs cost over an hour here).
Writes benchmarks/results/train_throughput.json.

    python benchmarks/train_throughput.py [--repeats 3] [--seeds 42 43 44] [--jobs 2] [--set train.epochs=2 ...]
"""

from __future__ import annotations

import argparse
import copy
import json
import resource
import sys
import time
from pathlib import Path

from common import (
    PHRASEBANK,
    benchmark_parser,
    cpu_facts,
    in_parallel,
    phrasebank_params,
    run_folder,
    run_in_scratch,
    run_pinned,
    run_variant,
    spread,
    timing,
    with_overrides,
    write_result,
)

TARGET = {"pipeline_vs_strong": 1.5, "max_f1_drop": 0.005}
# The plain recipes have no layer-wise decay, so every side trains at 1e-4 without it (the default
# 2e-4 is the head's rate under the decay); what differs is only how each side computes.
SHARED_RECIPE = ["train.layer_decay=1.0", "train.learning_rate=1.0e-4"]
PLAIN_SIDES = ("run_glue", "strong")


def train_plain(side: str, epochs: float, seed: int, score: bool) -> dict:
    """Train one plain-Trainer recipe in the current workspace; its timing (and test macro-F1 when `score`)."""
    from sklearn.metrics import f1_score
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
        default_data_collator,
        set_seed,
    )

    from pipeline.models import resolve_model
    from pipeline.paths import PipelinePaths
    from pipeline.records import load_records
    from pipeline.tasks import load_params

    config = load_params(Path("params.yaml")).pipeline("sentiment")
    settings, labels, paths = config.train, config.validate.labels, PipelinePaths("sentiment")
    set_seed(seed)
    name = resolve_model(config.model.name)
    tokenizer = AutoTokenizer.from_pretrained(name)
    model = AutoModelForSequenceClassification.from_pretrained(
        name, num_labels=len(labels), id2label=dict(enumerate(labels)), label2id={label: i for i, label in enumerate(labels)})
    padding = "max_length" if side == "run_glue" else False

    def dataset(split: str) -> list[dict]:
        examples = load_records(paths.split(split))
        encoded = tokenizer([e["text"] for e in examples], padding=padding, max_length=settings.max_length, truncation=True)
        return [{**{k: v[i] for k, v in encoded.items()}, "label": labels.index(e["label"])} for i, e in enumerate(examples)]

    train = dataset("train")
    args = TrainingArguments(
        output_dir="plain-output", num_train_epochs=epochs, learning_rate=settings.learning_rate,
        per_device_train_batch_size=settings.batch_size, per_device_eval_batch_size=2 * settings.batch_size,
        warmup_steps=settings.warmup, weight_decay=settings.weight_decay, seed=seed, save_strategy="no", report_to="none",
        **({} if side == "run_glue" else {"train_sampling_strategy": "group_by_length"}),
    )
    collator = default_data_collator if side == "run_glue" else DataCollatorWithPadding(tokenizer)
    trainer = Trainer(model=model, args=args, train_dataset=train, data_collator=collator)
    seconds = trainer.train().metrics["train_runtime"]
    report = {"train_seconds": round(seconds, 1), "samples_per_second": trainer.state.epoch * len(train) / seconds,
              "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}
    if score:
        output = trainer.predict(dataset("test"))
        report["test_f1_macro"] = float(f1_score(output.label_ids, output.predictions.argmax(-1), average="macro"))
    return report


def plain_run(side: str, epochs: float, seed: int, score: bool, tag: str, cores: set[int] | None = None) -> dict:
    """train_plain in a fresh process in folder SIDE-TAG of the workspace (its peak memory its own), pinned to `cores` when given."""
    folder = run_folder(f"{side}-{tag}", shared=("params.yaml", "data"))
    command = [sys.executable, __file__, "--plain", side, str(epochs), str(seed), str(int(score))]
    run_pinned(command, cores, check=True, cwd=folder)
    return json.loads((folder / "plain.json").read_text())


def pipeline_run(params: dict, epochs: float, seed: int, tag: str, cores: set[int] | None = None) -> dict:
    """The pipeline's train and evaluate stages in folder pipeline-TAG of the workspace; timing and test macro-F1."""
    folder = run_folder(f"pipeline-{tag}")
    variant = with_overrides(copy.deepcopy(params), "sentiment", [f"train.epochs={epochs}", f"train.seed={seed}"])
    run = run_variant(variant, "sentiment", ("train", "evaluate"), folder, cores)
    rows = sum(1 for _ in open("data/augmented/sentiment.jsonl"))
    summary = run["summary"]
    return {"train_seconds": summary["train_seconds"], "samples_per_second": summary["epochs_run"] * rows / summary["train_seconds"],
            "epochs_run": summary["epochs_run"], "peak_rss_mb": run["peak_rss_mb"], "test_f1_macro": run["metrics"]["test"]["f1_macro"]}


def main() -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved speed runs per side")
    parser.add_argument("--speed-epochs", type=float, default=1.0, help="epochs each speed run trains")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44], help="training seeds of the quality runs")
    parser.add_argument("--jobs", type=int, default=2, help="quality runs at once, the cores split between them")
    parser.add_argument("--plain", nargs=4, help=argparse.SUPPRESS)  # SIDE EPOCHS SEED SCORE: one plain run, in its own process
    args = parser.parse_args()
    if args.plain:
        side, epochs, seed, score = args.plain
        report = train_plain(side, float(epochs), int(seed), score == "1")
        Path("plain.json").write_text(json.dumps(report))
        return
    params = phrasebank_params([*SHARED_RECIPE, *args.set])
    started = time.time()
    run_in_scratch(params, "sentiment", ("collect", "validate", "split", "augment"), "bench-throughput-")
    seed = params["sentiment"]["train"]["seed"]

    speed: dict[str, list[dict]] = {side: [] for side in (*PLAIN_SIDES, "pipeline")}
    for repeat in range(args.repeats):
        for side in speed:
            print(f"== speed, repeat {repeat + 1}/{args.repeats}: {side}", flush=True)
            tag = f"speed-{repeat}"
            speed[side].append(pipeline_run(params, args.speed_epochs, seed, tag) if side == "pipeline"
                               else plain_run(side, args.speed_epochs, seed, False, tag))
    epochs = params["sentiment"]["train"]["epochs"]
    print(f"== quality: strong and pipeline, {epochs} epochs, seeds {args.seeds}", flush=True)
    calls = [lambda cores, s=s: plain_run("strong", epochs, s, True, f"seed-{s}", cores) for s in args.seeds]
    calls += [lambda cores, s=s: pipeline_run(params, epochs, s, f"seed-{s}", cores) for s in args.seeds]
    found = in_parallel(calls, args.jobs)
    quality = {"strong": found[: len(args.seeds)], "pipeline": found[len(args.seeds):]}

    samples = {side: timing([run["samples_per_second"] for run in runs]) for side, runs in speed.items()}
    f1 = {side: spread([run["test_f1_macro"] for run in runs]) for side, runs in quality.items()}
    result = {
        "data": PHRASEBANK,
        "train_rows": sum(1 for _ in open("data/augmented/sentiment.jsonl")),
        "speed_epochs": args.speed_epochs,
        "samples_per_second": samples,
        "speedup": {f"pipeline_vs_{side}": round(samples["pipeline"]["median"] / samples[side]["median"], 2) for side in PLAIN_SIDES},
        "peak_rss_mb": {side: max(run["peak_rss_mb"] for run in runs) for side, runs in speed.items()},
        "test_f1_macro": f1,
        "f1_drop": round(f1["strong"]["mean"] - f1["pipeline"]["mean"], 4),
        "quality_runs": {side: [{"seed": s, **run} for s, run in zip(args.seeds, runs)] for side, runs in quality.items()},
        "train": params["sentiment"]["train"],
        "repeats": args.repeats,
        "jobs": args.jobs,
        **cpu_facts(),
        "target": TARGET,
        "seconds": round(time.time() - started, 1),
    }
    write_result("train_throughput", args.set, result)


if __name__ == "__main__":
    main()
