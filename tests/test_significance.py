"""The paired test before promotion (pipeline/significance.py, register.judge) on hand-made predictions:
no model, no store, milliseconds each."""

from __future__ import annotations

import dataclasses
import random
import time
from pathlib import Path

import numpy as np
import pytest

from pipeline.params import PromotionConfig
from pipeline.significance import paired_bootstrap
from pipeline.stages.register import decide, judge
from pipeline.tasks import get_task, load_params
from tests.conftest import LABELS, ROOT

PARAMS = load_params(ROOT / "params.yaml")
PROMOTION = PromotionConfig()  # the defaults: paired_bootstrap, 95%, 1000 resamples, min_delta 0
WORDS = "the company said operating profit rose to a record in the third quarter while sales fell".split()


def task(name: str):
    return get_task(name, PARAMS.pipeline(name))


def labelled(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    return [{"label": rng.choice(LABELS)} for _ in range(n)]


def guesses(gold: list[dict], accuracy: float, seed: int) -> list[dict]:
    """Predictions right with probability `accuracy`, otherwise a random label."""
    rng = random.Random(seed)
    return [{"label": g["label"] if rng.random() < accuracy else rng.choice(LABELS)} for g in gold]


def tagged(n: int, seed: int = 0) -> list[dict]:
    """Sentences of 8 words with PER and LOC entities in IOB2."""
    rng = random.Random(seed)
    sentences = []
    for _ in range(n):
        tags = []
        while len(tags) < 8:
            tags += rng.choice([["O"], ["O"], ["B-PER", "I-PER"], ["B-LOC"]])
        sentences.append({"tags": tags[:8]})
    return sentences


def tag_guesses(gold: list[dict], accuracy: float, seed: int) -> list[dict]:
    """Each sentence's tags kept with probability `accuracy`, otherwise one entity dropped or invented."""
    rng = random.Random(seed)
    predicted = []
    for sentence in gold:
        tags = list(sentence["tags"])
        if rng.random() > accuracy:
            i = rng.randrange(len(tags))
            tags[i] = "O" if tags[i] != "O" else "B-LOC"
        predicted.append({"tags": tags})
    return predicted


def sentences(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    return [{"translation": " ".join(rng.choices(WORDS, k=rng.randint(6, 14))).capitalize() + "."} for _ in range(n)]


def translation_guesses(gold: list[dict], accuracy: float, seed: int) -> list[dict]:
    """Each reference word kept with probability `accuracy`, otherwise replaced."""
    rng = random.Random(seed)
    return [{"translation": " ".join(w if rng.random() < accuracy else rng.choice(WORDS) for w in g["translation"].split())}
            for g in gold]


# the statistics give the task's own metric --------------------------------------------------------
@pytest.mark.parametrize("name, gold, guess", [
    ("sentiment", labelled(300), guesses),
    ("ner", tagged(300), tag_guesses),
    ("translation", sentences(300), translation_guesses),
])
def test_summed_statistics_give_the_tasks_metric(name, gold, guess):
    t = task(name)
    predictions = guess(gold, 0.7, seed=1)
    statistics = t.metric_statistics(gold, predictions)
    assert statistics.shape[0] == len(gold)
    assert t.metric_from_statistics(statistics.sum(axis=0, keepdims=True))[0] == pytest.approx(
        t.metrics(gold, predictions)[t.primary_metric], abs=1e-12)


def test_macro_f1_counts_a_label_never_seen_nor_predicted_as_zero():
    t = task("sentiment")
    gold = [{"label": "negative"}, {"label": "positive"}, {"label": "positive"}]
    predictions = [{"label": "negative"}, {"label": "positive"}, {"label": "negative"}]  # no neutral anywhere
    statistics = t.metric_statistics(gold, predictions)
    assert t.metric_from_statistics(statistics.sum(axis=0, keepdims=True))[0] == pytest.approx(t.metrics(gold, predictions)["f1_macro"])


def test_lowercased_bleu_from_statistics_matches_sacrebleu():
    config = PARAMS.pipeline("translation")
    t = get_task("translation", dataclasses.replace(config, model=dataclasses.replace(config.model, lowercase_bleu=True)))
    gold = sentences(50)
    predictions = [{"translation": p["translation"].upper()} for p in translation_guesses(gold, 0.8, seed=2)]
    statistics = t.metric_statistics(gold, predictions)
    assert t.metric_from_statistics(statistics.sum(axis=0, keepdims=True))[0] == pytest.approx(t.metrics(gold, predictions)["bleu"], abs=1e-12)
    assert t.metrics(gold, predictions)["bleu"] > 10  # lowercased, the upper-cased guesses still match


# the decision ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, gold, guess", [
    ("sentiment", labelled(1000), guesses),
    ("ner", tagged(1000), tag_guesses),
    ("translation", sentences(300), translation_guesses),  # fewer: sacreBLEU's tokenising is the slow part
])
def test_identical_predictions_are_never_promoted_and_a_large_gain_is(name, gold, guess):
    t = task(name)
    champion = guess(gold, 0.6, seed=1)
    same = judge(t, PROMOTION, gold, champion, champion)
    assert not same.promote and same.delta == 0 and (same.test.low, same.test.high, same.test.p_value) == (0, 0, 1)

    better = judge(t, PROMOTION, gold, guess(gold, 0.9, seed=2), champion)
    assert better.promote and better.test.low > 0 and better.test.p_value == 0
    assert "the whole interval are above min_delta" in better.reason


