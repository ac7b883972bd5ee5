"""Named entity recognition: one IOB2 tag per word (O, B-TYPE, I-TYPE), scored by entity-level F1.

Words are split into sub-tokens; the first sub-token of a word carries its tag and the rest are
ignored. A sentence longer than `train.max_length` sub-tokens is split into consecutive windows
of whole words, each tagged on its own, so nothing is ever truncated.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal

from pydantic import BaseModel, Field

from pipeline.augmentation import augment_words
from pipeline.errors import ConfigError
from pipeline.models import IGNORED, batched_by_length
from pipeline.params import DataConfig, ModelConfig, TaskConfig, at_least, fraction, labels_problems
from pipeline.records import Record
from pipeline.tasks.base import Counts, Task, label_key, label_lookup, never_predicted, normalise_text, plain
from pipeline.techniques.adapters import MERGEABLE

# Words of raw text, split as in CoNLL: abbreviations (U.S.), numbers and words with inner
# separators (1,200 3.5 7-1/2 AT&T), a possessive 's, then any other character on its own.
WORD = re.compile(r"(?:[^\W\d_]\.){2,}|\w+(?:[-.,&/]\w+)*|'s\b|[^\w\s]")
NO_ENTITY = "none"  # the confusion plot's row and column for a missed or invented entity
# The bundled model is uncased; with `model.case_marker` a word starting with a capital gets this
# suffix, which the tokenizer splits off as a sub-token of the same word (the tag stays on the first).
CASE_MARK = "^"
# Tag prefixes as IOB2 writes them: BIOES/IOBES's S- (single) and E- (end), BILOU's U- and L-.
IOB2_PREFIX = {"B": "B", "I": "I", "S": "B", "E": "I", "U": "B", "L": "I"}
PREFIXED_TAG = re.compile(r"(?P<prefix>[A-Za-z])-(?P<kind>.+)")


class Entity(BaseModel):
    type: str
    start: int = Field(description="where the entity starts in the text as sent (a character offset)")
    end: int = Field(description="where it ends, exclusive: text[start:end] is the entity's text")
    text: str
    score: float = Field(description="the mean probability of its words' tags")


class Entities(BaseModel):
    """One served prediction."""

    entities: list[Entity]
    score: float = Field(description="the mean probability of the tags of the text's words")


def entities(tags: list[str]) -> list[tuple[str, int, int]]:
    """(type, first word, last word + 1) of each entity, read as conlleval does."""
    from seqeval.metrics.sequence_labeling import get_entities

    return [(kind, start, end + 1) for kind, start, end in get_entities(list(tags))]


def invalid_iob(tags: list[str]) -> list[int]:
    """Positions of I-X tags that follow neither B-X nor I-X (valid IOB1, invalid IOB2)."""
    return [i for i, tag in enumerate(tags) if tag.startswith("I-") and (i == 0 or tags[i - 1][2:] != tag[2:])]


def repair_iob(tags: list[str]) -> list[str]:
    """Turn each I-X that starts an entity into B-X (IOB1 or sloppy tagging to IOB2)."""
    repaired = list(tags)
    for i in invalid_iob(tags):
        repaired[i] = "B-" + tags[i][2:]
    return repaired


def word_windows(subtokens_per_word: list[int], limit: int) -> list[tuple[int, int]]:
    """Split a sentence into consecutive (start, end) word ranges of at most `limit` sub-tokens."""
    windows, start, used = [], 0, 0
    for i, count in enumerate(subtokens_per_word):
        if used + count > limit and i > start:
            windows.append((start, i))
            start, used = i, 0
        used += count
    return windows + [(start, len(subtokens_per_word))]


def mark_case(words: list[str], mark: str | None) -> list[str]:
    """Words as the model sees them: with `mark` after each capitalised word, when a mark is set."""
    return [w + mark if mark and w[:1].isupper() else w for w in words]


def first_subtokens(word_ids: list[int | None]) -> list[bool]:
    """Which sub-tokens start a word (the ones that carry its tag)."""
    return [word is not None and (j == 0 or word_ids[j - 1] != word) for j, word in enumerate(word_ids)]


def words_with_spans(text: str) -> tuple[list[str], list[tuple[int, int]]]:
    """Split raw text into (normalised) words and their character spans in the text as given."""
    matches = list(WORD.finditer(text))
    return [normalise_text(m.group()) for m in matches], [m.span() for m in matches]


@dataclass
class TokenValidateConfig:
    labels: list[str]  # entity types, e.g. [PER, ORG, LOC, MISC]; tags are O, B-TYPE and I-TYPE
    label_map: dict[str, str] = field(default_factory=dict)  # a source's own entity types onto these, e.g. {PERSON: PER}
    tag_names: list[str] | None = None  # tags given as integer ids: the tag of each id, as Hugging Face datasets list them
    invalid_iob: Literal["repair", "reject"] = "repair"  # an I-X after O or another type: make it B-X, or quarantine the sentence
    max_tokens: int = at_least(1, 1000)  # longer sentences are quarantined (they are split into windows, never truncated)
    min_mentions_per_type: int = at_least(0, 5)  # fewer mentions of any entity type in the clean rows stop the run
    max_reject_fraction: float = fraction(0.2)  # a larger share of rejected sentences stops the run

    def problems(self) -> Iterator[tuple[str, str]]:
        yield from labels_problems(self.labels, self.label_map)


@dataclass
class TokenModelConfig(ModelConfig):
    crf: bool = False  # a CRF layer over the token classifier: Viterbi decoding, invalid tag sequences forbidden
    case_marker: bool = False  # mark capitalised words, for models whose tokenizer lowercases


@dataclass(kw_only=True)
class TokenClassificationConfig(TaskConfig):
    AUGMENT_METHODS = ("mention", "synonym")  # swap a mention for another of its type; synonyms for O words only

    data: DataConfig
    validate: TokenValidateConfig
    model: TokenModelConfig = field(default_factory=TokenModelConfig)


class TokenClassificationTask(Task):
    primary_metric = "f1"
    transformers_task = "token-classification"
    config_class = TokenClassificationConfig
    counts = Counts(noun="entity type", shift="entity_types", several=True)
    finds_entities = True
    example_text = "Anna Berg, chief executive of Norvik Bank, said in Oslo on Monday."
    prediction_schema = Entities
    config: TokenClassificationConfig

    def __init__(self, name: str, config: TokenClassificationConfig):
        super().__init__(name, config)
        # The tag set: O, then B- and I- of each entity type (looked up per token, so built once).
        self.tags = ["O"] + [f"{prefix}-{kind}" for kind in config.validate.labels for prefix in "BI"]
        self.type_spellings = label_lookup(config.validate.labels, config.validate.label_map)
        self.mentions: dict[str, list[tuple[str, ...]]] = {}

    # data -----------------------------------------------------------------------------------
    def to_example(self, record: Record) -> Record:
        tokens, tags, provenance = self.read_fields(record)
        if "document" in record:
            provenance["document"] = record["document"]
        return {"tokens": _as_list(tokens), "tags": _as_list(tags), **provenance}

    def normalise(self, example: Record) -> Record:
        tokens, tags = example["tokens"], example["tags"]
        if not isinstance(tokens, list) or not isinstance(tags, list):
            return example
        tokens = [normalise_text(str(t)) for t in tokens]
        tags = [self.iob2_tag(str(t).strip()) for t in tags]
        if self.config.validate.invalid_iob == "repair":
            tags = repair_iob(tags)
        return {**example, "tokens": tokens, "tags": tags}

    def iob2_tag(self, tag: str) -> str:
        """A tag as IOB2 spells it, when it can be read: an integer id through `validate.tag_names`,
        S-/E- (BIOES) and U-/L- (BILOU) as B-/I-, the entity type as declared (ignoring case, or
        through `validate.label_map`). Anything else is left as it was, for validation to name."""
        names = self.config.validate.tag_names
        if tag.isdigit() and names is not None and int(tag) < len(names):
            tag = names[int(tag)]
        if tag.upper() == "O":
            return "O"
        match = PREFIXED_TAG.fullmatch(tag)
        kind = match and self.type_spellings.get(label_key(match["kind"]))
        prefix = match and IOB2_PREFIX.get(match["prefix"].upper())
        return f"{prefix}-{kind}" if kind and prefix else tag

    def content_key(self, example: Record) -> str:
        # Within a document: the same short line ("LONDON 1996-08-30") recurs across documents.
        return f"{example.get('document') or ''}\t{' '.join(map(str, example['tokens'] or []))}"

    def split_key(self, example: Record) -> str:
        return example.get("document") or " ".join(map(str, example["tokens"] or []))

    def check_columns(self, example: Record) -> Record:
        tokens = example["tokens"]
        return {"n_tokens": len(tokens) if isinstance(tokens, list) else 0, "tag_problem": self._tag_problem(example)}

    def _tag_problem(self, example: Record) -> str | None:
        tokens, tags = example["tokens"], example["tags"]
        if not isinstance(tokens, list) or not isinstance(tags, list):
            return "tokens or tags missing (give each as a list, or as one string of space-separated items)"
        if len(tokens) != len(tags):
            return f"{len(tokens)} tokens but {len(tags)} tags"
        empty = [i + 1 for i, token in enumerate(tokens) if not token]
        if empty:
            return f"token {empty[0]} is empty"
        unknown = [(i + 1, tag) for i, tag in enumerate(tags) if tag not in self.tags]
        if unknown:
            return self._unknown_tag(*unknown[0])
        invalid = invalid_iob(tags)
        if invalid:
            i = invalid[0]
            previous = tags[i - 1] if i else "the sentence start"
            return f"tag {i + 1} '{tags[i]}' follows {previous} (invalid IOB2; validate.invalid_iob: repair fixes it)"
        return None

    def _unknown_tag(self, position: int, tag: str) -> str:
        """Why a tag is not one of the tag set, and the key that fixes it."""
        names = self.config.validate.tag_names
        if tag.isdigit() and names is None:
            return (f"tag {position} '{tag}' is an integer id: set ner.validate.tag_names to the data set's tag list, "
                    "in id order (e.g. [O, B-PER, I-PER, B-ORG, I-ORG, B-LOC, I-LOC, B-MISC, I-MISC])")
        if tag.isdigit():
            return f"tag {position} is id {tag}, but ner.validate.tag_names lists only {len(names)} tags (ids 0..{len(names) - 1})"
        return (f"tag {position} '{tag}' is not one of O, B-/I-/S-/E- of {', '.join(self.config.validate.labels)} "
                "(map other entity types with ner.validate.label_map)")

    def expectations(self) -> list[Any]:
        import great_expectations as gx

        return [
            gx.expectations.ExpectColumnValuesToBeBetween(column="n_tokens", min_value=1, max_value=self.config.validate.max_tokens),
            gx.expectations.ExpectColumnValuesToBeNull(column="tag_problem"),
        ]

    def dataset_problems(self, examples: list[Record]) -> list[str]:
        counts = {kind: 0 for kind in self.config.validate.labels}
        for example in examples:
            for kind, _, _ in entities(example["tags"]):
                if kind in counts:  # validate lets no other type through; never a KeyError here
                    counts[kind] += 1
        minimum = self.config.validate.min_mentions_per_type
        return [
            f"entity type '{kind}' has {count} mentions in the clean rows, fewer than {self.pipeline}.validate.min_mentions_per_type={minimum}"
            for kind, count in counts.items()
            if count < minimum
        ]

    def prepare_augmentation(self, train: list[Record]) -> None:
        found: dict[str, set[tuple[str, ...]]] = {}
        for example in train:
            for kind, start, end in entities(example["tags"]):
                found.setdefault(kind, set()).add(tuple(example["tokens"][start:end]))
        self.mentions = {kind: sorted(names) for kind, names in found.items()}

    def augment(self, example: Record, method: str, rate: float, rng: random.Random) -> Record:
        tokens, tags = example["tokens"], example["tags"]
        if method == "synonym":  # only words outside entities, one for one, so the tags stay aligned
            return {**example, "tokens": augment_words(tokens, "synonym", rate, rng, [t == "O" for t in tags])}
        mentions = entities(tags)
        chosen = rng.sample(mentions, min(len(mentions), max(1, round(rate * len(tokens)))))
        for kind, start, end in sorted(chosen, key=lambda m: -m[1]):  # right to left keeps positions valid
            other = list(rng.choice(self.mentions[kind]))
            tokens = tokens[:start] + other + tokens[end:]
            tags = tags[:start] + [f"B-{kind}"] + [f"I-{kind}"] * (len(other) - 1) + tags[end:]
        return {**example, "tokens": tokens, "tags": tags}

    # model ----------------------------------------------------------------------------------
    def load_model(self, path: str) -> tuple[Any, Any]:
        from transformers import AutoModelForTokenClassification

        return self.load_with_head(AutoModelForTokenClassification, path, self.tags)

    def peft_task_type(self, model: Any) -> str:
        if self.config.train.peft.method not in MERGEABLE:  # virtual tokens would shift every word's position
            raise ConfigError("params.yaml: ner.train.peft.method must be lora or adalora (prompts shift the tagged positions)")
        return "TOKEN_CLS"

    def unlabelled_text(self, example: Record) -> str:
        return " ".join(example["tokens"])

    def training_model(self, model: Any) -> Any:
        from pipeline.techniques.crf import CrfTagger  # late: torch, which collect and validate never need

        return CrfTagger(model, self.tags) if self.config.model.crf else model

    def export_model(self, trained: Any) -> Any:
        from pipeline.techniques.crf import CrfTagger

        model = trained.export() if isinstance(trained, CrfTagger) else trained
        model.config.case_marker = self.case_mark  # saved in config.json, so prediction marks words alike
        return model

    @property
    def case_mark(self) -> str | None:
        """The case mark training adds, or None."""
        return CASE_MARK if self.config.model.case_marker else None

    def windows(self, tokenizer: Any, sentences: list[list[str]]) -> list[list[tuple[int, int]]]:
        """Each sentence's word windows that fit `train.max_length` with the special tokens."""
        limit = self.config.train.max_length - tokenizer.num_special_tokens_to_add()
        encoded = tokenizer(sentences, is_split_into_words=True, add_special_tokens=False)
        result = []
        for k, words in enumerate(sentences):
            counts = [0] * len(words)
            for word in encoded.word_ids(k):
                counts[word] += 1
            result.append(word_windows(counts, limit) if words else [])
        return result

    def encode(self, tokenizer: Any, examples: list[Record]) -> list[dict]:
        tag_ids = {tag: i for i, tag in enumerate(self.tags)}
        sentences = [mark_case(e["tokens"], self.case_mark) for e in examples]
        pieces = []  # (words, tags) of each window
        for example, words, windows in zip(examples, sentences, self.windows(tokenizer, sentences)):
            for start, end in windows:
                tags = list(example["tags"][start:end])
                if tags[0].startswith("I-"):  # an entity cut by the window edge starts afresh
                    tags[0] = "B-" + tags[0][2:]
                pieces.append((words[start:end], tags))
        encoded = tokenizer(
            [words for words, _ in pieces], is_split_into_words=True, truncation=True, max_length=self.config.train.max_length
        )
        features = []
        for k, (_, tags) in enumerate(pieces):
            word_ids = encoded.word_ids(k)
            labels = [tag_ids[tags[w]] if first else IGNORED for w, first in zip(word_ids, first_subtokens(word_ids))]
            features.append({**{key: values[k] for key, values in encoded.items()}, "labels": labels})
        return features

    def data_collator(self, tokenizer: Any) -> Any:
        from transformers import DataCollatorForTokenClassification

        return DataCollatorForTokenClassification(tokenizer)

    def compute_metrics(self, eval_prediction: Any) -> dict[str, float]:
        from seqeval.metrics import f1_score, precision_score, recall_score

        predicted, gold = [], []
        for scores, labels in zip(eval_prediction.predictions.argmax(axis=-1), eval_prediction.label_ids):
            keep = labels != IGNORED
            gold.append([self.tags[i] for i in labels[keep]])
            predicted.append([self.tags[i] for i in scores[keep]])
        return {
            "f1": float(f1_score(gold, predicted, zero_division=0)),
            "precision": float(precision_score(gold, predicted, zero_division=0)),
            "recall": float(recall_score(gold, predicted, zero_division=0)),
        }

    def predict(self, model: Any, tokenizer: Any, examples: list[Record]) -> list[Record]:
        """Tags and entities per example; an example is `tokens`, or raw `text` (spans in characters)."""
        import torch

        from pipeline.techniques.crf import decode_words

        words, spans = zip(*[_words(e) for e in examples]) if examples else ((), ())
        texts = [e.get("text") for e in examples]
        model_words = [mark_case(w, getattr(model.config, "case_marker", None)) for w in words]
        pieces = [(k, start, end) for k, windows in enumerate(self.windows(tokenizer, model_words)) for start, end in windows]
        tags: list[list[str]] = [["O"] * len(w) for w in words]
        scores: list[list[float]] = [[1.0] * len(w) for w in words]  # each word's probability of its tag
        model.eval()

        def run_batch(indices: list[int]) -> list[None]:
            batch = [pieces[i] for i in indices]
            inputs = tokenizer(
                [model_words[k][start:end] for k, start, end in batch], is_split_into_words=True, truncation=True,
                max_length=self.config.train.max_length, padding=True, return_tensors="pt",
            )
            word_ids = [inputs.word_ids(j) for j in range(len(batch))]
            first = [first_subtokens(ids) for ids in word_ids]
            with torch.inference_mode():
                logits = model(**inputs).logits
                paths = decode_words(model, logits, torch.tensor(first))
                probabilities = logits.softmax(-1)
            for j, ((k, start, _), ids, is_first, path) in enumerate(zip(batch, word_ids, first, paths)):
                positions = [i for i, f in enumerate(is_first) if f]
                for position, tag_id in zip(positions, path):
                    word = start + ids[position]
                    tags[k][word] = model.config.id2label[tag_id]
                    scores[k][word] = float(probabilities[j, position, tag_id])
            return [None] * len(batch)

        batched_by_length([end - start for _, start, end in pieces], 64, run_batch)
        return [
            {"tags": sentence[1], "score": sum(sentence[2]) / max(len(sentence[2]), 1), "entities": _entities(*sentence)}
            for sentence in zip(words, tags, scores, spans, texts)
        ]

    def metrics(self, examples: list[Record], predictions: list[Record]) -> dict[str, Any]:
        from seqeval.metrics import classification_report

        gold = [e["tags"] for e in examples]
        predicted = [p["tags"] for p in predictions]
        report = classification_report(gold, predicted, output_dict=True, zero_division=0)
        micro = report["micro avg"]
        return {
            "f1": float(micro["f1-score"]),
            "precision": float(micro["precision"]),
            "recall": float(micro["recall"]),
            "n": len(gold),
            "per_type": {
                kind: {
                    "precision": float(report[kind]["precision"]),
                    "recall": float(report[kind]["recall"]),
                    "f1": float(report[kind]["f1-score"]),
                    "support": int(report[kind]["support"]),
                }
                for kind in self.config.validate.labels
                if kind in report
            },
            "never_predicted": never_predicted(
                self.config.validate.labels,
                [kind for tags in gold for kind, _, _ in entities(tags)],
                [kind for tags in predicted for kind, _, _ in entities(tags)],
            ),
        }

    def metric_statistics(self, examples: list[Record], predictions: list[Record]) -> Any:
        """Entities per sentence: (correct, predicted, gold), which seqeval sums over sentences."""
        import numpy as np

        rows = []
        for example, prediction in zip(examples, predictions):
            gold, predicted = set(entities(example["tags"])), set(entities(prediction["tags"]))
            rows.append((len(gold & predicted), len(predicted), len(gold)))
        return np.array(rows, dtype=float).reshape(-1, 3)

    def metric_from_statistics(self, totals: Any) -> Any:
        """Entity micro-F1 of each row of summed (correct, predicted, gold)."""
        from pipeline.significance import f1

        correct, predicted, gold = totals.T
        return f1(correct, predicted - correct, gold - correct)

    def write_plots(
        self, examples: list[Record], predictions: list[Record], out_dir: Path, split: str
    ) -> list[Path]:
        """An entity-type confusion matrix: each gold entity against what was predicted on its exact span."""
        from pipeline.plots import confusion_matrix_png
        from pipeline.records import save_json

        pairs = []
        for example, prediction in zip(examples, predictions):
            gold = {(start, end): kind for kind, start, end in entities(example["tags"])}
            predicted = {(start, end): kind for kind, start, end in entities(prediction["tags"])}
            pairs += [{"actual": kind, "predicted": predicted.get(span, NO_ENTITY)} for span, kind in gold.items()]
            pairs += [{"actual": NO_ENTITY, "predicted": kind} for span, kind in predicted.items() if span not in gold]
        save_json(out_dir / f"confusion_{split}.json", pairs)  # DVC's confusion template reads this
        image = out_dir / f"confusion_{split}.png"
        confusion_matrix_png(
            [p["actual"] for p in pairs], [p["predicted"] for p in pairs], self.config.validate.labels + [NO_ENTITY],
            image, title=f"{self.pipeline}: entity types ({split}; '{NO_ENTITY}' = missed or spurious)",
        )
        return [image]

    def observation(self, prediction: Record) -> Record:
        """The types of the entities found, in order; the confidence is the mean of the word tags'."""
        return {"counted": [e["type"] for e in prediction["entities"]], "score": prediction["score"]}

    def pool_column(self) -> str:
        return "text"  # raw sentences: the data column holds tokens

    def format_prediction(self, text: str, prediction: Record) -> str:
        lines = [f"  {e['type']}\t{e['start']}-{e['end']}\t{e['text']}" for e in prediction["entities"]]
        return "\n".join([text] + (lines or ["  (no entities)"]))


def _as_list(value: Any) -> list[str] | None:
    """Tokens or tags as a list: JSON lists stay, a whitespace-separated string is split; anything else
    (missing, a number, an object) is None, which validation quarantines."""
    value = plain(value)
    if isinstance(value, str):
        return value.split()
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    return None


def _words(example: Record) -> tuple[list[str], list[tuple[int, int]] | None]:
    if "tokens" in example:
        return list(example["tokens"]), None
    return words_with_spans(example["text"])


def _entities(
    words: list[str], tags: list[str], scores: list[float], spans: list[tuple[int, int]] | None, text: str | None
) -> list[Record]:
    """Entities with their word range, score (mean tag probability of their words), and their character
    span in the text when there was one."""
    found = []
    for kind, start, end in entities(tags):
        entity = {"type": kind, "first_word": start, "end_word": end, "text": " ".join(words[start:end]),
                  "score": sum(scores[start:end]) / (end - start)}
        if spans is not None and text is not None:
            entity.update(start=spans[start][0], end=spans[end - 1][1], text=text[spans[start][0] : spans[end - 1][1]])
        found.append(entity)
    return found


TASK_CLASS = TokenClassificationTask
