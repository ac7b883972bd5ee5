"""An ONNX Runtime export of a text classifier, for fast CPU serving (`registry.onnx`, `serving.runtime`).

`torch.onnx` exports the fine-tuned model, ONNX Runtime's transformer optimizer fuses its
attention, layer norms and GELUs, and dynamic quantisation (`int8`) stores the MatMul weights
as 8-bit integers whose activations are quantised on the fly. An export is only kept after it
has scored the validation split no more than `onnx_max_drop` below the PyTorch model it came from.

The register stage logs the kept export into the model version's run (artifact folder `onnx/`)
and tags the version with it; serving with `runtime: onnx` loads it from there.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

from pipeline.models import pretrained_kwargs
from pipeline.records import Record

ONNX_FILE = "model.onnx"
ARTIFACT_PATH = "onnx"  # in the version's MLflow run
VERSION_TAG = "onnx"  # on the model version: the export's precision, or why there is none


class ExportError(RuntimeError):
    """An export that cannot be made, or that scores too far below the model it came from."""


def export(model: Any, tokenizer: Any, folder: Path, precision: str) -> Path:
    """Write `folder` with the ONNX model (fp32 or int8), its config and tokenizer; returns the folder."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.transformers.optimizer import optimize_model

    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="onnx-") as scratch:
        exported = Path(scratch) / "exported.onnx"
        _export_graph(model, tokenizer, exported)
        fused = Path(scratch) / "fused.onnx"
        optimize_model(str(exported), model_type="bert", num_heads=getattr(model.config, "num_attention_heads", 0),
                       hidden_size=getattr(model.config, "hidden_size", 0)).save_model_to_file(str(fused))
        if precision == "int8":
            # Fused ops hide their output types from shape inference: they are float tensors.
            quantize_dynamic(str(fused), str(folder / ONNX_FILE), weight_type=QuantType.QInt8, per_channel=True,
                             reduce_range=True,  # 7-bit weights: no overflow on CPUs without VNNI
                             extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
        else:
            os.replace(fused, folder / ONNX_FILE)
    model.config.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


def _export_graph(model: Any, tokenizer: Any, path: Path) -> None:
    """Trace the model into ONNX with batch and sequence length left dynamic; outputs logits and
    the last layer's first-token embedding (what active learning's diversity term reads)."""
    import torch

    names = [name for name in ("input_ids", "attention_mask", "token_type_ids") if name in tokenizer.model_input_names]

    class LogitsAndEmbedding(torch.nn.Module):
        def __init__(self, inner: Any):
            super().__init__()
            self.inner = inner

        def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            output = self.inner(**dict(zip(names, inputs)), output_hidden_states=True)
            return output.logits, output.hidden_states[-1][:, 0]

    sample = tokenizer(["A first sentence to trace.", "A second one."], padding=True, return_tensors="pt")
    dynamic = {name: {0: "batch", 1: "sequence"} for name in names}
    # The tracer warns about Python conditions on shapes in the attention mask code: with the mask
    # always given they take the same branch for every shape (check() scores other shapes).
    # ORT's optimizer fuses attention (and the embeddings' layer norm) only in the graph of the
    # eager implementation, not in the one scaled_dot_product_attention traces to (13% more
    # texts/s in benchmarks/inference.py).
    attention = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", message="Exporting aten::index operator")
            torch.onnx.export(
                LogitsAndEmbedding(model.eval()), tuple(sample[name] for name in names), str(path),
                input_names=names, output_names=["logits", "embedding"],
                dynamic_axes={**dynamic, "logits": {0: "batch"}, "embedding": {0: "batch"}},
                opset_version=17, dynamo=False,  # the TorchScript tracer: dynamic shapes for BERT without a rewrite
            )
    finally:
        model.set_attn_implementation(attention)


class OnnxClassifier:
    """An ONNX Runtime session that answers like a transformers sequence classifier (`logits`,
    `hidden_states[-1][:, 0]`, `config.id2label`), so the task's prediction code runs it unchanged."""

    def __init__(self, folder: Path, threads: int | None = None):
        import onnxruntime
        from transformers import AutoConfig

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads or len(os.sched_getaffinity(0))
        self.session = onnxruntime.InferenceSession(str(folder / ONNX_FILE), options, providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.config = AutoConfig.from_pretrained(str(folder), **pretrained_kwargs())

    def eval(self) -> "OnnxClassifier":
        return self

    def __call__(self, output_hidden_states: bool = False, **batch: Any) -> Any:
        import torch
        from transformers.modeling_outputs import SequenceClassifierOutput

        logits, embedding = self.session.run(None, {name: batch[name].numpy() for name in self.inputs})
        hidden = (torch.from_numpy(embedding)[:, None],) if output_hidden_states else None
        return SequenceClassifierOutput(logits=torch.from_numpy(logits), hidden_states=hidden)


def load(folder: Path) -> tuple[OnnxClassifier, Any]:
    """(model, tokenizer) of an export folder."""
    from transformers import AutoTokenizer

    return OnnxClassifier(folder), AutoTokenizer.from_pretrained(str(folder), **pretrained_kwargs())


def check(task: Any, model: Any, tokenizer: Any, folder: Path, examples: list[Record], max_drop: float) -> dict:
    """Score `examples` with the model and its export; the report, or ExportError when the export's
    primary metric is more than `max_drop` below the model's."""
    metric = task.primary_metric
    reference = task.predict(model, tokenizer, examples)
    exported = task.predict(*load(folder), examples)
    before, after = (task.metrics(examples, predictions)[metric] for predictions in (reference, exported))
    report = {
        "metric": f"val_{metric}", "model": before, "export": after, "drop": before - after, "max_drop": max_drop,
        "label_agreement": sum(a["label"] == b["label"] for a, b in zip(reference, exported)) / max(len(examples), 1),
        "onnx_megabytes": round((folder / ONNX_FILE).stat().st_size / 2**20, 1),
    }
    if report["drop"] > max_drop:
        raise ExportError(f"the export scores val {metric} {after:.4f}, {report['drop']:.4f} below the model's "
                          f"{before:.4f} (registry.onnx_max_drop is {max_drop})")
    return report


def load_logged(run_id: str) -> tuple[OnnxClassifier, Any]:
    """(model, tokenizer) of the export logged into a run. Both are in memory once loaded, so the
    download is removed: a server that hot-swaps versions for weeks leaves no folders behind."""
    import mlflow

    with tempfile.TemporaryDirectory(prefix="onnx-") as scratch:
        return load(Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=ARTIFACT_PATH, dst_path=scratch)))
