"""Images of the results people look at: confusion matrices, learning curves, BLEU by length,
active-learning label curves, the sentiment index."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt  # noqa: E402

ANNOTATED_LABELS = 20  # up to this many labels, counts in the cells; beyond, colour alone


def confusion_matrix_png(
    actual: list[str], predicted: list[str], labels: list[str], path: Path, title: str,
    top_confusions: Sequence[dict] = (),
) -> None:
    """A labelled confusion matrix (rows: actual, columns: predicted).

    Up to ANNOTATED_LABELS labels, the counts are written in the cells. With more, the figure and
    its fonts scale with the labels, cells are coloured by their share of the row (the actual
    label's examples) and `top_confusions` ({actual, predicted, count}) are listed under it."""
    counts = confusion_counts(actual, predicted, labels)
    if len(labels) <= ANNOTATED_LABELS:
        fig, ax = plt.subplots(figsize=(1.2 * len(labels) + 2, 1.2 * len(labels) + 1.5))
        _counted_cells(ax, counts, labels)
    else:
        fig, ax = _shaded_matrix(counts, labels, top_confusions)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    ax.set_title(title)
    _save(fig, path)


def confusion_counts(actual: list[str], predicted: list[str], labels: list[str]) -> list[list[int]]:
    """counts[i][j]: examples of labels[i] predicted as labels[j]; other labels are left out."""
    index = {label: i for i, label in enumerate(labels)}
    counts = [[0] * len(labels) for _ in labels]
    for a, p in zip(actual, predicted):
        if a in index and p in index:
            counts[index[a]][index[p]] += 1
    return counts


def _counted_cells(ax: plt.Axes, counts: list[list[int]], labels: list[str]) -> None:
    """A few labels: the counts as colours and written in each cell."""
    ax.imshow(counts, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    peak = max(max(row) for row in counts) or 1
    for i, row in enumerate(counts):
        for j, count in enumerate(row):
            ax.text(j, i, str(count), ha="center", va="center", color="white" if count > peak / 2 else "black")


def _shaded_matrix(counts: list[list[int]], labels: list[str], top_confusions: Sequence[dict]) -> tuple[plt.Figure, plt.Axes]:
    """Many labels: (figure, matrix axes) sized to them, each row's shares as colours, the top confusions listed below."""
    font = 7  # points: tick labels that fit a cell of 0.2 inch
    side = 0.2 * len(labels) + 3  # and 3 inches for the tick labels and titles
    listing = 0.2 * (len(top_confusions) + 1) + 0.3 if top_confusions else 0.1
    fig, axes = plt.subplot_mosaic([["matrix", "scale"], ["notes", "notes"]], figsize=(side + 0.8, side + listing),
                                   width_ratios=[side, 0.15], height_ratios=[side, listing])
    ax, notes = axes["matrix"], axes["notes"]
    shares = [[count / (sum(row) or 1) for count in row] for row in counts]
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, cax=axes["scale"], label="share of the actual label's examples")
    ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=font)
    ax.set_yticks(range(len(labels)), labels, fontsize=font)
    notes.axis("off")
    if top_confusions:
        lines = [f"{c['count']:>4}  {c['actual']} -> {c['predicted']}" for c in top_confusions]
        notes.text(0, 1, "most frequent confusions (count  actual -> predicted):\n" + "\n".join(lines),
                   va="top", family="monospace", fontsize=font + 2)
    return fig, ax


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


def bars_png(labels: list[str], values: list[float], path: Path, title: str, ylabel: str) -> None:
    """A bar chart with each bar's value written on it."""
    fig, ax = plt.subplots(figsize=(1.3 * len(labels) + 2.5, 4))
    bars = ax.bar(labels, values, color="tab:blue")
    ax.bar_label(bars, fmt="%.1f")
    ax.set(ylabel=ylabel, title=title)
    _save(fig, path)


