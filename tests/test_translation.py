"""Translation: parallel data in, checked and split; sacreBLEU scores; generation settings; back-translation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sacrebleu

from pipeline.errors import ConfigError, DataError
from pipeline.params import build_section
from pipeline.paths import PipelinePaths
from pipeline.records import load_json, load_records, save_records
from pipeline.seq2seq import detokenize
from pipeline.stages import augment, run_stage
from pipeline.tasks import get_task
from pipeline.tasks.translation import TranslationConfig, corpus_scores
from tests.conftest import ROOT, tiny_params, write_params

PATHS = PipelinePaths("translation")
SAMPLE = ROOT / "data" / "sample" / "translation"


def translation_section(base_model: Path | str, source: str = "data/pairs", **sections) -> dict:
    """A params.yaml `translation:` section for fast tests with the tiny model."""
    section = {
        "data": {"source": source, "format": "parallel"},
        "languages": {"source": "de", "target": "en"},
        "validate": {"min_pairs": 5, "max_reject_fraction": 0.3},
        "split": {"val": 0.2, "test": 0.2},
        "augment": {"copies": 0, "methods": []},
        "model": {"name": str(base_model), "num_beams": 2, "max_new_tokens": 16},
        "pretrain": {"enabled": False},
        "train": {"epochs": 3, "learning_rate": 1.0e-3, "batch_size": 16, "max_length": 32,
                  "warmup": 0.0, "early_stopping_patience": 2, "seed": 1},
        "promotion": {"min_delta": 0.0},
        "registry": {"name": "translation"},
    }
    for name, values in sections.items():
        section[name] = {**section[name], **values}
    return section


def task_for(base_model: Path | str = "unused", **sections):
    config = build_section(TranslationConfig, translation_section(base_model, **sections), "translation")
    return get_task("translation", config)


def run_data_stages(section: dict) -> dict:
    """collect and validate with `section` as translation's params, as `finetune stage` runs them; the validation report."""
    write_params(Path("."), {"pipelines": ["translation"], "tracking": {"experiment": "test"}, "translation": section})
    for stage in ("collect", "validate"):
        run_stage(stage, "translation", Path("params.yaml"))
    return load_json(PATHS.validation_report)


def write_pair(prefix: Path, german: list[str], english: list[str]) -> Path:
    prefix.parent.mkdir(parents=True, exist_ok=True)
    prefix.with_name(prefix.name + ".de").write_text("\n".join(german) + "\n", encoding="utf-8")
    prefix.with_name(prefix.name + ".en").write_text("\n".join(english) + "\n", encoding="utf-8")
    return prefix


def sample_lines() -> tuple[list[str], list[str]]:
    return (
        SAMPLE.with_suffix(".de").read_text(encoding="utf-8").splitlines(),
        SAMPLE.with_suffix(".en").read_text(encoding="utf-8").splitlines(),
    )


# data ---------------------------------------------------------------------------------------
def test_parallel_files_are_read_line_by_line_with_their_row(tmp_path):
    prefix = write_pair(tmp_path / "pairs", ["Der Hund bellt.", "Die Bank schloss."], ["The dog barks.", "The bank closed."])
    task = task_for()
    examples = [task.to_example(r) for r in task.read_source(str(prefix))]
    assert [(e["text"], e["translation"], e["row"]) for e in examples] == [
        ("Der Hund bellt.", "The dog barks.", 1), ("Die Bank schloss.", "The bank closed.", 2)
    ]
    assert examples[0]["source"].endswith("pairs.de")


def test_files_of_different_length_stop_the_run_and_say_where_they_diverge(tmp_path):
    german, english = sample_lines()
    german, english = german[:60], english[:60]
    del english[23]  # line 24 of the English file went missing
    prefix = write_pair(tmp_path / "pairs", german, english)
    with pytest.raises(DataError) as error:
        task_for().read_source(str(prefix))
    message = str(error.value)
    assert "pairs.de has 60 lines but" in message and "pairs.en has 59" in message
    assert "diverge at line 24" in message


