"""CPU inference speed on Financial PhraseBank (Sentences_50Agree), like for like: every side scores
the same test texts in the same order with the same batch size, on the same fine-tuned model.

Fine-tunes the sentiment model with the pipeline's own stages (or takes `--model DIR`), exports it
to ONNX twice as the register stage does (fp32, and int8 checked on the validation split), then
times five sides in this process, interleaved, `--repeats` times (median and min-max):
- `hf_pipeline`: `transformers.pipeline("text-classification")` on the PyTorch model, the texts in
  their own order (what most users write);
- `hf_pipeline_sorted`: the same pipeline given the texts sorted by length (labels put back in order);
- `pytorch`, `onnx_fp32`, `onnx_int8`: the task's predict (it sorts by length itself) on the PyTorch
  model (`serving.runtime: torch`), the fp32 export and the int8 export (`serving.runtime: onnx`).
Three workloads: batch scoring (the whole split, batches of 64 on every side), serving-sized calls
(the split in its order, `serving.max_batch_size` texts a call) and single requests (p50/p99 latency
over the first N texts). Batch scoring's speedups are ratios of the medians, and also taken per
repeat (a repeat's sides ran back to back) with their median and min-max. Test macro-F1 of each
side, the CPU model and its int8/bf16 flags.
Writes benchmarks/results/inference.json.

    python benchmarks/inference.py [--model DIR] [--repeats 5] [--requests 300] [--set train.epochs=3 ...]
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

from common import PHRASEBANK, benchmark_parser, cpu_facts, phrasebank_params, run_in_scratch, timing, write_result

TARGET = {"onnx_int8_vs_hf_pipeline": 4.0, "onnx_int8_vs_pytorch": 3.0, "max_f1_drop": 0.005}
BATCH = 64  # the task's predict scores in length-sorted batches of 64; every side gets this batch size
Labeller = Callable[[list[str]], list[str]]


def percentile(values: list[float], share: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[round(share * 100) - 1]


def latencies_ms(call: Labeller, texts: list[str]) -> list[float]:
    """Milliseconds of `call([text])` for each text, one at a time."""
    found = []
    for text in texts:
        started = time.perf_counter()
        call([text])
        found.append(1000 * (time.perf_counter() - started))
    return found


def timed_passes(sides: dict[str, Labeller], texts: list[str], repeats: int) -> tuple[dict[str, list[float]], dict[str, list[str]]]:
    """Seconds of each pass over `texts`, the sides interleaved (a busy moment hits them all); and their labels."""
    seconds: dict[str, list[float]] = {name: [] for name in sides}
    labels = {}
    for _ in range(repeats):
        for name, call in sides.items():
            started = time.perf_counter()
            labels[name] = call(texts)
            seconds[name].append(time.perf_counter() - started)
    return seconds, labels


def in_calls(call: Labeller, per_call: int) -> Labeller:
    """`call` on `per_call` texts at a time, in order, as the serving worker calls it."""
    return lambda texts: [label for start in range(0, len(texts), per_call) for label in call(texts[start:start + per_call])]


def main() -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--model", type=Path, help="a fine-tuned sentiment model folder (default: fine-tune one now)")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved passes per side")
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
    from pipeline.paths import PipelinePaths
    from pipeline.records import load_records
    from pipeline.tasks import get_task, load_params
    from pipeline.techniques import export

    use_all_cores()
    project = load_params(Path("params.yaml"))
    config, served_batch = project.pipeline("sentiment"), project.serving.max_batch_size
    task = get_task("sentiment", config)
    paths = PipelinePaths("sentiment")
    val, test = load_records(paths.split("val")), load_records(paths.split("test"))
    model, tokenizer = task.load_model(str(model_dir))
    exports = {precision: Path(tempfile.mkdtemp(prefix=f"onnx-{precision}-")) for precision in ("fp32", "int8")}
    for precision, folder in exports.items():
        export.export(model, tokenizer, folder, precision)
    check = export.check(task, model, tokenizer, exports["int8"], val, config.registry.onnx_max_drop)
    classifier = hf_pipeline("text-classification", model=model, tokenizer=tokenizer, device="cpu")
    texts = [example["text"] for example in test]

    def pipeline_side(batch_size: int, sort: bool) -> Labeller:
        def call(batch: list[str]) -> list[str]:
            order = sorted(range(len(batch)), key=lambda i: len(batch[i])) if sort else list(range(len(batch)))
            found = classifier([batch[i] for i in order], batch_size=batch_size, truncation=True, max_length=config.train.max_length)
            labels = [""] * len(batch)
            for i, prediction in zip(order, found):
                labels[i] = prediction["label"]
            return labels
        return call

    def task_side(side_model, side_tokenizer) -> Labeller:
        return lambda batch: [p["label"] for p in task.predict(side_model, side_tokenizer, [{"text": text} for text in batch])]

    runtimes = {"pytorch": task_side(model, tokenizer),
                **{f"onnx_{precision}": task_side(*export.load(folder)) for precision, folder in exports.items()}}
    scoring = {"hf_pipeline": pipeline_side(BATCH, sort=False), "hf_pipeline_sorted": pipeline_side(BATCH, sort=True), **runtimes}
    serving = {"hf_pipeline": pipeline_side(served_batch, sort=False), **{name: in_calls(call, served_batch) for name, call in runtimes.items()}}
    for call in (*scoring.values(), *serving.values()):
        call(texts[:BATCH])  # warm-up
    print(f"timing {len(scoring)} sides x {args.repeats} passes over {len(texts)} texts", flush=True)
    scoring_seconds, labels = timed_passes(scoring, texts, args.repeats)
    serving_seconds, _ = timed_passes(serving, texts, args.repeats)
    latency = {name: latencies_ms(in_calls(call, 1), texts[: args.requests]) for name, call in serving.items()}

    def throughput(seconds: dict[str, list[float]]) -> dict[str, dict]:
        return {name: timing([len(texts) / s for s in found], 1) for name, found in seconds.items()}

    scored, served = throughput(scoring_seconds), throughput(serving_seconds)
    f1 = {name: round(task.metrics(test, [{"label": label} for label in found])["f1_macro"], 4) for name, found in labels.items()}
    pairs = [(fast, slow) for fast in ("onnx_int8", "onnx_fp32", "pytorch") for slow in ("hf_pipeline", "hf_pipeline_sorted", "pytorch")
             if fast != slow]
    speedups = {f"{fast}_vs_{slow}": round(scored[fast]["median"] / scored[slow]["median"], 2) for fast, slow in pairs}
    # A repeat's sides ran back to back, so their ratio pairs up: the spread of the speedup itself.
    paired = {f"{fast}_vs_{slow}": timing([s / f for f, s in zip(scoring_seconds[fast], scoring_seconds[slow])])
              for fast, slow in pairs}
    result = {
        "data": PHRASEBANK,
        "test_texts": len(texts),
        "batch_size": BATCH,
        "batch_scoring_texts_per_second": scored,
        "speedups": speedups,
        "speedups_per_repeat": paired,
        "serving_batch": served_batch,
        "serving_texts_per_second": served,
        "single_request_ms": {name: {"p50": round(percentile(found, 0.50), 1), "p99": round(percentile(found, 0.99), 1)}
                              for name, found in latency.items()},
        "single_requests": min(args.requests, len(texts)),
        "test_f1_macro": f1,
        "onnx_int8_f1_drop": round(f1["pytorch"] - f1["onnx_int8"], 4),
        "onnx_int8_label_agreement": round(sum(a == b for a, b in zip(labels["onnx_int8"], labels["pytorch"])) / len(texts), 4),
        "export_check_on_val": check,
        **cpu_facts(),
        "model": str(args.model) if args.model else params["sentiment"]["model"]["name"] + " fine-tuned here",
        "train": params["sentiment"]["train"],
        "repeats": args.repeats,
        "target": TARGET,
        "seconds": round(time.time() - started, 1),
    }
    write_result("inference", args.set, result)


if __name__ == "__main__":
    main()
