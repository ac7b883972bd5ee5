"""validate: normalise, check every row against the task's expectations, quarantine what fails.

Each row's verdict is computed here, row by row, from the task's Great Expectations suite: GX's
lists of failing rows are not complete lists, so they are never trusted for that. GX still runs
the same suite for its statistics and Data Docs, and each expectation's failure count must agree
with ours. Every raw row ends up either clean or quarantined with its reasons; dataset-level
failures (a declared label with too few rows, too many rejects) stop the run with a message that
names the file and the problem, after the clean table, the quarantine and the report are written.
"""

from __future__ import annotations

import os
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from pipeline.errors import ValidationError
from pipeline.params import Params
from pipeline.paths import PipelinePaths, ensure_writable
from pipeline.records import Record, load_records, save_json, save_records
from pipeline.tasks import Task

MOST_COMMON = 3  # reasons named in the message that stops a run with too many rejects


def run(task: Task, params: Params, paths: PipelinePaths) -> dict:
    """Split the raw table into clean rows and quarantined rows; stop on dataset-level problems."""
    rules = task.config.validate
    ensure_writable(paths.clean.parent, paths.quarantine.parent, paths.reports)
    raw = load_records(paths.raw)
    examples = [task.normalise(example) for example in raw]
    failures, gx_summary = row_failures(task, examples, paths.data_docs)
    duplicates = find_duplicates(task, examples, skip=set(failures))
    failures.update({index: [("duplicate", reason)] for index, reason in duplicates.items()})

    clean = [e for i, e in enumerate(examples) if i not in failures]
    quarantined = [{**raw[i], "reason": "; ".join(reason for _, reason in found)} for i, found in sorted(failures.items())]
    if len(clean) + len(quarantined) != len(raw):  # a bug, never a user's mistake: keep the traceback
        raise RuntimeError(f"validate[{task.pipeline}]: {len(clean)} clean + {len(quarantined)} quarantined != {len(raw)} raw rows")
    save_records(paths.clean, clean)
    save_records(paths.quarantine, quarantined)

    counts = Counter(check for found in failures.values() for check, _ in found)
    reject_fraction = len(quarantined) / len(raw) if raw else 1.0
    problems = [too_many_rejects(raw, failures, task, rules.max_reject_fraction, paths)] if reject_fraction > rules.max_reject_fraction else []
    problems += task.dataset_problems(clean)
    report = {
        "task": task.pipeline,
        "rows": len(raw),
        "clean": len(clean),
        "quarantined": len(quarantined),
        "reject_fraction": round(reject_fraction, 4),
        "reasons": dict(counts.most_common()),
        "dataset_problems": problems,
        "success": not problems,
        "data_docs": str(paths.data_docs / "index.html"),
        "great_expectations": gx_summary,
    }
    save_json(paths.validation_report, report)
    print(f"validate[{task.pipeline}]: {len(clean)} clean, {len(quarantined)} quarantined -> {paths.quarantine}")
    if problems:
        sources = sorted({str(r["source"]) for r in raw})
        raise ValidationError(
            f"validation of {', '.join(sources)} failed: {'; '.join(problems)} "
            f"(report: {paths.validation_report}, quarantine: {paths.quarantine})"
        )
    return report


# row verdicts -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RowCheck:
    """How one kind of GX row expectation is read row by row, from its kwargs: its label (what its failures are
    counted under), the rows that fail it (as GX counts them: a missing value fails only the null checks) and
    why one row failed (default: the label)."""

    label: Callable[[dict], str]
    failing: Callable[[Any, dict], Any]  # (the column's values, kwargs) -> a boolean Series
    reason: Callable[[Task, dict, Any], str] | None = None  # (task, kwargs, the failing value) -> why


def listed(values: list) -> str:
    return ", ".join(map(str, values))


def outside(values: Any, measure: Callable[[Any], Any], kwargs: dict) -> Any:
    """The present values whose measure (length, number) lies outside min_value..max_value."""
    measured = measure(values[values.notna()])
    return ((measured < kwargs["min_value"]) | (measured > kwargs["max_value"])).reindex(values.index, fill_value=False)


ROW_CHECKS = {  # every kind of expectation a task type may return from `expectations()`
    "expect_column_values_to_be_null": RowCheck(  # a check column that holds each row's problem (e.g. cell_problem)
        label=lambda k: k["column"],
        failing=lambda values, k: values.notna(),
        reason=lambda task, k, value: str(value)),
    "expect_column_values_to_not_be_null": RowCheck(
        label=lambda k: f"{k['column']} is missing",
        failing=lambda values, k: values.isna()),
    "expect_column_values_to_be_in_set": RowCheck(
        label=lambda k: f"{k['column']} not in [{listed(k['value_set'])}]",
        failing=lambda values, k: values.notna() & ~values.isin(k["value_set"]),
        reason=lambda task, k, value: f"{k['column']} {value!r} not in [{listed(k['value_set'])}] ({task.unknown_label_hint})"),
    "expect_column_value_lengths_to_be_between": RowCheck(
        label=lambda k: f"{k['column']} length outside {k['min_value']}..{k['max_value']} characters",
        failing=lambda values, k: outside(values, lambda present: present.str.len(), k)),
    "expect_column_values_to_be_between": RowCheck(
        label=lambda k: f"{k['column']} outside {k['min_value']:g}..{k['max_value']:g}",
        failing=lambda values, k: outside(values, lambda present: present.astype(float), k),
        reason=lambda task, k, value: f"{k['column']} {value:g} outside {k['min_value']:g}..{k['max_value']:g}"),
}


