"""Layer-wise learning-rate decay (`<pipeline>.train.layer_decay`, Howard & Ruder 2018; Clark et al. 2020):
the head trains at the full learning rate, each encoder layer below it at `decay` times the rate of
the layer above, the embeddings lowest, so fine-tuning moves the general lower layers least."""

from __future__ import annotations

import re
from typing import Any

LAYER = re.compile(r"\.layers?\.(\d+)\.")  # BERT-style encoder.layer.N. and encoder.layers.N.


def layer_depths(names: list[str]) -> dict[str, int]:
    """How many layers below the head each parameter sits: 0 for the head, L - N for layer N of L,
    L + 1 for the embeddings."""
    indices = {name: int(found.group(1)) for name in names if (found := LAYER.search(name))}
    layers = max(indices.values(), default=-1) + 1
    return {name: layers - indices[name] if name in indices else (layers + 1 if "embed" in name else 0) for name in names}


def with_layer_decay(trainer_class: type, decay: float) -> type:
    """A subclass of `trainer_class` whose optimizer gives each parameter learning_rate * decay ** depth."""

    class LayerDecayTrainer(trainer_class):
        def create_optimizer(self, model: Any = None) -> Any:
            model = model or self.model
            optimizer_class, kwargs = self.get_optimizer_cls_and_kwargs(self.args, model)
            decayed = set(self.get_decay_parameter_names(model))
            named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
            depths = layer_depths([name for name, _ in named])
            groups: dict[tuple[int, bool], list] = {}
            for name, parameter in named:
                groups.setdefault((depths[name], name in decayed), []).append(parameter)
            self.optimizer = optimizer_class(
                [{"params": params, "lr": self.args.learning_rate * decay**depth,
                  "weight_decay": self.args.weight_decay if has_decay else 0.0}
                 for (depth, has_decay), params in sorted(groups.items())],
                **kwargs,
            )
            return self.optimizer

    return LayerDecayTrainer
