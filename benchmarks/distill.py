"""Knowledge distillation on Financial PhraseBank (Sentences_50Agree): a 6-layer teacher, a 3-layer student.

The teacher is the bundled MiniLM fine-tuned in full; the student is the same model cut to every
other layer (0, 2, 5, as DistilBERT was initialised) and trained on the labels and the teacher's
soft targets. Inference speed is timed on the test split in this process, teacher and student
alternating, best of three. Writes benchmarks/results/distill.json.

    python benchmarks/distill.py [--layers 3] [--student-epochs 6] [--set train.epochs=3 ...]
"""

from __future__ import annotations

import copy
import shutil
import time
from pathlib import Path

from common import PHRASEBANK, benchmark_parser, phrasebank_params, run_in_scratch, run_variant, write_result

TARGET = {"retained": 0.97, "inference_speedup": 1.8}
DISTILLATION = {"temperature": 2.0, "alpha": 0.5}


def predict_seconds(task, model, tokenizer, examples: list) -> float:
    """Wall-clock seconds of `task.predict` over all examples."""
    started = time.perf_counter()
    task.predict(model, tokenizer, examples)
    return time.perf_counter() - started


def main() -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--layers", type=int, default=3, help="student encoder layers (the teacher has 6)")
    parser.add_argument("--student-epochs", type=float, default=6, help="the student's epochs (it still improves where the teacher peaks)")
    args = parser.parse_args()
    params = phrasebank_params(args.set)
    started = time.time()
    workspace = run_in_scratch(params, "sentiment", ("collect", "validate", "split", "augment", "pretrain"), "bench-distill-")

    print("== teacher: full fine-tuning, 6 layers", flush=True)
    teacher = run_variant(params, "sentiment", ("train", "evaluate"))
    teacher_dir = workspace / "teacher"
    shutil.copytree(workspace / "models" / "sentiment", teacher_dir)

    student_params = copy.deepcopy(params)
    student_params["sentiment"]["model"]["layers"] = args.layers
    student_params["sentiment"]["train"]["distillation"] = {"teacher": str(teacher_dir), **DISTILLATION}
    student_params["sentiment"]["train"]["epochs"] = args.student_epochs
    print(f"== student: {args.layers} layers, distilled", flush=True)
    student = run_variant(student_params, "sentiment", ("train", "evaluate"))

    from pipeline.models import use_all_cores
    from pipeline.paths import PipelinePaths
    from pipeline.records import load_records
    from pipeline.tasks import get_task, load_params

    use_all_cores()
    task = get_task("sentiment", load_params(Path("params.yaml")).pipeline("sentiment"))
    examples = load_records(PipelinePaths("sentiment").split("test"))
    models = {"teacher": task.load_model(str(teacher_dir)), "student": task.load_model("models/sentiment")}
    for model, tokenizer in models.values():
        task.predict(model, tokenizer, examples[:64])  # warm-up
    timings = {"teacher": [], "student": []}
    for _ in range(3):  # alternate, so a busy moment on the machine hits both
        for name, (model, tokenizer) in models.items():
            timings[name].append(predict_seconds(task, model, tokenizer, examples))
    teacher_f1, student_f1 = teacher["metrics"]["test"]["f1_macro"], student["metrics"]["test"]["f1_macro"]
    result = {
        "data": PHRASEBANK,
        "teacher_test_f1_macro": round(teacher_f1, 4),
        "student_test_f1_macro": round(student_f1, 4),
        "retained": round(student_f1 / teacher_f1, 4),
        "inference_speedup": round(min(timings["teacher"]) / min(timings["student"]), 2),
        "teacher_predict_seconds": round(min(timings["teacher"]), 2),
        "student_predict_seconds": round(min(timings["student"]), 2),
        "predicted_texts": len(examples),
        "teacher_val_f1_macro": round(teacher["metrics"]["val"]["f1_macro"], 4),
        "student_val_f1_macro": round(student["metrics"]["val"]["f1_macro"], 4),
        "teacher_layers": 6,
        "student_layers": args.layers,
        "teacher_parameters": teacher["summary"]["trainable_parameters"],
        "student_parameters": student["summary"]["trainable_parameters"],
        "teacher_train_seconds": teacher["summary"]["train_seconds"],
        "student_train_seconds": student["summary"]["train_seconds"],
        "distillation": DISTILLATION,
        "train": params["sentiment"]["train"],
        "student_epochs": args.student_epochs,
        "target": TARGET,
        "seconds": round(time.time() - started, 1),
    }
    write_result("distill", args.set, result)


if __name__ == "__main__":
    main()