def row_check(task: Task, expectation: Any) -> RowCheck:
    """The row check of an expectation (its configuration); a kind without one is refused before any data is checked."""
    if expectation.type not in ROW_CHECKS:
        raise ValidationError(f"validate[{task.pipeline}]: the {task.config.type} task type expects {expectation.type} on "
                              f"'{expectation.kwargs.get('column')}', which has no row check: use one of {listed(ROW_CHECKS)}, "
                              "or add its label, failing rows and reason to ROW_CHECKS in pipeline/stages/validate.py")
    return ROW_CHECKS[expectation.type]


def row_failures(task: Task, examples: list[Record], docs_dir: Path) -> tuple[dict[int, list[tuple[str, str]]], dict]:
    """Every failing row's (check, reason) pairs, by row index, and the GX result of the same suite."""
    import pandas as pd

    suite = task.expectations()
    expectations = [e.configuration for e in suite]  # the type and kwargs of each
    checks = [row_check(task, e) for e in expectations]
    frame = pd.DataFrame([{**e, **task.check_columns(e)} for e in examples], index=range(len(examples)))
    failing = [check.failing(frame[e.kwargs["column"]], e.kwargs) for check, e in zip(checks, expectations)]
    gx_summary = run_suite(task, suite, frame, docs_dir)
    check_agreement(expectations, [check.label(e.kwargs) for check, e in zip(checks, expectations)], failing, gx_summary)
    failures: dict[int, list[tuple[str, str]]] = {}
    for check, expectation, rows in zip(checks, expectations, failing):
        kwargs, label = expectation.kwargs, check.label(expectation.kwargs)
        for index in rows[rows].index:
            reason = check.reason(task, kwargs, frame.at[index, kwargs["column"]]) if check.reason else label
            failures.setdefault(int(index), []).append((label, reason))
    return failures, gx_summary


def check_agreement(expectations: list[Any], labels: list[str], failing: list[Any], gx_result: dict) -> None:
    """Each expectation's failure count must equal GX's unexpected_count: two readings of one suite."""
    outcomes = {(o["expectation_type"], o["kwargs"]["column"]): o["result"] for o in gx_result["expectations"]}
    for expectation, label, rows in zip(expectations, labels, failing):
        counted = outcomes[(expectation.type, expectation.kwargs["column"])].get("unexpected_count")
        if counted is not None and counted != int(rows.sum()):
            raise RuntimeError(f"validate: '{label}' fails {int(rows.sum())} rows here but {counted} in Great Expectations")


def too_many_rejects(raw: list[Record], failures: dict[int, list[tuple[str, str]]], task: Task, limit: float, paths: PipelinePaths) -> str:
    """The stop message for too many rejected rows: the most common reasons, each with its first row."""
    first: dict[str, tuple[int, str]] = {}
    counts: Counter = Counter()
    for index, found in sorted(failures.items()):
        for check, reason in found:
            counts[check] += 1
            first.setdefault(check, (index, reason))
    common = []
    for check, count in counts.most_common(MOST_COMMON):
        index, reason = first[check]
        common.append(f"{check} ({count} rows; e.g. {raw[index]['source']} row {raw[index]['row']}: {reason})")
    rejected = len(failures)
    return (
        f"{rejected} of {len(raw)} rows ({rejected / len(raw):.0%}) were rejected, more than "
        f"{task.pipeline}.validate.max_reject_fraction={limit:.0%}; most often: {', '.join(common)}"
    )


# the GX suite -------------------------------------------------------------------------------------
def run_suite(task: Task, expectations: list[Any], frame: Any, docs_dir: Path) -> dict:
    """Run the task's suite with Great Expectations for its statistics and Data Docs; returns GX's result."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = {"globally": False}
    shutil.rmtree(docs_dir, ignore_errors=True)
    context.add_data_docs_site(
        site_name="pipeline",
        site_config={
            "class_name": "SiteBuilder",
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir.resolve())},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        },
    )
    batch = (
        context.data_sources.add_pandas("pipeline")
        .add_dataframe_asset(task.pipeline)
        .add_batch_definition_whole_dataframe("all rows")
    )
    suite = context.suites.add(gx.ExpectationSuite(name=f"{task.pipeline}_rows", expectations=expectations))
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name=f"{task.pipeline}_validation", data=batch, suite=suite)
    )
    checkpoint = context.checkpoints.add(
        gx.Checkpoint(
            name=f"{task.pipeline}_checkpoint",
            validation_definitions=[definition],
            actions=[gx.checkpoint.UpdateDataDocsAction(name="data_docs")],
            result_format={"result_format": "SUMMARY"},  # counts and a sample of failures; the verdicts are ours
        )
    )
    result = checkpoint.run(batch_parameters={"dataframe": frame})
    (validation,) = result.run_results.values()
    return validation.describe_dict()


# duplicates ---------------------------------------------------------------------------------------
def find_duplicates(task: Task, examples: list[Record], skip: set[int]) -> dict[int, str]:
    """Later copies of an already seen (normalised) example, with the row they repeat.

    A source that brings its own splits keeps them as published: copies are looked for within a split.
    """
    first: dict[tuple[str | None, str], int] = {}
    reasons = {}
    for index, example in enumerate(examples):
        if index in skip:
            continue
        key = (example.get("given_split"), task.content_key(example))
        if key in first:
            original = examples[first[key]]
            where = f"{original['source']} row {original['row']}"
            conflict = {k: v for k, v in example.items() if k not in ("source", "row", "batch") and original.get(k) != v}
            reasons[index] = (
                f"duplicate of {where} with different {', '.join(conflict)}" if conflict else f"duplicate of {where}"
            )
        else:
            first[key] = index
    return reasons
