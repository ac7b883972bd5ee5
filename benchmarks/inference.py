"""CPU inference speed on Financial PhraseBank (Sentences_50Agree): the ONNX Runtime int8 export
against `transformers.pipeline`, on the same fine-tuned model and test texts.

Fine-tunes the sentiment model with the pipeline's own stages (or takes `--model DIR`), exports it
as the register stage does (`registry.onnx: int8`, checked on the validation split), then times
three sides in this process, alternating, best of three: `transformers.pipeline
("text-classification")` (the baseline), the task's predict on the PyTorch model (what
`serving.runtime: torch` runs) and the task's predict on the export (`serving.runtime: onnx`).
- batch scoring: the whole test split in one call (the pipeline with `batch_size` B, the task
  sorting the texts by length into batches of 64);
- serving-sized batches: the split in its order, 32 texts a call (`serving.max_batch_size`, the
  most one served model call holds; the pipeline with `batch_size` 32);
- single requests: p50 and p99 latency over the first N test texts, one text a call;
- test macro-F1 of each side.
Writes benchmarks/results/inference.json.

    python benchmarks/inference.py [--model DIR] [--batch-size 16] [--requests 300] [--set train.epochs=3 ...]
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

from common import PHRASEBANK, benchmark_parser, phrasebank_params, run_in_scratch, write_result

TARGET = {"speedup": 4.0, "max_f1_drop": 0.005}


def percentile(values: list[float], share: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[round(share * 100) - 1]


def latencies_ms(call: Callable[[list[str]], list[str]], texts: list[str]) -> list[float]:
    """Milliseconds of `call([text])` for each text, one at a time."""
    found = []
    for text in texts:
        started = time.perf_counter()
        call([text])
        found.append(1000 * (time.perf_counter() - started))
    return found


def best_seconds(sides: dict[str, Callable], texts: list[str]) -> tuple[dict[str, float], dict[str, list[str]]]:
    """Best of three passes over `texts` per side, the sides alternating (so a busy moment hits all); and their labels."""
    seconds: dict[str, list[float]] = {name: [] for name in sides}
    labels = {}
    for _ in range(3):
        for name, call in sides.items():
            started = time.perf_counter()
            labels[name] = call(texts)
            seconds[name].append(time.perf_counter() - started)
    return {name: min(found) for name, found in seconds.items()}, labels


def main() -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--model", type=Path, help="a fine-tuned sentiment model folder (default: fine-tune one now)")
    parser.add_argument("--batch-size", type=int, default=16, help="the pipeline's batch_size in batch scoring (its fastest here)")
    parser.add_argument("--requests", type=int, default=300, help="single-text requests timed per side")
    args = parser.parse_args()
    params = phrasebank_params(args.set)
    started = time.time()
    model_dir = args.model.resolve() if args.model else None
    stages = ("collect", "validate", "split") + (() if model_dir else ("augment", "pretrain", "train"))
    workspace = run_in_scratch(params, "sentiment", stages, "bench-inference-")
    model_dir = model_dir or workspace / "models" / "sentiment"

    from transformers import pipeline as hf_pipeline

    from pipeline.models import use_all_cores
    from pipeline.paths import TaskPaths
    from pipeline.records import load_records
    from pipeline.tasks import get_task, load_params
    from pipeline.techniques import export

    use_all_cores()
    project = load_params(Path("params.yaml"))
    config, served_batch = project.task("sentiment"), project.serving.max_batch_size
    task = get_task("sentiment", config)
    paths = TaskPaths("sentiment")
    val, test = load_records(paths.split("val")), load_records(paths.split("test"))
    model, tokenizer = task.load_model(str(model_dir))
    folder = Path(tempfile.mkdtemp(prefix="onnx-"))
    export_started = time.time()
    export.export(model, tokenizer, folder, "int8")
    export_seconds = time.time() - export_started
    check = export.check(task, model, tokenizer, folder, val, config.registry.onnx_max_drop)
    onnx_model, onnx_tokenizer = export.load(folder)
    classifier = hf_pipeline("text-classification", model=model, tokenizer=tokenizer, device="cpu")
    texts = [example["text"] for example in test]

    def pipeline_side(batch_size: int) -> Callable[[list[str]], list[str]]:
        return lambda batch: [p["label"] for p in classifier(batch, batch_size=batch_size, truncation=True,
                                                             max_length=config.train.max_length)]

    def task_side(model, tokenizer, per_call: int) -> Callable[[list[str]], list[str]]:
        """The task's predict, `per_call` texts a call, as the serving worker calls it."""
        def call(batch: list[str]) -> list[str]:
            return [p["label"] for start in range(0, len(batch), per_call)
                    for p in task.predict(model, tokenizer, [{"text": text} for text in batch[start:start + per_call]])]
        return call

    whole = len(texts)
    scoring = {"baseline": pipeline_side(args.batch_size), "pytorch": task_side(model, tokenizer, whole),
               "optimized": task_side(onnx_model, onnx_tokenizer, whole)}
    serving = {"baseline": pipeline_side(served_batch), "pytorch": task_side(model, tokenizer, served_batch),
               "optimized": task_side(onnx_model, onnx_tokenizer, served_batch)}
    for call in (*scoring.values(), *serving.values()):
        call(texts[:64])  # warm-up
    scoring_seconds, labels = best_seconds(scoring, texts)
    serving_seconds, _ = best_seconds(serving, texts)
    latency = {name: latencies_ms(call, texts[: args.requests]) for name, call in serving.items()}

    f1 = {name: task.metrics(test, [{"label": label} for label in found])["f1_macro"] for name, found in labels.items()}
    throughput = {name: whole / seconds for name, seconds in scoring_seconds.items()}
    served = {name: whole / seconds for name, seconds in serving_seconds.items()}
    result = {
        "data": PHRASEBANK,
        "baseline": f"transformers.pipeline('text-classification', batch_size={args.batch_size}) on the PyTorch model",
        "optimized": "the ONNX Runtime int8 export (pipeline/techniques/export.py) through the task's length-sorted predict",
        "baseline_throughput": round(throughput["baseline"], 1),
        "optimized_throughput": round(throughput["optimized"], 1),
        "speedup": round(throughput["optimized"] / throughput["baseline"], 2),
        "pytorch_throughput": round(throughput["pytorch"], 1),
        "serving_batch": served_batch,
        "serving_baseline_throughput": round(served["baseline"], 1),
        "serving_pytorch_throughput": round(served["pytorch"], 1),
        "serving_optimized_throughput": round(served["optimized"], 1),
        "serving_speedup": round(served["optimized"] / served["baseline"], 2),
        "p50_latency_ms": round(percentile(latency["optimized"], 0.50), 1),
        "p99_latency_ms": round(percentile(latency["optimized"], 0.99), 1),
        "baseline_p50_latency_ms": round(percentile(latency["baseline"], 0.50), 1),
        "baseline_p99_latency_ms": round(percentile(latency["baseline"], 0.99), 1),
        "pytorch_p50_latency_ms": round(percentile(latency["pytorch"], 0.50), 1),
        "pytorch_p99_latency_ms": round(percentile(latency["pytorch"], 0.99), 1),
        "baseline_f1_macro": round(f1["baseline"], 4),
        "optimized_f1_macro": round(f1["optimized"], 4),
        "pytorch_f1_macro": round(f1["pytorch"], 4),
        "f1_drop": round(f1["baseline"] - f1["optimized"], 4),
        "label_agreement": round(sum(a == b for a, b in zip(labels["optimized"], labels["baseline"])) / whole, 4),
        "export_check_on_val": check,
        "export_seconds": round(export_seconds, 1),
        "test_texts": whole,
        "single_requests": min(args.requests, whole),
        "model": str(args.model) if args.model else params["sentiment"]["model"]["name"] + " fine-tuned here",
        "train": params["sentiment"]["train"],
        "target": TARGET,
        "seconds": round(time.time() - started, 1),
    }
    write_result("inference", args.set, result)


if __name__ == "__main__":
    main()
