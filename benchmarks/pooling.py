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
import time
from pathlib import Path

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

    task, config, train, val, test = workspace_splits("sentiment")
    if head == "mean":
        task.load_model = lambda path: task.load_with_head(mean_pooled(BertForSequenceClassification), path, task.labels)
    model, tokenizer, seconds = fine_tune(task, config, train, val, seed)
    return {"seed": seed, "head": head, **val_test_scores(task, model, tokenizer, val, test), "train_seconds": round(seconds, 1),
            "train_cpu_minutes": cpu_minutes(seconds)}


def main() -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44], help="training seeds")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once, the cores split between them")
    parser.add_argument("--one", nargs=2, metavar=("SEED", "HEAD"), help=argparse.SUPPRESS)  # one run, in the child process
    args = parser.parse_args()
    if args.one:
        report_to_parent(train_one(int(args.one[0]), args.one[1]))
        return
    params = phrasebank_params(args.set)
    started = time.time()
    scratch_splits(params, "sentiment", "bench-pooling-")
    runs = in_parallel([apart(SCRIPT, [str(seed), head], f"pooling: {head} seed {seed}") for seed in args.seeds for head in HEADS],
                       args.jobs)
    result = {
        "data": PHRASEBANK,
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
