"""CoNLL-2003 English NER through the pipeline's own stages.

Trains on eng.train and evaluates on eng.testa (the dev set) with the `ner:` settings of the
project's params.yaml, in a scratch workspace, and writes benchmarks/results/ner_conll.json.
The source keeps CoNLL's own split: train = eng.train, val = test = eng.testa, so the best
epoch is chosen on the dev set that is reported (usual for dev figures; there is no testb here).

    python benchmarks/ner_conll.py [--set model.crf=false --set train.epochs=2 ...]

params.yaml's `ner:` settings suit the 450-sentence sample; on 14,041 sentences the benchmark
trains fewer epochs with larger batches and no augmentation (LARGE_DATA below). `--set`
overrides a key of the `ner:` section on top; such runs write ner_conll-<overrides>.json.
"""

from __future__ import annotations

import argparse
import sys
import time

from common import SHARED_DATA, pipeline_params, run_facts, run_in_scratch, write_result

DATA = SHARED_DATA / "conll2003"
TARGET = {"dev_f1": 0.90}
LARGE_DATA = ["augment.copies=0", "train.epochs=3", "train.batch_size=32"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override ner.KEY")
    args = parser.parse_args()
    train, dev = DATA / "eng.train", DATA / "eng.testa"
    if not train.exists() or not dev.exists():
        sys.exit(f"{DATA} lacks eng.train / eng.testa: this benchmark needs ../shared/data beside the project")
    params = pipeline_params("ner", LARGE_DATA + args.set)
    params["ner"]["data"].update(source={"train": str(train), "val": str(dev), "test": str(dev)}, format="conll")
    started = time.time()
    run_in_scratch(params, "ner", ("collect", "validate", "split", "augment", "train", "evaluate"), "bench-conll-")
    from pipeline.paths import PipelinePaths
    from pipeline.records import load_json

    scores = load_json(PipelinePaths("ner").metrics)["val"]
    result = {
        "data": "conll2003/eng.train -> eng.testa",
        "dev_f1": round(scores["f1"], 4),
        "dev_precision": round(scores["precision"], 4),
        "dev_recall": round(scores["recall"], 4),
        "dev_per_type_f1": {kind: round(v["f1"], 4) for kind, v in scores["per_type"].items()},
        "crf": params["ner"]["model"]["crf"],
        "case_marker": params["ner"]["model"]["case_marker"],
        **run_facts(params, "ner", args.set, started),
        "target": TARGET,
    }
    write_result("ner_conll", args.set, result)


if __name__ == "__main__":
    main()
