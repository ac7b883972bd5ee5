"""Two of issue 21's candidates for sentiment quality, on Financial PhraseBank (Sentences_50Agree),
against the defaults in the same run: distillation from an ensemble of seed models, and
checkpoint averaging (the mean of the weights the last epochs ended with).

Runs the data stages once in a scratch workspace (params.yaml's sentiment settings, the source
pointed at the PhraseBank file). Then, each run in a fresh process pinned to its share of the
cores (`--jobs` at once), with the train stage's own trainer (build_trainer):

1. the defaults, once per seed: the baseline. Each run also scores the average of the weights of
   its last 2 and last 3 epochs (a copy is kept at every epoch's evaluation), and saves its model;
2. a student per seed, of the same size and from the same pretrained weights, trained with the
   same seed and settings plus the distillation loss (`--temperature`, `--alpha`) against the
   ensemble of every baseline model (their logits averaged).

Student and baseline of a seed differ only in the loss, so the per-seed differences pair up. A
student's CPU-minutes count its teachers' too: that is what the recipe costs. Writes
benchmarks/results/ensemble_distill.json.

    python benchmarks/ensemble_distill.py [--seeds 42 43 44] [--jobs 2]

The ensemble teacher and the averaging live only here: they are candidates measured, not
pipeline options.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from common import (
    PHRASEBANK,
    apart,
    benchmark_parser,
    cpu_facts,
    cpu_minutes,
    fine_tune,
    in_parallel,
    phrasebank_params,
    report_to_parent,
    scratch_splits,
    spread,
    val_test_scores,
    workspace_splits,
    write_result,
)

SCRIPT = str(Path(__file__).resolve())  # the children start in the scratch workspace
AVERAGED_EPOCHS = (2, 3)


def teacher_folder(seed: int) -> Path:
    return Path(f"baseline-{seed}")


def epoch_snapshots() -> tuple[Any, list[dict]]:
    """A Trainer callback that keeps a CPU copy of the weights after every evaluation, and that list."""
    from transformers import TrainerCallback

    snapshots: list[dict] = []

    class KeepWeights(TrainerCallback):
        def on_evaluate(self, args, state, control, model=None, **kwargs):
            snapshots.append({name: value.detach().clone() for name, value in model.state_dict().items()})

    return KeepWeights(), snapshots


def averaged(model: Any, snapshots: list[dict]) -> Any:
    """`model` with every floating-point weight the mean of `snapshots`' (integer buffers from the last)."""
    import copy

    state = {name: (sum(s[name] for s in snapshots) / len(snapshots) if value.is_floating_point() else value)
             for name, value in snapshots[-1].items()}
    average = copy.deepcopy(model)
    average.load_state_dict(state)
    return average


def train_baseline(seed: int) -> dict:
    """The defaults with `seed`: scores of the kept (best) model and of the last epochs' weight averages;
    saves the kept model as a teacher."""
    task, config, train, val, test = workspace_splits("sentiment")
    keep_weights, snapshots = epoch_snapshots()
    model, tokenizer, seconds = fine_tune(task, config, train, val, seed, callbacks=[keep_weights])
    result = {"seed": seed, "kind": "baseline", **val_test_scores(task, model, tokenizer, val, test), "epochs_run": len(snapshots)}
    for last in AVERAGED_EPOCHS:
        if len(snapshots) >= last:
            result[f"average_last_{last}"] = val_test_scores(task, averaged(model, snapshots[-last:]), tokenizer, val, test)
    task.export_model(model).save_pretrained(teacher_folder(seed))
    tokenizer.save_pretrained(teacher_folder(seed))
    probabilities, _ = task.class_probabilities(model, tokenizer, test)
    return {**result, "train_seconds": round(seconds, 1), "train_cpu_minutes": cpu_minutes(seconds), "test_probabilities": probabilities.tolist()}


