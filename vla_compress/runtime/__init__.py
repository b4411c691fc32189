"""Runtimes: every artifact (torch, ONNX Runtime, llama.cpp, TensorRT) behind one Policy interface."""

from .policy import Policy, TorchPolicy

__all__ = ["Policy", "TorchPolicy"]