def test_a_small_gain_on_few_changed_examples_is_noise():
    t = task("sentiment")
    gold = labelled(1000)
    champion = guesses(gold, 0.7, seed=1)
    wrong = [i for i, (g, p) in enumerate(zip(gold, champion)) if g != p]
    challenger = [dict(p) for p in champion]
    for i in wrong[:4]:  # four more right answers out of 1,000
        challenger[i] = dict(gold[i])
    verdict = judge(t, PROMOTION, gold, challenger, champion)
    assert verdict.delta > 0 and not verdict.promote
    assert verdict.test.low <= 0 < verdict.test.high and "the gain may be noise" in verdict.reason
    assert judge(t, dataclasses.replace(PROMOTION, test="none"), gold, challenger, champion).promote  # the bare rule would


def test_the_interval_must_clear_min_delta_not_only_zero():
    t = task("sentiment")
    gold = labelled(1000)
    champion, challenger = guesses(gold, 0.6, seed=1), guesses(gold, 0.9, seed=2)
    gain = judge(t, PROMOTION, gold, challenger, champion)
    assert gain.promote
    just_below = dataclasses.replace(PROMOTION, min_delta=round(gain.delta - 0.01, 4))  # the gain beats it; the interval does not
    assert not judge(t, just_below, gold, challenger, champion).promote


def test_each_origins_scores_are_reported_when_validation_holds_drop_folder_examples():
    t = task("sentiment")
    gold = [{**example, "source": str(Path(t.config.data.incoming) / "round-1.csv") if i % 10 == 0 else "data/fpb.txt"}
            for i, example in enumerate(labelled(1000))]
    champion = guesses(gold, 0.7, seed=1)
    challenger = [dict(g) if g["source"] != "data/fpb.txt" else p for g, p in zip(gold, champion)]  # learned the new data only
    verdict = judge(t, PROMOTION, gold, challenger, champion)
    new, old = verdict.by_origin["incoming"], verdict.by_origin["source"]
    assert (new["examples"], old["examples"]) == (100, 900)
    assert new["challenger"] == 1.0 > new["champion"] and old["challenger"] == old["champion"]
    assert f"incoming (100 examples) 1.0000 vs {new['champion']:.4f}" in verdict.reason
    assert judge(t, PROMOTION, labelled(100), labelled(100), labelled(100)).by_origin is None  # one origin: nothing to split


def test_a_class_never_predicted_is_named_in_the_metrics_and_the_promotion_reason():
    t = task("sentiment")
    gold = labelled(300)
    collapsed = [{"label": "neutral" if g["label"] == "negative" else g["label"]} for g in gold]  # negative never predicted
    assert t.metrics(gold, collapsed)["never_predicted"] == ["negative"]
    verdict = judge(t, PROMOTION, gold, collapsed, guesses(gold, 0.7, seed=1))
    assert verdict.never_predicted == ["negative"] and not verdict.promote
    assert "the challenger never predicts negative, which validation holds" in verdict.reason
    assert t.metrics(gold, gold)["never_predicted"] == []
    no_negatives = [g for g in gold if g["label"] != "negative"]  # a class the examples lack is not reported
    assert t.metrics(no_negatives, no_negatives)["never_predicted"] == []


def test_an_entity_type_never_predicted_is_named_in_the_metrics():
    t = task("ner")
    gold = tagged(100)
    no_locations = [{"tags": ["O" if tag.endswith("-LOC") else tag for tag in g["tags"]]} for g in gold]
    assert t.metrics(gold, no_locations)["never_predicted"] == ["LOC"]  # ORG and MISC: not in the examples
    assert t.metrics(gold, gold)["never_predicted"] == []


def test_the_bootstrap_is_deterministic_for_a_seed():
    t = task("sentiment")
    gold = labelled(500)
    a, b = (t.metric_statistics(gold, guesses(gold, accuracy, seed)) for accuracy, seed in ((0.7, 1), (0.72, 2)))

    def run(seed: int):
        return paired_bootstrap(a, b, t.metric_from_statistics, 0.0, 0.95, 1000, seed)
    assert run(13) == run(13)
    assert run(13) != run(14)


def test_1000_resamples_of_1000_examples_take_well_under_5_seconds():
    t = task("sentiment")
    gold = labelled(1000)
    started = time.perf_counter()
    judge(t, PROMOTION, gold, guesses(gold, 0.8, seed=1), guesses(gold, 0.8, seed=2))
    assert time.perf_counter() - started < 5


def test_models_scored_on_different_examples_are_refused():
    with pytest.raises(ValueError, match="different examples"):
        paired_bootstrap(np.ones((10, 9)), np.ones((11, 9)), lambda totals: totals[:, 0], 0.0, 0.95, 100, 0)


@pytest.mark.parametrize(
    "challenger, champion, min_delta, promoted",
    [(0.80, None, 0.0, True), (0.81, 0.80, 0.0, True), (0.80, 0.80, 0.0, False),
     (0.79, 0.80, 0.0, False), (0.805, 0.80, 0.01, False), (0.82, 0.80, 0.01, True)],
)
def test_decision_rule_without_the_test(challenger, champion, min_delta, promoted):
    promotion = PromotionConfig(min_delta=min_delta, test="none")
    assert decide(challenger, champion, promotion, "f1_macro")[0] is promoted


def test_min_score_keeps_a_broken_first_model_from_becoming_champion():
    promotion = PromotionConfig(min_score=0.5)
    promote, reason = decide(0.21, None, promotion, "f1_macro")
    assert not promote and "below min_score 0.5" in reason
    assert decide(0.61, None, promotion, "f1_macro")[0]
    assert decide(0.21, None, PromotionConfig(), "f1_macro")[0]  # no min_score: the first model always wins
