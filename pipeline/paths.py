"""Where each stage of a task reads and writes; dvc.yaml names the same paths."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import OutputError


def ensure_writable(*folders: Path) -> None:
    """Create each folder (with its parents) and write a probe file in it, so a stage fails before
    its long work with the path named, not with a traceback after it."""
    for folder in folders:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=folder):
                pass
        except OSError as exc:
            blocker = blocking_file(folder)
            why = f"{blocker} is a file, not a folder" if blocker else (exc.strerror or str(exc))
            raise OutputError(f"cannot write to {folder}/: {why}") from None


def blocking_file(path: Path) -> Path | None:
    """The file standing where folder `path`, or a folder above it, belongs, if one does."""
    return next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)


@dataclass(frozen=True)
class PipelinePaths:
    pipeline: str

    def inputs(self, stage: str) -> list[Path]:
        """What a stage always reads that an earlier stage writes: dvc.yaml's deps of it (tests/test_architecture.py
        checks they agree; train's models/<pipeline>-pretrained is read only with pretrain.enabled)."""
        return {
            "validate": [self.raw],
            "split": [self.clean],
            "augment": [self.split("train")],
            "pretrain": [self.split("train")],
            "train": [self.augmented_train, self.split("val")],
            "evaluate": [self.model_dir, self.split("val"), self.split("test")],
            "register": [self.model_dir, self.val_predictions, self.split("val")],
        }.get(stage, [])

    def writer(self, path: Path) -> str:
        """The stage that writes `path`, one of the stages' inputs."""
        return {
            self.raw: "collect", self.clean: "validate", self.augmented_train: "augment", self.model_dir: "train",
            self.val_predictions: "evaluate", **{self.split(name): "split" for name in ("train", "val", "test")},
        }[path]

    @property
    def raw(self) -> Path:
        return Path("data/raw") / f"{self.pipeline}.jsonl"

    @property
    def provenance(self) -> Path:
        return Path("data/raw") / f"{self.pipeline}.provenance.json"

    @property
    def rejected_batches(self) -> Path:
        """Drop-folder batches that could not be read, one record each (kept across runs)."""
        return Path("data/quarantine") / f"{self.pipeline}.batches.jsonl"

    @property
    def clean(self) -> Path:
        return Path("data/clean") / f"{self.pipeline}.jsonl"

    @property
    def quarantine(self) -> Path:
        return Path("data/quarantine") / f"{self.pipeline}.jsonl"

    @property
    def split_dir(self) -> Path:
        return Path("data/split") / self.pipeline

    def split(self, name: str) -> Path:
        return self.split_dir / f"{name}.jsonl"

    @property
    def augmented_train(self) -> Path:
        return Path("data/augmented") / f"{self.pipeline}.jsonl"

    @property
    def model_dir(self) -> Path:
        return Path("models") / self.pipeline

    @property
    def pretrained(self) -> Path:
        """The domain-adapted (masked-LM) model fine-tuning starts from when pretrain is on."""
        return Path("models") / f"{self.pipeline}-pretrained"

    @property
    def pretrain_report(self) -> Path:
        return self.reports / "pretrain.json"

    @property
    def search_report(self) -> Path:
        return self.reports / "search.json"

    @property
    def checkpoints(self) -> Path:
        return Path(".checkpoints") / self.pipeline

    @property
    def metrics(self) -> Path:
        return Path("metrics") / f"{self.pipeline}.json"

    @property
    def reports(self) -> Path:
        return Path("reports") / self.pipeline

    @property
    def evaluation(self) -> Path:
        """Evaluation plots (images and the data DVC draws), one folder per pipeline."""
        return self.reports / "evaluation"

    @property
    def val_predictions(self) -> Path:
        """The model's prediction for each validation example, in the split's order (evaluate writes,
        register compares them with the champion's)."""
        return self.reports / "val_predictions.jsonl"

    @property
    def validation_report(self) -> Path:
        return self.reports / "validation.json"

    @property
    def data_docs(self) -> Path:
        return self.reports / "data_docs"

    @property
    def history(self) -> Path:
        return self.reports / "history.json"

    @property
    def train_summary(self) -> Path:
        return self.reports / "train_summary.json"

    @property
    def promotion(self) -> Path:
        return self.reports / "promotion.json"

    @property
    def export_report(self) -> Path:
        return self.reports / "export.json"
