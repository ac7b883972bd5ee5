"""The MLflow model registry: aliases, `models:/` URIs, the champion, and loading a registered model
of any flavour (transformers, or the pyfunc of translation and prompt-tuned models).

Serving, predict, the register stage's champion, distillation teachers and back-translation models
all come through here, so a model that does not exist is one ModelError (exit 4) and a failing
registry one TrackingError (exit 5) wherever it happens.
"""

from __future__ import annotations

import re
import tempfile
from contextlib import AbstractContextManager
from typing import Any

from pipeline import tracking
from pipeline.errors import ModelError, TrackingError, UserError
from pipeline.locks import limit_name, shared_lock
from pipeline.models import resolve_model
from pipeline.tasks import Task

CHAMPION, CHALLENGER = "champion", "challenger"
MODEL_URI = re.compile(r"models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/@]+)|/(?P<version>\d+))")


def champion_uri(name: str) -> str:
    """The URI of a registered model's champion, e.g. models:/fin-sentiment@champion."""
    return f"models:/{name}@{CHAMPION}"


def promotion_lock(name: str) -> tuple[str, AbstractContextManager]:
    """(what it is, the lock) named after a registered model, that every process promoting to it takes:
    beside a tracking store on this disk, else shared by every process using the tracking server."""
    return shared_lock(limit_name("promote", name), tracking.local_store_folder(), tracking.tracking_uri())


def parse_model_uri(uri: str) -> tuple[str, str | None, str | None]:
    """(name, alias, version) of `models:/NAME@ALIAS` or `models:/NAME/VERSION`."""
    match = MODEL_URI.fullmatch(uri)
    if match is None:
        raise ModelError(f"model URI must be models:/NAME@ALIAS or models:/NAME/VERSION, got '{uri}'")
    return match["name"], match["alias"], match["version"]


def does_not_exist(exc: Exception) -> bool:
    """The registry answered that the model, version or alias asked for does not exist (rather than failing).
    MLflow reports a missing alias as INVALID_PARAMETER_VALUE, 'Registered model alias X not found'."""
    code = getattr(exc, "error_code", None)
    return code == "RESOURCE_DOES_NOT_EXIST" or (code == "INVALID_PARAMETER_VALUE" and "not found" in str(exc))


def registry_error(uri: str, exc: Exception) -> UserError:
    """The user's view of an MlflowException about `uri`: no such model (ModelError), or a failing store (TrackingError)."""
    where = f"'{uri}' from {tracking.tracking_uri()}: {getattr(exc, 'message', exc)}"
    if does_not_exist(exc):
        return ModelError(f"cannot load model {where} (register one with `dvc repro`, or name another: "
                          "models:/NAME/VERSION, models:/NAME@ALIAS or a model folder)")
    return TrackingError(f"the model registry failed loading {where}")


def registered_version(uri: str) -> Any:
    """The registry's ModelVersion that `uri` points at right now (an alias moves on promotion): a ModelError
    when there is none, a TrackingError when the registry fails."""
    import mlflow
    from mlflow.exceptions import MlflowException

    name, alias, version = parse_model_uri(uri)
    client = mlflow.MlflowClient()
    try:
        return client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, version)
    except MlflowException as exc:
        raise registry_error(uri, exc) from None


def champion_version(client: Any, name: str) -> Any | None:
    """The version that holds the champion alias; None only when the model or the alias does not exist yet.

    Any other failure (a server error, a timeout, a refused permission) is raised: taken for "no
    champion", it would promote the challenger over a champion that exists. The alias is read from
    the registered model because a missing alias is reported as INVALID_PARAMETER_VALUE, like a
    malformed request."""
    from mlflow.exceptions import MlflowException

    try:
        model = client.get_registered_model(name)
    except MlflowException as exc:
        if does_not_exist(exc):
            return None
        raise
    version = model.aliases.get(CHAMPION)
    return None if version is None else client.get_model_version(name, version)


def load_registered(task: Task, uri: str) -> tuple[Any, Any]:
    """(model, tokenizer) of a registered model version, e.g. models:/fin-sentiment@champion.
    A transformers model is loaded from a temporary download that is removed once it is in memory:
    from a tracking server MLflow would leave a folder behind for every load (a served model's
    hot-swaps, each register's champion)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        flavors = mlflow.models.get_model_info(uri).flavors
    except MlflowException as exc:
        raise registry_error(uri, exc) from None
    if "transformers" not in flavors:
        return load_pyfunc_components(uri)
    with tempfile.TemporaryDirectory(prefix="model-") as downloads:
        components = mlflow.transformers.load_model(uri, dst_path=downloads, return_type="components")
    return components["model"], components["tokenizer"]


def load_pyfunc_components(uri: str) -> tuple[Any, Any]:
    """(model, tokenizer) inside a model registered as a pyfunc (pipeline.task_model.TaskModel)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        wrapper = mlflow.pyfunc.load_model(uri).unwrap_python_model()
    except MlflowException as exc:
        raise registry_error(uri, exc) from None
    except (ModuleNotFoundError, AttributeError) as exc:  # a pickle naming classes this code no longer has
        raise ModelError(f"cannot load model '{uri}': it was registered by an older finetune-pipeline whose config classes are "
                         f"gone ({exc}); retrain and register it anew (`dvc repro`)") from None
    return wrapper.model, wrapper.tokenizer


def load_reference(task: Task, reference: str, key: str) -> tuple[Any, Any]:
    """(model, tokenizer) with `task`'s head from a reference in params.yaml (`key`, e.g. a distillation
    teacher): a registered version (models:/NAME@ALIAS, models:/NAME/VERSION), a folder or a hub id."""
    if reference.startswith("models:/"):
        tracking.point_at_store()
        return load_registered(task, reference)
    return task.load_model(resolve_model(reference, key))


def load_translator(reference: str, key: str) -> tuple[Any, Any]:
    """(model, tokenizer) of a translation model for back-translation: a registered translation model
    (a pyfunc), a sequence-to-sequence folder or hub id."""
    from pipeline.seq2seq import load_seq2seq

    if reference.startswith("models:/"):
        tracking.point_at_store()
        return load_pyfunc_components(reference)
    return load_seq2seq(resolve_model(reference, key))
