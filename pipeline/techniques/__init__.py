"""The techniques that go with fine-tuning, used by the tasks and stages: PEFT adapters, knowledge
distillation, a CRF layer for tagging, active learning, and the ONNX Runtime int8 export."""
