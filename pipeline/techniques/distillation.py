"""Knowledge distillation (`<pipeline>.train.distillation`): a student learns from a teacher's soft targets.

The loss is alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * the usual hard-label loss,
where _T is a softmax at temperature T (Hinton et al., 2015). It works on any logits the
student and teacher share: one row per text (sentiment), per word (NER) or per target
token (translation); positions whose label is -100 (padding, sub-tokens) are left out.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from pipeline.models import IGNORED


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2-scaled KL divergence from the teacher's to the student's softened distribution, averaged over labelled positions."""
    classes = student_logits.shape[-1]
    if teacher_logits.shape[-1] != classes:
        raise ValueError(f"distillation: the teacher has {teacher_logits.shape[-1]} outputs, the student {classes}")
    keep = (labels != IGNORED).reshape(-1)
    student = F.log_softmax(student_logits.reshape(-1, classes)[keep] / temperature, dim=-1)
    teacher = F.log_softmax(teacher_logits.reshape(-1, classes)[keep] / temperature, dim=-1)
    kl = F.kl_div(student, teacher, log_target=True, reduction="batchmean")
    return kl * temperature**2


def distilling(trainer_class: type, teacher: Any, temperature: float, alpha: float) -> type:
    """A subclass of `trainer_class` whose training loss mixes in the teacher's soft targets."""
    teacher.eval()
    for parameter in teacher.parameters():
        parameter.requires_grad_(False)

    class DistillationTrainer(trainer_class):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
            if model.training:  # validation loss stays the plain task loss, comparable across runs
                with torch.no_grad():
                    teacher_logits = teacher(**inputs).logits
                soft = distillation_loss(outputs.logits, teacher_logits, inputs["labels"], temperature)
                loss = alpha * soft + (1 - alpha) * loss
            return (loss, outputs) if return_outputs else loss

    return DistillationTrainer


def check_vocabularies(teacher_tokenizer: Any, student_tokenizer: Any) -> None:
    """Teacher and student read the same token ids, or the soft targets would be for other inputs."""
    if teacher_tokenizer.get_vocab() != student_tokenizer.get_vocab():
        raise ValueError("distillation: the teacher's tokenizer differs from the student's; both must share one vocabulary")
