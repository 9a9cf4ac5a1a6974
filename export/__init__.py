"""ONNX graphs of the reference model: the encoder and one decoder step, FP32 or FP16."""
