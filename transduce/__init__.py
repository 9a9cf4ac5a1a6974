"""transduce: a Transformer encoder-decoder from its PyTorch reference to FP16 TensorRT.

The subpackages follow the pipeline: `model` (reference), `export` (ONNX), `engines`
(TensorRT), `runtime` (the generation loop, torch-free) and `text` (tokenizers).
"""

__version__ = "0.1.0"
