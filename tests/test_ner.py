"""The NER task: CoNLL reading, IOB checks, sub-word alignment, windows, CRF decoding, seqeval
figures, tag-preserving augmentation, and the stages end to end with a tiny model."""

import json
import random
from pathlib import Path

import pytest
import torch

from pipeline.cli import main
from pipeline.errors import ConfigError, DataError, ValidationError
from pipeline.paths import PipelinePaths
from pipeline.readers import read_file
from pipeline.records import load_json, load_records
from pipeline.stages import run_stage
from pipeline.tasks import get_task, load_params
from pipeline.tasks.token_classification import word_windows, words_with_spans
from pipeline.techniques.crf import constrained_viterbi
from tests.conftest import SHARED_DATA, write_params
from tests.ner_data import make_sentences, ner_params, write_conll

PATHS = PipelinePaths("ner")
PARAMS = Path("params.yaml")
TAGS = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]


@pytest.fixture
def ner_workspace(tmp_path, monkeypatch, tiny_model) -> Path:
    monkeypatch.chdir(tmp_path)
    write_conll(tmp_path / "data" / "ner.conll", make_sentences(250))
    write_params(tmp_path, ner_params(tiny_model))
    return tmp_path


def ner_task(tiny_model, **sections):
    return get_task("ner", load_params(write_params(Path.cwd(), ner_params(tiny_model, **sections))).pipeline("ner"))


def tokenizer_of(model: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model)