def label_curves_png(curves: dict[str, list[tuple[int, float]]], reference: float, path: Path, title: str) -> None:
    """Test score against labelled examples, one line per selection strategy, the full-data score dashed."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, points in curves.items():
        ax.plot(*zip(*points), marker="o", label=name)
    ax.axhline(reference, color="grey", linestyle="--", label="all labels")
    ax.axhline(reference - 0.01, color="grey", linestyle=":", label="all labels - 1 point")
    ax.set(xlabel="labelled training examples", ylabel="test macro-F1", title=title)
    ax.legend()
    _save(fig, path)


def sentiment_index_png(days: list[str], index: list[float], path: Path, title: str) -> None:
    """The daily sentiment index (share positive minus share negative), from -1 to 1."""
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot(days, index, marker="o")
    ax.axhline(0, color="grey", linewidth=0.8)
    ax.set(ylim=(-1.05, 1.05), ylabel="positive - negative share", title=title)
    ax.tick_params(axis="x", labelrotation=45)
    _save(fig, path)


def index_scale(values: list[float | None]) -> tuple[float, float]:
    """The tenths around the values and 0, within -1..1: a market index that moves between +0.1 and +0.3 fills the chart."""
    known = [v for v in values if v is not None] + [0.0]
    return max(-1.0, math.floor(min(known) * 10 - 0.5) / 10), min(1.0, math.ceil(max(known) * 10 + 0.5) / 10)


def index_svg(labels: list[str], values: list[float | None], tips: list[str], width: int = 720, height: int = 300,
              intervals: list[list[float] | None] | None = None, markers: Sequence[tuple[int, str]] = (),
              scale: tuple[float, float] = (-1.0, 1.0)) -> str:
    """An inline SVG of an index per point on `scale` (low, high): a line broken where a value is None,
    each point's tip shown on hover, an optional interval bar per point and dashed markers (point,
    label). Small sizes (a trend beside a table row) leave out the axis and point labels."""
    from html import escape

    full = height >= 120
    pad, left = (40, 40) if full else (4, 4)
    step = (width - left - pad) / max(len(labels) - 1, 1)
    low, high = scale

    def x(i: int) -> float:
        return left + i * step

    def y(value: float) -> float:
        return pad + (high - min(max(value, low), high)) / (high - low) * (height - 2 * pad)

    parts = [f'<line x1="{left}" x2="{width - pad}" y1="{y(0):.1f}" y2="{y(0):.1f}" stroke="#bbb"/>']
    if full:
        parts += [f'<text x="4" y="{y(v) + 4:.1f}">{label}</text>' for v, label in ((high, f"{high:+.1f}"), (0, "0"), (low, f"{low:+.1f}"))]
        every = max(1, -(-len(labels) // 8))  # at most 8 point labels, the last always
        parts += [f'<text x="{x(i):.1f}" y="{height - 8}" text-anchor="middle">{escape(label)}</text>'
                  for i, label in enumerate(labels) if (i % every == 0 and len(labels) - 1 - i >= every / 2) or i == len(labels) - 1]
    for i, label in markers:
        parts.append(f'<line x1="{x(i):.1f}" x2="{x(i):.1f}" y1="{pad}" y2="{height - pad}" stroke="#888" stroke-dasharray="4 3"/>'
                     f'<text x="{x(i) + 3:.1f}" y="{pad - 4}" fill="#555">{escape(label)}</text>')
    for i, interval in enumerate(intervals or []):
        if interval is not None and values[i] is not None:
            parts.append(f'<line x1="{x(i):.1f}" x2="{x(i):.1f}" y1="{y(interval[1]):.1f}" y2="{y(interval[0]):.1f}" '
                         'stroke="#9bbbd6" stroke-width="5"/>')
    segment: list[str] = []
    for i, value in enumerate([*values, None]):
        if value is not None:
            segment.append(f"{x(i):.1f},{y(value):.1f}")
        elif segment:
            parts.append(f'<polyline points="{" ".join(segment)}" fill="none" stroke="steelblue" stroke-width="2"/>')
            segment = []
    radius = 5 if full else 2.5
    parts += [f'<circle cx="{x(i):.1f}" cy="{y(value):.1f}" r="{radius}" fill="steelblue"><title>{escape(tip)}</title></circle>'
              for i, (value, tip) in enumerate(zip(values, tips)) if value is not None]
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-size="11" font-family="sans-serif">'
            f'{"".join(parts)}</svg>')


def sentiment_index_html(days: list[str], index: list[float], counts: list[int], path: Path, title: str) -> None:
    """The same plot as a self-contained HTML page: an inline SVG whose points show their values on hover."""
    from html import escape

    svg = index_svg(days, index, [f"{day}: index {value:+.3f} ({n} texts)" for day, value, n in zip(days, index, counts)])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f"<!doctype html><meta charset='utf-8'><title>{escape(title)}</title><h3>{escape(title)}</h3>"
        f"<p>Share of positive minus share of negative predictions per day; hover a point for its value.</p>{svg}\n",
        encoding="utf-8",
    )


def _save(fig: plt.Figure, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def label_shares_png(days: list[str], shares: list[dict[str, float]], path: Path, title: str, top: int = 8) -> None:
    """Each label's share per day as stacked bars: the `top` labels with the largest shares overall, the rest as 'other'."""
    totals: dict[str, float] = {}
    for day in shares:
        for label, share in day.items():
            totals[label] = totals.get(label, 0.0) + share
    shown = sorted(totals, key=lambda label: -totals[label])[:top]
    series = {label: [day.get(label, 0.0) for day in shares] for label in shown}
    if len(totals) > top:
        series["other"] = [sum(share for label, share in day.items() if label not in shown) for day in shares]
    fig, ax = plt.subplots(figsize=(max(7, 0.5 * len(days) + 4), 4))
    bottom = [0.0] * len(days)
    colours = plt.get_cmap("tab10")
    for i, (label, values) in enumerate(series.items()):
        ax.bar(days, values, bottom=bottom, label=label, color="lightgrey" if label == "other" else colours(i % 10))
        bottom = [b + v for b, v in zip(bottom, values)]
    ax.set(ylim=(0, 1), ylabel="share", title=title)
    ax.tick_params(axis="x", labelrotation=45)
    if series:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize="small")
    _save(fig, path)
