"""Machine translation: a sentence in, its translation out; judged by sacreBLEU (BLEU and chrF).

Examples are {"text": source sentence, "translation": reference}. The default base model is
the bundled MiniLM, an encoder only: it is warm-started as both encoder and decoder of an
`EncoderDecoderModel` (Rothe et al. 2020), with new cross-attention. Any
`AutoModelForSeq2SeqLM` (Marian, T5, mBART) works as well for users who can download one.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from pydantic import BaseModel

from pipeline.augmentation import BACK_TRANSLATION, augment_words
from pipeline.errors import ConfigError
from pipeline.models import pretrained_kwargs
from pipeline.params import ModelConfig, SourceConfig, TaskConfig, at_least, fraction
from pipeline.readers import read_source
from pipeline.records import Record
from pipeline.seq2seq import decode, translate
from pipeline.tasks.base import Task, cell_problems, cell_text, normalise_text

SAMPLE_ROWS = 25  # translations per split in the MLflow table
LENGTH_BUCKETS = ((1, 8), (9, 12), (13, 16), (17, 24), (25, 10_000))  # source words, for the BLEU-by-length plot


class Translation(BaseModel):
    """One served prediction."""

    translation: str


def bleu_metric(lowercase: bool) -> Any:
    """sacreBLEU's BLEU as this task scores it: 13a tokenisation, exp smoothing, optionally lowercased."""
    from sacrebleu.metrics import BLEU

    return BLEU(lowercase=lowercase)


def corpus_scores(hypotheses: list[str], references: list[str], lowercase: bool) -> dict[str, Any]:
    """sacreBLEU corpus BLEU (13a tokenisation) and chrF, each with the signature that makes it reproducible."""
    from sacrebleu.metrics import CHRF

    bleu, chrf = bleu_metric(lowercase), CHRF(lowercase=lowercase)
    return {
        "bleu": bleu.corpus_score(hypotheses, [references]).score,
        "chrf": chrf.corpus_score(hypotheses, [references]).score,
        "signature": {"bleu": str(bleu.get_signature()), "chrf": str(chrf.get_signature())},
    }


@dataclass
class TranslationValidateConfig:
    max_chars: int = at_least(1, 500)  # per side; longer pairs are quarantined
    max_length_ratio: float = at_least(1, 3.0)  # words of the longer side per word of the shorter; beyond it a pair is quarantined
    min_pairs: int = at_least(0, 20)  # fewer clean pairs stop the run
    max_reject_fraction: float = fraction(0.2)  # a larger share of rejected pairs stops the run


@dataclass
class TranslationModelConfig(ModelConfig):
    decoder_layers: int | None = at_least(1, None)  # an encoder-only base model is warm-started as encoder and decoder; null: as deep as the encoder
    num_beams: int = at_least(1, 4)  # beam search width when translating (1: greedy)
    max_new_tokens: int = at_least(1, 64)  # the longest translation, in tokens
    length_penalty: float = 1.0  # above 1 favours longer translations in beam search, below 1 shorter ones
    lowercase_bleu: bool = True  # score BLEU and chrF case-insensitively (the default model's vocabulary is uncased)


@dataclass
class LanguagesConfig:
    source: str = "de"  # the language translated from; also the file suffix of the parallel format and the column name in tsv/jsonl
    target: str = "en"  # the language translated into (the file suffix and column name as for source)

    def problems(self) -> Iterator[tuple[str, str]]:
        if self.source.strip().casefold() == self.target.strip().casefold():
            yield "target", f"is {self.target}, the same as source: a translation needs two languages"


@dataclass(kw_only=True)
class TranslationConfig(TaskConfig):
    AUGMENT_METHODS = ("swap", "delete", BACK_TRANSLATION)  # source-side noise, or a paraphrase of the source

    data: SourceConfig
    validate: TranslationValidateConfig
    model: TranslationModelConfig = field(default_factory=TranslationModelConfig)
    languages: LanguagesConfig = field(default_factory=LanguagesConfig)


