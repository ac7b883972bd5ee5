"""Domain-adaptive pretraining on Financial PhraseBank (Sentences_50Agree): fine-tuning with and without it.

Both fine-tune the bundled MiniLM on the same split with the same settings; one first runs the
pretrain stage: masked-LM training on the train split's texts (their labels unused; val and
test texts never), plus any `--texts` files of unlabelled financial text. Writes
benchmarks/results/dapt.json.

    python benchmarks/dapt.py [--texts FILE ...] [--set pretrain.epochs=5 ...]
"""

from __future__ import annotations

import copy
import time

from common import PHRASEBANK, benchmark_parser, phrasebank_params, run_in_scratch, run_variant, write_result


def main() -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--texts", nargs="*", default=[], help="extra unlabelled in-domain text files (one text a line)")
    args = parser.parse_args()
    params = phrasebank_params(["train.epochs=3", *args.set])  # full fine-tuning peaks at epoch 3 on this split
    started = time.time()
    run_in_scratch(params, "sentiment", ("collect", "validate", "split", "augment"), "bench-dapt-")

    print("== without domain-adaptive pretraining", flush=True)
    plain = run_variant(params, "sentiment", ("pretrain", "train", "evaluate"))
    adapted_params = copy.deepcopy(params)
    adapted_params["sentiment"]["pretrain"].update(enabled=True, texts=[str(t) for t in args.texts])
    print("== with domain-adaptive pretraining", flush=True)
    adapted = run_variant(adapted_params, "sentiment", ("pretrain", "train", "evaluate"))

    from pipeline.paths import PipelinePaths
    from pipeline.records import load_json

    pretrain = load_json(PipelinePaths("sentiment").pretrain_report)
    result = {
        "data": PHRASEBANK,
        "without_dapt": {
            "test_f1_macro": round(plain["metrics"]["test"]["f1_macro"], 4),
            "val_f1_macro": round(plain["metrics"]["val"]["f1_macro"], 4),
            "train_seconds": plain["summary"]["train_seconds"],
        },
        "with_dapt": {
            "test_f1_macro": round(adapted["metrics"]["test"]["f1_macro"], 4),
            "val_f1_macro": round(adapted["metrics"]["val"]["f1_macro"], 4),
            "train_seconds": adapted["summary"]["train_seconds"],
            "pretrain": pretrain,
        },
        "test_f1_macro_delta_points": round(100 * (adapted["metrics"]["test"]["f1_macro"] - plain["metrics"]["test"]["f1_macro"]), 2),
        "pretrain_params": adapted_params["sentiment"]["pretrain"],
        "train": params["sentiment"]["train"],
        "seconds": round(time.time() - started, 1),
    }
    write_result("dapt", args.set, result)


if __name__ == "__main__":
    main()
