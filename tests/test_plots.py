"""Confusion matrices: a few labels with counts in the cells, 77 labels still readable, and the
most frequent confusions the metrics list."""

import random
from pathlib import Path

from PIL import Image

from pipeline.plots import confusion_counts, confusion_matrix_png
from pipeline.tasks.text_classification import top_confusions


def test_top_confusions_are_the_most_frequent_mistakes_first():
    actual = ["a", "a", "a", "a", "b", "b", "b", "c", "c", "c"]
    predicted = ["a", "b", "b", "c", "a", "b", "c", "b", "a", "b"]
    assert top_confusions(actual, predicted) == [
        {"actual": "a", "predicted": "b", "count": 2},
        {"actual": "c", "predicted": "b", "count": 2},
        {"actual": "a", "predicted": "c", "count": 1},  # ties by name
        {"actual": "b", "predicted": "a", "count": 1},
        {"actual": "b", "predicted": "c", "count": 1},
        {"actual": "c", "predicted": "a", "count": 1},
    ]
    assert top_confusions(actual, predicted, k=1) == [{"actual": "a", "predicted": "b", "count": 2}]
    assert top_confusions(["a", "b"], ["a", "b"]) == [], "no mistakes, nothing listed"


def test_confusion_counts_rows_are_actual_labels():
    assert confusion_counts(["a", "a", "b", "x"], ["b", "a", "b", "a"], ["a", "b"]) == [[1, 1], [0, 1]]


def test_a_77_label_matrix_is_written_larger_than_a_3_label_one(tmp_path):
    rng = random.Random(0)
    labels = [f"intent_with_a_long_name_{i}" for i in range(77)]
    actual = [rng.choice(labels) for _ in range(2000)]
    predicted = [a if rng.random() < 0.8 else rng.choice(labels) for a in actual]
    large, small = tmp_path / "large.png", tmp_path / "small.png"
    confusion_matrix_png(actual, predicted, labels, large, "77 intents", top_confusions(actual, predicted))
    few = ["negative", "neutral", "positive"]
    confusion_matrix_png([rng.choice(few) for _ in range(50)], [rng.choice(few) for _ in range(50)], few, small, "sentiment")
    (large_width, large_height), (small_width, small_height) = Image.open(large).size, Image.open(small).size
    assert large_width > 3 * small_width and large_height > 3 * small_height
    assert large_width < 3000 and large_height < 3000, "the figure scales with the labels, but not 1.2 inches a label"


def test_an_empty_split_still_draws(tmp_path: Path):
    confusion_matrix_png([], [], [f"label_{i}" for i in range(30)], tmp_path / "empty.png", "nothing yet")
    assert (tmp_path / "empty.png").exists()