# data ---------------------------------------------------------------------------------------
def test_conll_reader_keeps_documents_and_first_token_lines(tmp_path):
    path = tmp_path / "news.conll"
    path.write_text(
        "-DOCSTART- -X- -X- O\n\nEU NNP B-NP B-ORG\nrejects VBZ B-VP O\n\nPeter NNP B-NP B-PER\n\n"
        "-DOCSTART- -X- -X- O\n\nBRUSSELS NNP B-NP B-LOC\n",
        encoding="utf-8",
    )
    records = read_file(path, "conll", "utf-8")
    assert [r["tokens"] for r in records] == [["EU", "rejects"], ["Peter"], ["BRUSSELS"]]
    assert [r["tags"] for r in records] == [["B-ORG", "O"], ["B-PER"], ["B-LOC"]]
    assert [r["row"] for r in records] == [3, 6, 10]
    assert records[0]["document"] == records[1]["document"] != records[2]["document"]

    path.write_text("EU B-ORG\nrejects\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"news.conll: line 2: expected 'TOKEN \.\.\. TAG'"):
        read_file(path, "conll", "utf-8")


def test_invalid_iob_is_repaired_or_quarantined_with_its_reason(tmp_path, monkeypatch, tiny_model):
    monkeypatch.chdir(tmp_path)
    good = [{"tokens": t, "tags": g} for t, g in make_sentences(60)]
    bad = [
        {"tokens": ["shares", "of", "Norvik", "Bank", "fell"], "tags": ["O", "O", "I-ORG", "I-ORG", "O"]},
        {"tokens": ["Siemens", "rose"], "tags": ["B-ORG"]},
        {"tokens": [], "tags": []},
        {"tokens": ["Oslo", "trading"], "tags": ["B-CITY", "O"]},
    ]
    source = tmp_path / "data" / "ner.jsonl"
    source.parent.mkdir()
    source.write_text("\n".join(json.dumps(r) for r in good + bad), encoding="utf-8")
    data = {"source": "data/ner.jsonl", "format": "jsonl"}

    write_params(tmp_path, ner_params(tiny_model, data=data, validate={"invalid_iob": "repair"}))
    for stage in ("collect", "validate"):
        run_stage(stage, "ner", PARAMS)
    repaired = [r for r in load_records(PATHS.clean) if r["tokens"][:3] == ["shares", "of", "Norvik"]]
    assert repaired[0]["tags"] == ["O", "O", "B-ORG", "I-ORG", "O"]
    reasons = [r["reason"] for r in load_records(PATHS.quarantine)]
    assert reasons == [
        "2 tokens but 1 tags",
        "n_tokens 0 outside 1..1000",
        "tag 1 'B-CITY' is not one of O, B-/I-/S-/E- of PER, ORG, LOC, MISC (map other entity types with ner.validate.label_map)",
    ]

    write_params(tmp_path, ner_params(tiny_model, data=data, validate={"invalid_iob": "reject"}))
    run_stage("validate", "ner", PARAMS)
    quarantined = load_records(PATHS.quarantine)
    assert quarantined[0]["row"] == 61 and quarantined[0]["source"] == "data/ner.jsonl"
    assert quarantined[0]["reason"] == "tag 3 'I-ORG' follows O (invalid IOB2; validate.invalid_iob: repair fixes it)"

    write_params(tmp_path, ner_params(tiny_model, data=data, validate={"min_mentions_per_type": 1000}))
    with pytest.raises(ValidationError, match="entity type 'PER' has .* mentions .* fewer than ner.validate.min_mentions_per_type=1000"):
        run_stage("validate", "ner", PARAMS)


def test_invalid_iob_setting_is_checked(tmp_path, monkeypatch, tiny_model):
    monkeypatch.chdir(tmp_path)
    write_params(tmp_path, ner_params(tiny_model, validate={"invalid_iob": "fix"}))
    with pytest.raises(ConfigError, match="'ner.validate.invalid_iob' must be one of repair, reject, got 'fix'"):
        load_params(PARAMS)


def test_a_document_never_straddles_splits(ner_workspace):
    for stage in ("collect", "validate", "split"):
        run_stage(stage, "ner", PARAMS)
    split_of = {}
    for split in ("train", "val", "test"):
        for example in load_records(PATHS.split(split)):
            assert split_of.setdefault(example["document"], split) == split
    assert len(set(split_of.values())) == 3


def test_augmentation_keeps_tokens_and_tags_aligned(tmp_path, monkeypatch, tiny_model):
    monkeypatch.chdir(tmp_path)
    task = ner_task(tiny_model)
    train = [{"tokens": t, "tags": g} for t, g in make_sentences(50)]
    task.prepare_augmentation(train)
    rng = random.Random(0)
    example = {"tokens": ["Anna", "Berg", "left", "Siemens", "shares", "rose"], "tags": ["B-PER", "I-PER", "O", "B-ORG", "O", "O"]}
    for _ in range(20):
        variant = task.augment(example, "mention", 0.3, rng)
        assert len(variant["tokens"]) == len(variant["tags"])
        kinds = [(kind, " ".join(variant["tokens"][s:e])) for kind, s, e in _entities(variant["tags"])]
        assert [k for k, _ in kinds] == ["PER", "ORG"]
        for kind, name in kinds:
            assert tuple(name.split()) in task.mentions[kind] or name in ("Anna Berg", "Siemens")
        synonym = task.augment(example, "synonym", 0.5, rng)
        assert synonym["tags"] == example["tags"]
        assert [synonym["tokens"][i] for i in (0, 1, 3)] == ["Anna", "Berg", "Siemens"], "entities are never edited"
    assert task.augment(example, "synonym", 0.5, random.Random(1))["tokens"][5] != "rose"


def _entities(tags):
    from pipeline.tasks.token_classification import entities

    return entities(tags)


def test_raw_text_is_split_into_words_as_in_conll():
    text = "U.S. stocks rose 1,200 points after AT&T 's results ; Norvik-Halden fell 3.5 %."
    words, spans = words_with_spans(text)
    assert words == ["U.S.", "stocks", "rose", "1,200", "points", "after", "AT&T", "'s", "results", ";",
                     "Norvik-Halden", "fell", "3.5", "%", "."]
    assert [text[a:b] for a, b in spans] == words


# model --------------------------------------------------------------------------------------
def test_first_subtoken_of_each_word_carries_its_label(tmp_path, monkeypatch, tiny_model):
    monkeypatch.chdir(tmp_path)
    task = ner_task(tiny_model)
    tokenizer = tokenizer_of(tiny_model)
    example = {"tokens": ["Norvikbank", "restructured", "in", "Oslo"], "tags": ["B-ORG", "O", "O", "B-LOC"]}
    (feature,) = task.encode(tokenizer, [example])
    pieces = tokenizer.convert_ids_to_tokens(feature["input_ids"])
    labelled = [(piece, TAGS[label]) for piece, label in zip(pieces, feature["labels"]) if label != -100]
    assert labelled == [("nor", "B-ORG"), ("rest", "O"), ("in", "O"), ("oslo", "B-LOC")]
    assert pieces[:7] == ["[CLS]", "nor", "##vik", "##bank", "rest", "##ructured", "in"]
    assert feature["labels"][:7] == [-100, 3, -100, -100, 0, -100, 0]


def test_case_marker_shows_capitals_to_an_uncased_model(tmp_path, monkeypatch, tiny_model):
    monkeypatch.chdir(tmp_path)
    task = ner_task(tiny_model, model={"case_marker": True})
    tokenizer = tokenizer_of(tiny_model)
    (feature,) = task.encode(tokenizer, [{"tokens": ["Apple", "apple", "in", "Oslo"], "tags": ["B-ORG", "O", "O", "B-LOC"]}])
    pieces = tokenizer.convert_ids_to_tokens(feature["input_ids"])
    assert pieces == ["[CLS]", "apple", "^", "apple", "in", "oslo", "^", "[SEP]"]
    assert feature["labels"] == [-100, 3, -100, 0, 0, 5, -100, -100], "the mark is a sub-token: never labelled"

    model, _ = task.load_model(str(tiny_model))
    exported = task.export_model(task.training_model(model))
    assert exported.config.case_marker == "^", "prediction reads the mark from the saved config"
    (prediction,) = task.predict(exported, tokenizer, [{"text": "Apple rose in Oslo"}])
    assert len(prediction["tags"]) == 4


def test_long_sentences_are_split_into_windows_not_truncated(tmp_path, monkeypatch, tiny_model):
    monkeypatch.chdir(tmp_path)
    assert word_windows([1, 2, 1, 3, 1], limit=3) == [(0, 2), (2, 3), (3, 4), (4, 5)]
    assert word_windows([5], limit=3) == [(0, 1)], "a word longer than a window still gets one"

    task = ner_task(tiny_model, train={"max_length": 16})
    tokenizer = tokenizer_of(tiny_model)
    words = ("Norvik Bank said on Monday that its profit rose in Oslo and in Hong Kong " * 3).split()
    tags = (["B-ORG", "I-ORG"] + ["O"] * 8 + ["B-LOC", "O", "O", "B-LOC", "I-LOC"]) * 3
    features = task.encode(tokenizer, [{"tokens": words, "tags": tags}])
    assert len(features) > 3 and all(len(f["input_ids"]) <= 16 for f in features)
    assert sum(label != -100 for f in features for label in f["labels"]) == len(words) == 45

    model, _ = task.load_model(str(tiny_model))
    (prediction,) = task.predict(model, tokenizer, [{"tokens": words}])
    assert len(prediction["tags"]) == len(words)
    assert 0 < prediction["score"] <= 1, "the sentence's confidence: its words' mean tag probability"
    assert prediction["entities"] and all(0 < entity["score"] <= 1 for entity in prediction["entities"])


def test_crf_decoding_forbids_what_argmax_would_output():
    # Argmax: O then I-PER, an entity that starts with I-. The constrained path must start it with B-.
    emissions = torch.tensor([[[5.0, 0, 0, 0, 0, 0, 0, 0, 0], [0, 0.9, 1.0, 0, 0, 0, 0, 0, 0], [0, 0, 1.0, 0, 0, 0, 0, 0, 0]]])
    mask = torch.tensor([[True, True, True]])
    flat = {"transitions": [[0.0] * 9] * 9, "start": [0.0] * 9, "end": [0.0] * 9}
    assert [TAGS[i] for i in emissions[0].argmax(-1)] == ["O", "I-PER", "I-PER"]
    (path,) = constrained_viterbi(emissions, mask, flat, TAGS)
    assert [TAGS[i] for i in path] == ["O", "B-PER", "I-PER"]

    # Learned transitions count too: a strong O -> B-ORG transition beats a slightly better B-PER.
    emissions = torch.tensor([[[5.0, 0, 0, 0, 0, 0, 0, 0, 0], [0, 1.2, 0, 1.0, 0, 0, 0, 0, 0]]])
    transitions = [[0.0] * 9 for _ in range(9)]
    transitions[0][3] = 1.0
    (path,) = constrained_viterbi(emissions, torch.tensor([[True, True]]), {**flat, "transitions": transitions}, TAGS)
    assert [TAGS[i] for i in path] == ["O", "B-ORG"]

    # Shorter sequences in a batch are decoded to their own length.
    batch = torch.cat([emissions, emissions])
    paths = constrained_viterbi(batch, torch.tensor([[True, True], [True, False]]), flat, TAGS)
    assert [len(p) for p in paths] == [2, 1]


def test_seqeval_figures_on_a_known_example(tmp_path, monkeypatch, tiny_model):
    monkeypatch.chdir(tmp_path)
    task = ner_task(tiny_model)
    gold = [["B-PER", "I-PER", "O", "B-ORG"], ["B-LOC", "O", "B-MISC"]]
    predicted = [["B-PER", "I-PER", "O", "B-LOC"], ["B-LOC", "O", "O"]]
    metrics = task.metrics([{"tags": g} for g in gold], [{"tags": p} for p in predicted])
    # 4 gold entities, 3 predicted, 2 right (PER, the second LOC): P 2/3, R 2/4.
    assert metrics["precision"] == pytest.approx(2 / 3)
    assert metrics["recall"] == pytest.approx(0.5)
    assert metrics["f1"] == pytest.approx(2 * (2 / 3) * 0.5 / (2 / 3 + 0.5))
    assert metrics["per_type"]["PER"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1}
    assert metrics["per_type"]["ORG"]["recall"] == 0.0 and metrics["per_type"]["LOC"]["precision"] == 0.5


# stages end to end ----------------------------------------------------------------------------
@pytest.mark.model
def test_ner_stages_with_crf_train_register_and_predict_spans(ner_workspace, tiny_model, capsys):
    write_params(ner_workspace, ner_params(tiny_model, model={"crf": True}))
    for stage in ("collect", "validate", "split", "augment", "train", "evaluate", "register"):
        run_stage(stage, "ner", PARAMS)
    config = load_json(PATHS.model_dir / "config.json")
    assert set(config["crf"]) == {"transitions", "start", "end"}, "the CRF travels in the model's config"
    metrics = load_json(PATHS.metrics)
    assert {"f1", "precision", "recall", "per_type"} <= metrics["test"].keys()
    assert metrics["val"]["f1"] > 0.8, "the tiny data is easy: the model should learn it"
    assert load_json(PATHS.promotion)["promoted"]
    assert {p["actual"] for p in load_json(PATHS.evaluation / "confusion_val.json")} <= {"PER", "ORG", "LOC", "MISC", "none"}
    synthetic = [r for r in load_records(PATHS.augmented_train) if r.get("synthetic")]
    assert {r["augmentation"] for r in synthetic} == {"mention", "synonym"}

    capsys.readouterr()
    text = "Maria Rossi , chief executive of Kestrel Motors , said in Milan on Monday ."
    assert main(["predict", "--pipeline", "ner", text]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == text
    found = {tuple(line.split("\t")) for line in lines[1:]}
    assert ("  ORG", "33-47", "Kestrel Motors") in found, lines
    for kind, span, name in found:
        start, end = map(int, span.split("-"))
        assert text[start:end] == name


@pytest.mark.skipif(not (SHARED_DATA / "conll2003" / "eng.testa").exists(), reason="shared CoNLL-2003 data not present")
def test_reads_the_real_conll_2003_dev_set():
    records = read_file(SHARED_DATA / "conll2003" / "eng.testa", "conll", "utf-8")
    assert len(records) == 3250
    assert len({r["document"] for r in records}) == 216
    assert all(len(r["tokens"]) == len(r["tags"]) for r in records)
