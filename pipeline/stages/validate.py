"""validate: normalise, check every row with Great Expectations, quarantine what fails.

Row-level failures go to the quarantine file with a reason each; dataset-level failures (a
declared label with too few rows, too many rejects) stop the run with a message that names
the file and the problem. The GX results are kept as JSON and as Data Docs HTML.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from pipeline.config import ValidateConfig
from pipeline.errors import ValidationError
from pipeline.paths import TaskPaths
from pipeline.records import Record, load_records, save_json, save_records
from pipeline.tasks.base import Task


def run(task: Task, rules: ValidateConfig, paths: TaskPaths) -> dict:
    """Split the raw table into clean rows and quarantined rows; stop on dataset-level problems."""
    raw = load_records(paths.raw)
    examples = [task.normalise(example) for example in raw]
    failures, gx_result = run_expectations(task, examples, paths.data_docs)
    reasons: dict[int, list[str]] = {i: list(r) for i, r in failures.items()}
    for index, reason in find_duplicates(task, examples, skip=set(failures)).items():
        reasons.setdefault(index, []).append(reason)

    clean = [e for i, e in enumerate(examples) if i not in reasons]
    quarantined = [{**raw[i], "reason": "; ".join(r)} for i, r in sorted(reasons.items())]
    save_records(paths.clean, clean)
    save_records(paths.quarantine, quarantined)

    problems = task.dataset_problems(clean)
    reject_fraction = len(quarantined) / len(raw) if raw else 1.0
    if reject_fraction > rules.max_reject_fraction:
        problems.append(
            f"{len(quarantined)} of {len(raw)} rows ({reject_fraction:.0%}) were rejected, more than "
            f"max_reject_fraction={rules.max_reject_fraction:.0%}; see {paths.quarantine}"
        )
    report = {
        "task": task.name,
        "rows": len(raw),
        "clean": len(clean),
        "quarantined": len(quarantined),
        "reject_fraction": round(reject_fraction, 4),
        "reasons": _count_reasons(quarantined),
        "dataset_problems": problems,
        "success": not problems,
        "data_docs": str(paths.data_docs / "index.html"),
        "great_expectations": gx_result,
    }
    save_json(paths.validation_report, report)
    print(f"validate[{task.name}]: {len(clean)} clean, {len(quarantined)} quarantined -> {paths.quarantine}")
    if problems:
        sources = sorted({str(r["source"]) for r in raw})
        raise ValidationError(
            f"validation of {', '.join(sources)} failed:\n  - " + "\n  - ".join(problems)
            + f"\n(report: {paths.validation_report}, quarantine: {paths.quarantine})"
        )
    return report


def run_expectations(task: Task, examples: list[Record], docs_dir: Path) -> tuple[dict[int, list[str]], dict]:
    """Run the task's expectation suite on the examples; returns failures by row index and the GX result."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    import pandas as pd

    frame = pd.DataFrame([{**e, **task.check_columns(e)} for e in examples])
    context = gx.get_context(mode="ephemeral")
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
        .add_dataframe_asset(task.name)
        .add_batch_definition_whole_dataframe("all rows")
    )
    suite = context.suites.add(gx.ExpectationSuite(name=f"{task.name}_rows", expectations=task.expectations()))
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name=f"{task.name}_validation", data=batch, suite=suite)
    )
    checkpoint = context.checkpoints.add(
        gx.Checkpoint(
            name=f"{task.name}_checkpoint",
            validation_definitions=[definition],
            actions=[gx.checkpoint.UpdateDataDocsAction(name="data_docs")],
            result_format={"result_format": "COMPLETE"},
        )
    )
    result = checkpoint.run(batch_parameters={"dataframe": frame})
    failures: dict[int, list[str]] = {}
    (validation,) = result.run_results.values()
    for outcome in validation.results:
        indices = outcome.result.get("unexpected_index_list") or []
        values = outcome.result.get("unexpected_list") or [None] * len(indices)
        for index, value in zip(indices, values):
            failures.setdefault(int(index), []).append(describe(outcome.expectation_config, value))
    return failures, validation.describe_dict()


def describe(expectation, value: object) -> str:
    """A short reason for a failed expectation, e.g. 'label not in [negative, neutral, positive]'."""
    kwargs = expectation.kwargs
    column = kwargs.get("column", "")
    kind = expectation.type
    if kind == "expect_column_values_to_be_null":  # a check column that holds the row's problem
        return str(value)
    if kind == "expect_column_values_to_not_be_null":
        return f"{column} is missing"
    if kind == "expect_column_values_to_be_in_set":
        return f"{column} not in [{', '.join(map(str, kwargs['value_set']))}]"
    if kind == "expect_column_value_lengths_to_be_between":
        return f"{column} length outside {kwargs.get('min_value')}..{kwargs.get('max_value')} characters"
    if kind == "expect_column_values_to_be_in_type_list":
        return f"{column} has the wrong type"
    if kind == "expect_column_values_to_be_between":
        return f"{column} {value:g} outside {kwargs.get('min_value'):g}..{kwargs.get('max_value'):g}"
    return f"{kind} failed on {column}"


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


def _count_reasons(quarantined: list[Record]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for row in quarantined:
        for reason in str(row["reason"]).split("; "):
            key = reason.split(" of ")[0] if reason.startswith("duplicate") else reason
            counts[key] = counts.get(key, 0) + 1
    return counts