class TranslationTask(Task):
    primary_metric = "bleu"
    transformers_task = None  # transformers 5 has no translation pipeline, so MLflow gets a pyfunc model
    config_class = TranslationConfig
    example_text = "Der Umsatz stieg im dritten Quartal."
    prediction_schema = Translation
    config: TranslationConfig

    @property
    def direction(self) -> str:
        return f"{self.config.languages.source}-{self.config.languages.target}"

    # data -----------------------------------------------------------------------------------
    def read_source(self, source: str | dict[str, str]) -> list[Record]:
        languages = self.config.languages
        data = self.config.data
        return read_source(source, data.format, data.encoding, (languages.source, languages.target))

    def input_columns(self) -> tuple[str, str]:
        return self.config.languages.source, self.config.languages.target

    column_hint = "tsv and jsonl sources name their columns by the language codes of translation.languages"

    def to_example(self, record: Record) -> Record:
        source, target, provenance = self.read_fields(record)
        example = {"text": cell_text(source), "translation": cell_text(target), **provenance}
        return cell_problems(example, {"text": source, "translation": target})

    def normalise(self, example: Record) -> Record:
        return {
            **example,
            **{k: normalise_text(example[k]) for k in ("text", "translation") if isinstance(example[k], str)},
        }

    def content_key(self, example: Record) -> str:
        return f"{example['text']}\t{example['translation']}".casefold()

    def split_key(self, example: Record) -> str:
        return str(example["text"]).casefold()  # one source sentence never lands in two splits

    def check_columns(self, example: Record) -> Record:
        words = [len(str(example[k] or "").split()) for k in ("text", "translation")]
        return {**super().check_columns(example), "length_ratio": max(words) / min(words) if min(words) else None}

    def expectations(self) -> list[Any]:
        import great_expectations as gx

        rules = self.config.validate
        languages = self.config.languages
        return [
            *(gx.expectations.ExpectColumnValuesToNotBeNull(column=column) for column in ("text", "translation")),
            *(
                gx.expectations.ExpectColumnValueLengthsToBeBetween(column=column, min_value=1, max_value=rules.max_chars)
                for column in ("text", "translation")
            ),
            gx.expectations.ExpectColumnValuesToBeBetween(
                column="length_ratio", min_value=1.0, max_value=rules.max_length_ratio,
                meta={"notes": f"words of the longer side ({languages.source} or {languages.target}) per word of the shorter"},
            ),
            *self.cell_expectations(),
        ]

    def dataset_problems(self, examples: list[Record]) -> list[str]:
        minimum = self.config.validate.min_pairs
        return [] if len(examples) >= minimum else [f"{len(examples)} clean sentence pairs, fewer than {self.pipeline}.validate.min_pairs={minimum}"]

    def augment(self, example: Record, method: str, rate: float, rng: random.Random) -> Record:
        words = augment_words(example["text"].split(), method, rate, rng)  # the reference stays as it is
        return {**example, "text": " ".join(words)}

    # model ----------------------------------------------------------------------------------
    def load_model(self, path: str) -> tuple[Any, Any]:
        from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

        kwargs = pretrained_kwargs()
        tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
        if AutoConfig.from_pretrained(path, **kwargs).is_encoder_decoder:
            model = AutoModelForSeq2SeqLM.from_pretrained(path, **kwargs)
        else:
            from transformers import EncoderDecoderModel

            layers = self.config.model.decoder_layers
            decoder = AutoModelForCausalLM.from_pretrained(
                path, is_decoder=True, add_cross_attention=True,
                **({"num_hidden_layers": layers} if layers else {}), **kwargs,
            )
            model = EncoderDecoderModel(encoder=AutoModel.from_pretrained(path, **kwargs), decoder=decoder)
        self._configure_generation(model, tokenizer)
        return model, tokenizer

    def peft_task_type(self, model: Any) -> str:
        if type(model).__name__ == "EncoderDecoderModel":
            raise ConfigError(
                "params.yaml: translation.train.peft needs a pretrained sequence-to-sequence model.name (Marian, T5, mBART): "
                "a warm-started encoder-decoder has new cross-attention layers that must be trained in full"
            )
        return "SEQ_2_SEQ_LM"

    def _configure_generation(self, model: Any, tokenizer: Any) -> None:
        """Special tokens a warm-started model lacks, and the generation settings of params.yaml."""
        settings = self.config.model
        special = {  # BERT-style vocabularies: start from [CLS], stop at [SEP]
            "decoder_start_token_id": tokenizer.cls_token_id,
            "pad_token_id": tokenizer.pad_token_id,
            "eos_token_id": tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id,
        }
        for config in (model.config, model.generation_config):
            for key, value in special.items():
                if getattr(config, key, None) is None:
                    setattr(config, key, value)
        model.generation_config.num_beams = settings.num_beams
        model.generation_config.max_new_tokens = settings.max_new_tokens
        model.generation_config.length_penalty = settings.length_penalty
        model.generation_config.max_length = None  # max_new_tokens decides

    def trainer_classes(self) -> tuple[Any, Any]:
        from transformers import Seq2SeqTrainer, Seq2SeqTrainingArguments

        return Seq2SeqTrainingArguments, Seq2SeqTrainer

    def training_arguments(self) -> dict[str, Any]:
        # Validation each epoch decodes greedily (cheaper); evaluate uses the configured beams.
        return {"predict_with_generate": True, "generation_num_beams": 1, "generation_max_length": None}

    def encode(self, tokenizer: Any, examples: list[Record]) -> list[dict]:
        self.tokenizer = tokenizer  # compute_metrics decodes generated ids with it
        limit = self.config.train.max_length
        sources = tokenizer([e["text"] for e in examples], truncation=True, max_length=limit)
        targets = tokenizer(text_target=[e["translation"] for e in examples], truncation=True, max_length=limit)
        features = []
        for i in range(len(examples)):
            labels = targets["input_ids"][i]
            if tokenizer.cls_token_id is not None and labels[:1] == [tokenizer.cls_token_id]:
                labels = labels[1:]  # generation starts from [CLS], so it is input, not a target
            features.append(
                {"input_ids": sources["input_ids"][i], "attention_mask": sources["attention_mask"][i], "labels": labels}
            )
        return features

    def data_collator(self, tokenizer: Any) -> Any:
        from transformers import DataCollatorForSeq2Seq

        return DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100)

    def compute_metrics(self, eval_prediction: Any) -> dict[str, float]:
        import numpy as np

        def texts(ids: Any) -> list[str]:
            return decode(self.tokenizer, np.where(ids < 0, self.tokenizer.pad_token_id, ids))  # -100 marks label padding

        # predictions and label_ids share the Trainer's order, whatever length grouping did
        scores = corpus_scores(texts(eval_prediction.predictions), texts(eval_prediction.label_ids), self.config.model.lowercase_bleu)
        return {"bleu": scores["bleu"], "chrf": scores["chrf"]}

    def predict(self, model: Any, tokenizer: Any, examples: list[Record]) -> list[Record]:
        texts = [normalise_text(e["text"]) for e in examples]
        return [{"translation": t} for t in translate(model, tokenizer, texts, self.config.train.max_length)]

    def metrics(self, examples: list[Record], predictions: list[Record]) -> dict[str, Any]:
        scores = corpus_scores(
            [p["translation"] for p in predictions], [e["translation"] for e in examples], self.config.model.lowercase_bleu
        )
        return {**scores, "n": len(examples), "direction": self.direction}

    def metric_statistics(self, examples: list[Record], predictions: list[Record]) -> Any:
        """sacreBLEU's per-sentence statistics: hypothesis and reference length, then the matching and
        total n-grams of each order. (Its own paired bootstrap resamples the same rows.)"""
        import numpy as np

        bleu = bleu_metric(self.config.model.lowercase_bleu)
        rows = bleu._extract_corpus_statistics([p["translation"] for p in predictions], [[e["translation"] for e in examples]])
        return np.array(rows, dtype=float).reshape(len(examples), -1)

    def metric_from_statistics(self, totals: Any) -> Any:
        """Corpus BLEU of each row of summed statistics, by sacreBLEU's own formula."""
        import numpy as np

        bleu = bleu_metric(self.config.model.lowercase_bleu)
        return np.array([bleu._compute_score_from_stats(row.astype(int).tolist()).score for row in totals])

    def write_plots(
        self, examples: list[Record], predictions: list[Record], out_dir: Path, split: str
    ) -> list[Path]:
        """BLEU by source sentence length: where the model breaks down."""
        from pipeline.plots import bars_png
        from pipeline.records import save_json

        rows = []
        for low, high in LENGTH_BUCKETS:
            chosen = [i for i, e in enumerate(examples) if low <= len(e["text"].split()) <= high]
            if chosen:
                scores = corpus_scores(
                    [predictions[i]["translation"] for i in chosen], [examples[i]["translation"] for i in chosen],
                    self.config.model.lowercase_bleu,
                )
                label = f"{low}-{high}" if high < 10_000 else f"{low}+"
                rows.append({"source_words": label, "bleu": round(scores["bleu"], 2), "sentences": len(chosen)})
        save_json(out_dir / f"bleu_by_length_{split}.json", rows)
        image = out_dir / f"bleu_by_length_{split}.png"
        bars_png(
            [f"{r['source_words']}\n(n={r['sentences']})" for r in rows], [r["bleu"] for r in rows], image,
            title=f"{self.pipeline} {self.direction}: BLEU by source length ({split})", ylabel="BLEU",
        )
        return [image]

    def sample_table(self, examples: list[Record], predictions: list[Record]) -> dict[str, list]:
        chosen = range(min(SAMPLE_ROWS, len(examples)))
        return {
            "source": [examples[i]["text"] for i in chosen],
            "reference": [examples[i]["translation"] for i in chosen],
            "hypothesis": [predictions[i]["translation"] for i in chosen],
        }

    def format_prediction(self, text: str, prediction: Record) -> str:
        return prediction["translation"]


TASK_CLASS = TranslationTask
