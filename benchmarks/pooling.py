"""Which sentence vector the sentiment head reads, on Financial PhraseBank (Sentences_50Agree): the
default [CLS] position (through BERT's pooler, as AutoModelForSequenceClassification does) against
the mean of the token vectors, which is how the bundled all-MiniLM-L6-v2 was trained to embed.

Runs the data stages once in a scratch workspace (params.yaml's sentiment settings, the source
pointed at the PhraseBank file), then fine-tunes once per seed and head with the train stage's own
trainer (build_trainer: the same recipe, layer decay and precision), the two heads interleaved,
`--jobs` runs at once, each in a fresh process pinned to its share of the cores. Reports test and
val macro-F1 and accuracy per run and their mean ± sd per head. Writes benchmarks/results/pooling.json.

    python benchmarks/pooling.py [--seeds 42 43 44] [--jobs 2]

The mean-pooling head lives only here: it is a candidate measured, not a pipeline option.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from common import (
    SHARED_DATA,
    benchmark_parser,
    cpu_facts,
    fine_tune,
    in_parallel,
    run_pinned,
    scratch_splits,
    spread,
    task_params,
    write_result,
)

HEADS = ("cls", "mean")
SCRIPT = str(Path(__file__).resolve())  # the children start in the scratch workspace


def mean_pooled(base_class: type) -> type:
    """`base_class` (a BERT sequence classifier) whose head reads the mean of the unpadded token vectors."""
    import torch
    from transformers.modeling_outputs import SequenceClassifierOutput

    class MeanPooled(base_class):
        def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, labels=None, output_hidden_states=None, **_):
            encoded = self.bert(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                                output_hidden_states=output_hidden_states)
            mask = attention_mask.unsqueeze(-1).to(encoded.last_hidden_state.dtype)
            pooled = (encoded.last_hidden_state * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)
            logits = self.classifier(self.dropout(pooled))
            loss = torch.nn.functional.cross_entropy(logits.float(), labels) if labels is not None else None
            return SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=encoded.hidden_states)

    return MeanPooled


def train_one(seed: int, head: str) -> dict:
    """Fine-tune on the scratch workspace's splits (cwd) with `seed` and `head`; its scores and time."""
    from transformers import BertForSequenceClassification

    from pipeline.models import use_all_cores
    from pipeline.paths import TaskPaths
    from pipeline.records import load_records
    from pipeline.tasks import get_task, load_params

    use_all_cores()
    config = load_params(Path("params.yaml")).task("sentiment")
    task, paths = get_task("sentiment", config), TaskPaths("sentiment")
    if head == "mean":
        task.load_model = lambda path: task.load_with_head(mean_pooled(BertForSequenceClassification), path, task.labels)
    train, val, test = (load_records(paths.split(split)) for split in ("train", "val", "test"))
    model, tokenizer, seconds = fine_tune(task, config, train, val, seed)
    scores = {}
    for split, examples in (("val", val), ("test", test)):
        found = task.metrics(examples, task.predict(model, tokenizer, examples))
        scores.update({f"{split}_f1_macro": round(found["f1_macro"], 4), f"{split}_accuracy": round(found["accuracy"], 4)})
    return {"seed": seed, "head": head, **scores, "train_seconds": round(seconds, 1),
            "train_cpu_minutes": round(seconds * len(os.sched_getaffinity(0)) / 60, 1)}


def run_apart(seed: int, head: str):
    """A call for in_parallel: train_one in a fresh process pinned to the cores it is handed."""
    def call(cores: set[int] | None) -> dict:
        done = run_pinned([sys.executable, SCRIPT, "--one", str(seed), head], cores, stdout=subprocess.PIPE, text=True)
        if done.returncode != 0:
            sys.exit(f"pooling: seed {seed}, head {head} failed (its output is above)")
        found = json.loads(done.stdout.rsplit("RESULT ", 1)[1])
        print(f"pooling: {head} seed {seed}: test macro-F1 {found['test_f1_macro']:.4f}, {found['train_seconds']:.0f} s", flush=True)
        return found
    return call


def main() -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44], help="training seeds")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once, the cores split between them")
    parser.add_argument("--one", nargs=2, metavar=("SEED", "HEAD"), help=argparse.SUPPRESS)  # one run, in the child process
    args = parser.parse_args()
    if args.one:
        print("RESULT " + json.dumps(train_one(int(args.one[0]), args.one[1])))
        return
    source = SHARED_DATA / "financial_phrasebank" / "Sentences_50Agree.txt"
    if not source.exists():
        sys.exit(f"{source} not found: this benchmark needs ../shared/data beside the project")
    params = task_params("sentiment", args.set)
    params["sentiment"]["data"].update(source=str(source), format="phrasebank")
    started = time.time()
    scratch_splits(params, "sentiment", "bench-pooling-")
    runs = in_parallel([run_apart(seed, head) for seed in args.seeds for head in HEADS], args.jobs)
    result = {
        "data": "financial_phrasebank/Sentences_50Agree.txt",
        "heads": {head: {key: spread([r[key] for r in runs if r["head"] == head])
                         for key in ("test_f1_macro", "test_accuracy", "val_f1_macro", "train_cpu_minutes")} for head in HEADS},
        "runs": runs,
        "train_params": params["sentiment"]["train"],
        "jobs": args.jobs,
        **cpu_facts(),
        "seconds": round(time.time() - started, 1),
    }
    write_result("pooling", args.set, result)


if __name__ == "__main__":
    main()
