"""Sequence-to-sequence models as a tool: load one, translate texts with it (the translation task type's
predictions, and back-translation for augmentation).
"""

from __future__ import annotations

import re
from typing import Any

from pipeline.models import batched_by_length, pretrained_kwargs

# WordPiece decoding puts spaces around every punctuation mark: "a woman ' s t - shirt".
_CLITIC = re.compile(r"(\w) ' (s|t|re|ve|ll|d|m)\b")
_HYPHEN = re.compile(r"(\w) - (?=\w)")


def detokenize(text: str) -> str:
    """Undo the spaces WordPiece decoding puts inside words ("woman ' s" -> "woman's", "t - shirt" -> "t-shirt")."""
    return _HYPHEN.sub(r"\1-", _CLITIC.sub(r"\1'\2", text))


def decode(tokenizer: Any, ids: Any) -> list[str]:
    """Texts of generated (or label) ids, special tokens dropped and WordPiece spacing undone."""
    return [detokenize(t.strip()) for t in tokenizer.batch_decode(ids, skip_special_tokens=True)]


def translate(model: Any, tokenizer: Any, texts: list[str], max_length: int, batch_size: int = 32) -> list[str]:
    """Translate texts with the model's generation settings, batched by length; in input order."""
    import torch

    model.eval()
    batches_done = 0

    def run_batch(indices: list[int]) -> list[str]:
        nonlocal batches_done
        batch = tokenizer(
            [texts[i] for i in indices], truncation=True, max_length=max_length, padding=True, return_tensors="pt"
        )
        with torch.inference_mode():
            output = model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        batches_done += 1
        if batches_done % 10 == 0:  # long jobs (evaluation, back-translation) show progress
            print(f"  translated {min(batches_done * batch_size, len(texts))}/{len(texts)}", flush=True)
        return decode(tokenizer, output)

    return batched_by_length([len(t) for t in texts], batch_size, run_batch)


def load_seq2seq(path: str) -> tuple[Any, Any]:
    """(model, tokenizer) of a sequence-to-sequence model folder (Marian, T5, mBART), e.g. for back-translation."""
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    return AutoModelForSeq2SeqLM.from_pretrained(path, **pretrained_kwargs()), AutoTokenizer.from_pretrained(path, **pretrained_kwargs())
