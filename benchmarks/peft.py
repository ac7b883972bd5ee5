"""Full fine-tuning vs LoRA vs AdaLoRA on Financial PhraseBank (Sentences_50Agree).

The data stages run once (the pipeline's 60/20/20 split, no augmentation, so the three differ only
in what is trained); then each variant trains and evaluates in its own process, so its peak
memory is its own. Writes benchmarks/results/peft.json.

    python benchmarks/peft.py [--set train.epochs=3 ...]   # --set applies to every variant
"""

from __future__ import annotations

import copy
import time

from common import PHRASEBANK, benchmark_parser, phrasebank_params, run_in_scratch, run_variant, write_result

TARGET = {"lora_f1_within_points_of_full": 1.0, "lora_trainable_fraction_below": 0.01}
ADAPTER = {"r": 4, "alpha": 16, "dropout": 0.1, "target_modules": ["query", "key", "value", "dense"]}
VARIANTS = {
    "full": {"learning_rate": 1.0e-4, "epochs": 4, "peft": None},
    "lora": {"learning_rate": 1.0e-3, "epochs": 6, "peft": {"method": "lora", **ADAPTER}},
    "adalora": {"learning_rate": 2.0e-3, "epochs": 6,  # its singular values start at zero: a higher rate
                "peft": {"method": "adalora", **ADAPTER}},
}


def main() -> None:
    parser = benchmark_parser(__doc__)
    args = parser.parse_args()
    params = phrasebank_params(args.set)
    started = time.time()
    run_in_scratch(params, "sentiment", ("collect", "validate", "split", "augment", "pretrain"), "bench-peft-")
    result = {"data": PHRASEBANK, "variants": {}}
    for name, settings in VARIANTS.items():
        variant = copy.deepcopy(params)
        variant["sentiment"]["train"].update(settings)
        print(f"== {name}: {settings}", flush=True)
        run = run_variant(variant, "sentiment", ("train", "evaluate"))
        result["variants"][name] = {
            "test_f1_macro": round(run["metrics"]["test"]["f1_macro"], 4),
            "val_f1_macro": round(run["metrics"]["val"]["f1_macro"], 4),
            "trainable_parameters": run["summary"]["trainable_parameters"],
            "trainable_fraction": run["summary"]["trainable_fraction"],
            "train_seconds": run["summary"]["train_seconds"],
            "epochs_run": run["summary"]["epochs_run"],
            "peak_rss_mb": run["peak_rss_mb"],
            "train": variant["sentiment"]["train"],
        }
    full, lora = result["variants"]["full"], result["variants"]["lora"]
    result["lora_minus_full_test_f1_points"] = round(100 * (lora["test_f1_macro"] - full["test_f1_macro"]), 2)
    result["lora_train_speedup"] = round(full["train_seconds"] / lora["train_seconds"] * lora["epochs_run"] / full["epochs_run"], 2)
    result["target"] = TARGET
    result["seconds"] = round(time.time() - started, 1)
    write_result("peft", args.set, result)


if __name__ == "__main__":
    main()
