"""Images of the results people look at: confusion matrices and learning curves."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt  # noqa: E402


def confusion_matrix_png(actual: list[str], predicted: list[str], labels: list[str], path: Path, title: str) -> None:
    """A labelled confusion matrix with counts in the cells (rows: actual, columns: predicted)."""
    index = {label: i for i, label in enumerate(labels)}
    counts = [[0] * len(labels) for _ in labels]
    for a, p in zip(actual, predicted):
        if a in index and p in index:
            counts[index[a]][index[p]] += 1
    fig, ax = plt.subplots(figsize=(1.2 * len(labels) + 2, 1.2 * len(labels) + 1.5))
    ax.imshow(counts, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    ax.set_title(title)
    peak = max(max(row) for row in counts) or 1
    for i, row in enumerate(counts):
        for j, count in enumerate(row):
            ax.text(j, i, str(count), ha="center", va="center", color="white" if count > peak / 2 else "black")
    _save(fig, path)


def learning_curves_png(history: list[dict], metric: str, path: Path, title: str) -> None:
    """Training and validation loss, and the validation metric, per epoch."""
    fig, (loss_ax, metric_ax) = plt.subplots(1, 2, figsize=(10, 4))
    for key, label in (("train_loss", "train loss"), ("eval_loss", "validation loss")):
        points = [(h["epoch"], h[key]) for h in history if key in h]
        if points:
            loss_ax.plot(*zip(*points), marker="o", label=label)
    loss_ax.set_xlabel("epoch")
    loss_ax.set_ylabel("loss")
    loss_ax.legend()
    points = [(h["epoch"], h[f"eval_{metric}"]) for h in history if f"eval_{metric}" in h]
    if points:
        metric_ax.plot(*zip(*points), marker="o", color="tab:green")
    metric_ax.set_xlabel("epoch")
    metric_ax.set_ylabel(f"validation {metric}")
    fig.suptitle(title)
    _save(fig, path)


def _save(fig: plt.Figure, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