def test_a_missing_side_names_the_file_it_looked_for(tmp_path):
    (tmp_path / "pairs.de").write_text("Hallo.\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"pairs\.en: no such file"):
        task_for().read_source(str(tmp_path / "pairs"))


def test_tsv_and_jsonl_name_their_columns_by_language(tmp_path):
    (tmp_path / "pairs.tsv").write_text("de\ten\nGuten Tag.\tGood day.\n", encoding="utf-8")
    (tmp_path / "pairs.jsonl").write_text(json.dumps({"de": "Danke.", "en": "Thanks."}) + "\n", encoding="utf-8")
    tsv = task_for(data={"format": "tsv"})
    assert tsv.to_example(tsv.read_source(str(tmp_path / "pairs.tsv"))[0])["translation"] == "Good day."
    jsonl = task_for(data={"format": "jsonl"})
    assert jsonl.to_example(jsonl.read_source(str(tmp_path / "pairs.jsonl"))[0])["text"] == "Danke."
    (tmp_path / "wrong.jsonl").write_text(json.dumps({"src": "Danke.", "tgt": "Thanks."}) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"wrong\.jsonl: row 1: missing column\(s\) de, en"):
        jsonl.to_example(jsonl.read_source(str(tmp_path / "wrong.jsonl"))[0])


def test_empty_sides_extreme_length_ratios_and_duplicates_are_quarantined(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    german, english = sample_lines()
    german, english = german[:40], english[:40]
    german[4] = ""  # an empty source line keeps the files aligned
    english[9] = "Yes."  # one word against many
    german += [german[0], german[0].replace(" ", "  ")]
    english += [english[0], english[0].upper()]  # the same pair again, exactly and then as a near copy
    write_pair(tmp_path / "data" / "pairs", german, english)
    report = run_data_stages(translation_section("unused"))
    reasons = {row["row"]: row["reason"] for row in load_records(PATHS.quarantine)}
    assert "text length outside 1..500 characters" in reasons[5]
    assert "length_ratio" in reasons[10] and "outside 1..3" in reasons[10]
    assert load_json(PATHS.provenance)["exact_duplicates_dropped"] == 1  # line 41
    assert reasons[42].startswith("duplicate of") and "row 1" in reasons[42]
    assert report["clean"] == 38


# metrics and decoding -----------------------------------------------------------------------
def test_bleu_and_chrf_agree_with_sacrebleu_and_carry_their_signatures():
    references = ["The dog bit the man.", "It was not unexpected.", "The man bit him first."]
    hypotheses = ["The dog bit the man.", "It wasn't surprising.", "The man had just bitten him."]
    scores = corpus_scores(hypotheses, references, lowercase=False)
    assert scores["bleu"] == pytest.approx(sacrebleu.corpus_bleu(hypotheses, [references]).score)
    assert scores["chrf"] == pytest.approx(sacrebleu.corpus_chrf(hypotheses, [references]).score)
    assert scores["bleu"] == pytest.approx(45.0675, abs=1e-3) and scores["chrf"] == pytest.approx(50.0431, abs=1e-3)
    assert scores["signature"]["bleu"].startswith("nrefs:1|case:mixed|eff:no|tok:13a")
    lowercased = corpus_scores([h.upper() for h in hypotheses], references, lowercase=True)
    assert lowercased["bleu"] == pytest.approx(scores["bleu"]) and "case:lc" in lowercased["signature"]["bleu"]


def test_wordpiece_spacing_is_undone_before_scoring():
    assert detokenize("a woman ' s red t - shirt , isn ' t it ?") == "a woman's red t-shirt , isn't it ?"


def test_generation_settings_from_params_are_honoured(tiny_model):
    task = task_for(tiny_model, model={"name": str(tiny_model), "num_beams": 3, "max_new_tokens": 2})
    model, tokenizer = task.load_model(str(tiny_model))
    assert model.generation_config.num_beams == 3 and model.generation_config.max_new_tokens == 2
    assert model.generation_config.decoder_start_token_id == tokenizer.cls_token_id
    predictions = task.predict(model, tokenizer, [{"text": "Die Bank meldete einen Verlust."}, {"text": "Danke."}])
    for prediction in predictions:  # two word pieces at most, so two words at most, however untrained the model
        assert len(prediction["translation"].split()) <= 2, prediction  # (not re-tokenised: "[unused695]" is one piece, five again)


# back-translation ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_translator(tiny_model, tmp_path_factory) -> Path:
    """An untrained tiny encoder-decoder saved as a translation model that always says a few words."""
    task = task_for(tiny_model)
    model, tokenizer = task.load_model(str(tiny_model))
    model.generation_config.min_new_tokens, model.generation_config.max_new_tokens = 3, 5
    model.generation_config.num_beams = 1
    path = tmp_path_factory.mktemp("tiny-translator")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.mark.model
def test_back_translation_adds_one_marked_paraphrase_per_training_row(tiny_model, tiny_translator, tmp_path, monkeypatch):
    from pipeline.tasks import load_params

    monkeypatch.chdir(tmp_path)
    params = tiny_params(tiny_model)
    params["sentiment"]["augment"] = {
        "copies": 1, "methods": ["swap", "back_translation"], "seed": 1,
        "back_translation": {"to_pivot": str(tiny_translator), "from_pivot": str(tiny_translator)},
    }
    write_params(tmp_path, params)
    params = load_params()
    config = params.pipeline("sentiment")
    paths = PipelinePaths("sentiment")
    train = [{"text": f"Profit rose {n} percent.", "label": "positive", "source": "x.csv", "row": n} for n in range(6)]
    save_records(paths.split("train"), train)

    added = augment.run(get_task("sentiment", config), params, paths)
    rows = load_records(paths.augmented_train)
    back = [r for r in rows if r.get("augmentation") == "back_translation"]
    assert len(back) == len(train) and added == len(rows) - len(train)
    assert all(r["synthetic"] and r["pivot"] and r["label"] == "positive" for r in back)
    assert {r["row"] for r in back} == {r["row"] for r in train}  # each paraphrase points at its original


def test_back_translation_without_models_is_a_clear_error(tiny_model):
    with pytest.raises(ConfigError, match="'translation.augment.methods' names back_translation but augment.back_translation is not set"):
        task_for(tiny_model, augment={"methods": ["back_translation"]})


def test_the_bundled_sample_is_aligned_and_clean(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    report = run_data_stages(translation_section("unused", str(SAMPLE)))
    assert report["rows"] == 400 and report["quarantined"] == 0
    assert load_json(PATHS.provenance)["files"] == [str(SAMPLE.with_suffix(".de"))]