def ensemble_of(folders: list[Path], task: Any) -> Any:
    """One module whose logits are the mean of the models' in `folders` (the distillation teacher)."""
    import torch
    from transformers.modeling_outputs import SequenceClassifierOutput

    class Ensemble(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.members = torch.nn.ModuleList(task.load_model(str(folder))[0] for folder in folders)

        def forward(self, labels=None, **inputs):
            return SequenceClassifierOutput(logits=torch.stack([m(**inputs).logits for m in self.members]).mean(dim=0))

    return Ensemble()


def train_student(seed: int, teachers: list[int], temperature: float, alpha: float) -> dict:
    """The defaults with `seed` plus distillation from the ensemble of the `teachers` baselines."""
    import dataclasses

    from pipeline.params import DistillationConfig
    from pipeline.stages import train as train_stage

    task, config, train, val, test = workspace_splits("sentiment")
    folders = [teacher_folder(t) for t in teachers]
    teacher = ensemble_of(folders, task)
    _, tokenizer = task.load_model(str(folders[0]))
    train_stage.registry.load_reference = lambda *_: (teacher, tokenizer)  # the stage loads one teacher from a reference
    distillation = DistillationConfig(teacher=f"ensemble of seeds {teachers}", temperature=temperature, alpha=alpha)
    config = dataclasses.replace(config, train=dataclasses.replace(config.train, distillation=distillation))
    model, tokenizer, seconds = fine_tune(task, config, train, val, seed)
    return {"seed": seed, "kind": "student", **val_test_scores(task, model, tokenizer, val, test), "train_seconds": round(seconds, 1),
            "train_cpu_minutes": cpu_minutes(seconds)}


def ensemble_scores(task: Any, test: list, baselines: list[dict]) -> dict:
    """Test macro-F1 and accuracy of the baselines' averaged probabilities (the teacher, as served)."""
    import numpy as np

    probabilities = np.mean([np.array(b["test_probabilities"]) for b in baselines], axis=0)
    labels = [task.labels[i] for i in probabilities.argmax(axis=1)]
    metrics = task.metrics(test, [{"label": label} for label in labels])
    return {"test_f1_macro": round(metrics["f1_macro"], 4), "test_accuracy": round(metrics["accuracy"], 4)}


def summary(runs: list[dict]) -> dict:
    return {key: spread([r[key] for r in runs]) for key in ("test_f1_macro", "test_accuracy", "val_f1_macro")}


def main() -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44], help="training seeds (baselines, teachers, students)")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once, the cores split between them")
    parser.add_argument("--temperature", type=float, default=2.0, help="distillation temperature")
    parser.add_argument("--alpha", type=float, default=0.5, help="weight of the soft-target loss")
    parser.add_argument("--one", nargs="+", help=argparse.SUPPRESS)  # one run, in the child process
    args = parser.parse_args()
    if args.one:
        kind, seed = args.one[0], int(args.one[1])
        found = train_baseline(seed) if kind == "baseline" else train_student(seed, args.seeds, args.temperature, args.alpha)
        report_to_parent(found)
        return
    if len(args.seeds) < 2:
        sys.exit("ensemble_distill: --seeds needs at least 2 seeds (an ensemble of one is the baseline)")
    params = phrasebank_params(args.set)
    started = time.time()
    task, _, _, _, test = scratch_splits(params, "sentiment", "bench-ensemble-distill-")
    seeds = [str(s) for s in args.seeds]
    options = ["--seeds", *seeds, "--temperature", str(args.temperature), "--alpha", str(args.alpha)]
    baselines = in_parallel([apart(SCRIPT, ["baseline", seed], f"ensemble_distill: baseline seed {seed}") for seed in seeds], args.jobs)
    students = in_parallel([apart(SCRIPT, ["student", seed, *options], f"ensemble_distill: student seed {seed}") for seed in seeds],
                           args.jobs)
    teacher_cpu_minutes = sum(b["train_cpu_minutes"] for b in baselines)
    for student in students:
        student["recipe_cpu_minutes"] = round(student["train_cpu_minutes"] + teacher_cpu_minutes, 1)
    # Early stopping can leave a seed with fewer epochs: an average is reported only where every seed has it.
    averages = {key: summary([b[key] for b in baselines]) for key in (f"average_last_{n}" for n in AVERAGED_EPOCHS)
                if all(key in b for b in baselines)}
    result = {
        "data": PHRASEBANK,
        "baseline": summary(baselines),
        **averages,
        "ensemble_teacher": ensemble_scores(task, test, baselines),
        "student": summary(students),
        "student_minus_baseline_points": [round(100 * (s["test_f1_macro"] - b["test_f1_macro"]), 2) for s, b in zip(students, baselines)],
        "runs": [{k: v for k, v in r.items() if k != "test_probabilities"} for r in baselines + students],
        "distillation": {"temperature": args.temperature, "alpha": args.alpha, "teachers": args.seeds},
        "train_params": params["sentiment"]["train"],
        "jobs": args.jobs,
        **cpu_facts(),
        "seconds": round(time.time() - started, 1),
    }
    write_result("ensemble_distill", args.set, result)


if __name__ == "__main__":
    main()
