"""zoo-exporter: deploy-ready ONNX / TorchScript / FP16 / INT8 / TensorRT for the classic CNN zoo,
with parity against eager PyTorch proven for every artifact."""

__version__ = "0.1.0"
