"""A CRF layer over a token classifier, for `ner.model.crf: true`.

The likelihood comes from pytorch-crf. Decoding is a Viterbi search written here because it
must forbid invalid IOB2 sequences (an I-X may only follow B-X or I-X) and must also run from
the transitions saved in a model's config.json, with no CRF module at hand. The CRF is scored on
words, not sub-tokens: only the first sub-token of each word carries a label.

Saving the transitions in the config keeps the trained model a plain Hugging Face token
classifier, so MLflow's transformers flavour, `from_pretrained` and the registry all work as
they do for any other model.
"""

from __future__ import annotations

from typing import Any

import torch
from torchcrf import CRF
from transformers.modeling_outputs import TokenClassifierOutput

from pipeline.models import IGNORED

FORBIDDEN = -10000.0  # the score of a transition that must never be taken


def forbidden_transitions(tags: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(forbidden[previous, next], forbidden_start[tag]) for IOB2 tags."""
    def allowed(previous: str, tag: str) -> bool:
        return not tag.startswith("I-") or previous in (f"B-{tag[2:]}", tag)

    forbidden = torch.tensor([[not allowed(p, t) for t in tags] for p in tags])
    return forbidden, torch.tensor([tag.startswith("I-") for tag in tags])


def viterbi(
    emissions: torch.Tensor, mask: torch.Tensor, transitions: torch.Tensor, start: torch.Tensor, end: torch.Tensor
) -> list[list[int]]:
    """The best tag path of each sequence; emissions [batch, words, tags], mask [batch, words]."""
    score = start + emissions[:, 0]
    backpointers = []
    for t in range(1, emissions.shape[1]):
        candidates = score.unsqueeze(2) + transitions + emissions[:, t].unsqueeze(1)
        best, previous = candidates.max(dim=1)
        score = torch.where(mask[:, t : t + 1], best, score)
        backpointers.append(previous)
    score = score + end
    paths = []
    for b, length in enumerate(mask.sum(dim=1).tolist()):
        tag = int(score[b].argmax())
        path = [tag]
        for previous in reversed(backpointers[: length - 1]):
            tag = int(previous[b, tag])
            path.append(tag)
        paths.append(path[::-1])
    return paths


def constrained_viterbi(emissions: torch.Tensor, mask: torch.Tensor, crf: dict, tags: list[str]) -> list[list[int]]:
    """Viterbi with the learned transitions in `crf` (lists as saved in a config, or tensors) and IOB2 constraints."""
    forbidden, forbidden_start = forbidden_transitions(tags)
    as_tensor = lambda values: torch.as_tensor(values, dtype=emissions.dtype, device=emissions.device)  # noqa: E731
    transitions = as_tensor(crf["transitions"]).masked_fill(forbidden.to(emissions.device), FORBIDDEN)
    start = as_tensor(crf["start"]).masked_fill(forbidden_start.to(emissions.device), FORBIDDEN)
    return viterbi(emissions, mask, transitions, start, as_tensor(crf["end"]))


def pack_words(logits: torch.Tensor, first_subtoken: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Move each row's word positions to the front: (positions, word emissions, word mask)."""
    counts = first_subtoken.sum(dim=1)
    width = max(int(counts.max()), 1)
    positions = torch.argsort((~first_subtoken).int(), dim=1, stable=True)[:, :width]
    emissions = logits.gather(1, positions.unsqueeze(-1).expand(-1, -1, logits.shape[-1]))
    mask = torch.arange(width, device=logits.device).unsqueeze(0) < counts.unsqueeze(1)
    return positions, emissions, mask


def decode_words(model: Any, logits: torch.Tensor, first_subtoken: torch.Tensor) -> list[list[int]]:
    """Tag ids per word: constrained Viterbi when the model's config carries a CRF, else argmax."""
    crf = getattr(model.config, "crf", None)
    if crf is None:
        return [row[keep].tolist() for row, keep in zip(logits.argmax(dim=-1), first_subtoken)]
    _, emissions, mask = pack_words(logits, first_subtoken)
    tags = [model.config.id2label[i] for i in range(len(model.config.id2label))]
    return constrained_viterbi(emissions, mask, crf, tags)


class CrfTagger(torch.nn.Module):
    """A token classifier whose word scores feed a CRF; what the Trainer optimises when crf is on."""

    def __init__(self, classifier: Any, tags: list[str]):
        super().__init__()
        self.classifier = classifier
        self.tags = tags
        self.crf = CRF(len(tags), batch_first=True)
        forbidden, forbidden_start = forbidden_transitions(tags)
        with torch.no_grad():  # forbidden paths then carry no probability mass, so get no gradient
            self.crf.transitions.masked_fill_(forbidden, FORBIDDEN)
            self.crf.start_transitions.masked_fill_(forbidden_start, FORBIDDEN)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None) -> TokenClassifierOutput:
        if labels is None:
            raise ValueError("CrfTagger is for training: predict with the exported classifier")
        logits = self.classifier(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).logits
        logits = logits.float()  # under bf16 autocast the CRF's sums along a sentence still need fp32
        first_subtoken = labels != IGNORED
        positions, emissions, mask = pack_words(logits, first_subtoken)
        tags = labels.gather(1, positions).masked_fill(~mask, 0)
        loss = -self.crf(emissions, tags, mask, reduction="token_mean")
        if not self.training:  # evaluation metrics then score the Viterbi path, as prediction will
            logits = self._paths_as_logits(logits, positions, emissions, mask)
        return TokenClassifierOutput(loss=loss, logits=logits)

    def export(self) -> Any:
        """The classifier with the learned transitions stored in its config (saved in config.json)."""
        self.classifier.config.crf = {name: values.cpu().tolist() for name, values in self._crf_params().items()}
        return self.classifier

    def _crf_params(self) -> dict[str, torch.Tensor]:
        return {
            "transitions": self.crf.transitions.detach(),
            "start": self.crf.start_transitions.detach(),
            "end": self.crf.end_transitions.detach(),
        }

    def _paths_as_logits(self, logits, positions, emissions, mask) -> torch.Tensor:
        paths = constrained_viterbi(emissions.detach(), mask, self._crf_params(), self.tags)
        one_hot = torch.zeros_like(logits)
        for b, path in enumerate(paths):
            one_hot[b, positions[b, : len(path)], torch.tensor(path, device=logits.device)] = 1.0
        return one_hot
