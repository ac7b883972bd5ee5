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
from pathlib import Path
from typing import Any

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
def row_failures(task: Task, examples: list[Record], docs_dir: Path) -> tuple[dict[int, list[tuple[str, str]]], dict]:
    """Every failing row's (check, reason) pairs, by row index, and the GX result of the same suite."""
    import pandas as pd

    frame = pd.DataFrame([{**e, **task.check_columns(e)} for e in examples], index=range(len(examples)))
    suite = task.expectations()
    expectations = [e.configuration for e in suite]  # the type and kwargs of each
    failing = [failing_rows(e, frame) for e in expectations]
    gx_summary = run_suite(task, suite, frame, docs_dir)
    check_agreement(expectations, failing, gx_summary)
    failures: dict[int, list[tuple[str, str]]] = {}
    for expectation, rows in zip(expectations, failing):
        column = expectation.kwargs["column"]
        for index in rows[rows].index:
            failures.setdefault(int(index), []).append((kind(expectation), row_reason(task, expectation, frame.at[index, column])))
    return failures, gx_summary


def kind(expectation: Any) -> str:
    """What an expectation (its configuration) checks, in words: the key its failures are counted under."""
    kwargs = expectation.kwargs
    column = kwargs["column"]
    if expectation.type == "expect_column_values_to_be_null":  # a check column that holds each row's problem
        return column
    if expectation.type == "expect_column_values_to_not_be_null":
        return f"{column} is missing"
    if expectation.type == "expect_column_values_to_be_in_set":
        return f"{column} not in [{', '.join(map(str, kwargs['value_set']))}]"
    if expectation.type == "expect_column_value_lengths_to_be_between":
        return f"{column} length outside {kwargs['min_value']}..{kwargs['max_value']} characters"
    if expectation.type == "expect_column_values_to_be_between":
        return f"{column} outside {kwargs['min_value']:g}..{kwargs['max_value']:g}"
    raise TypeError(f"validate: no row verdict for {expectation.type}")


def failing_rows(expectation: Any, frame: Any) -> Any:
    """A boolean Series: which rows fail the expectation, with GX's meaning (nulls fail only the null checks)."""
    kwargs = expectation.kwargs
    values = frame[kwargs["column"]]
    present = values.notna()
    if expectation.type == "expect_column_values_to_be_null":
        return present
    if expectation.type == "expect_column_values_to_not_be_null":
        return ~present
    if expectation.type == "expect_column_values_to_be_in_set":
        return present & ~values.isin(kwargs["value_set"])
    if expectation.type == "expect_column_value_lengths_to_be_between":
        lengths = values[present].str.len()
        outside = (lengths < kwargs["min_value"]) | (lengths > kwargs["max_value"])
        return outside.reindex(frame.index, fill_value=False)
    if expectation.type == "expect_column_values_to_be_between":
        numbers = values[present].astype(float)
        outside = (numbers < kwargs["min_value"]) | (numbers > kwargs["max_value"])
        return outside.reindex(frame.index, fill_value=False)
    raise TypeError(f"validate: no row verdict for {expectation.type}")


def row_reason(task: Task, expectation: Any, value: object) -> str:
    """Why one row failed: the check, and the value that failed it where that helps."""
    kwargs = expectation.kwargs
    if expectation.type == "expect_column_values_to_be_null":
        return str(value)
    if expectation.type == "expect_column_values_to_be_in_set":
        return f"{kwargs['column']} {value!r} not in [{', '.join(map(str, kwargs['value_set']))}] ({task.unknown_label_hint})"
    if expectation.type == "expect_column_values_to_be_between":
        return f"{kwargs['column']} {value:g} outside {kwargs['min_value']:g}..{kwargs['max_value']:g}"
    return kind(expectation)


def check_agreement(expectations: list[Any], failing: list[Any], gx_result: dict) -> None:
    """Each expectation's failure count must equal GX's unexpected_count: two readings of one suite."""
    outcomes = {(o["expectation_type"], o["kwargs"]["column"]): o["result"] for o in gx_result["expectations"]}
    for expectation, rows in zip(expectations, failing):
        counted = outcomes[(expectation.type, expectation.kwargs["column"])].get("unexpected_count")
        if counted is not None and counted != int(rows.sum()):
            raise RuntimeError(f"validate: '{kind(expectation)}' fails {int(rows.sum())} rows here but {counted} in Great Expectations")


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
