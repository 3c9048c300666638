"""Inference runtimes shared by the model kinds (ONNX Runtime sessions; torch stays in each kind)."""
