"""Pixels to descriptors: the model card (what a model file is and expects), preprocessing (resize, colour
order, layout as the card says) and the inference backends (ONNX Runtime, TensorRT) behind one interface,
``open_backend(path)``. Everything that turns a frame into an L2-normalised ``float32 (N, D)`` descriptor
lives here, and nothing else does. May import only the shared top-level modules (errors, optional,
protocol, files); never sources, maps or the Localizer.
"""

from runtime.model.backends import BACKEND_CHOICES, Backend, open_backend
from runtime.model.card import ModelCard, read_card
from runtime.model.preprocess import Preprocessor

__all__ = ["BACKEND_CHOICES", "Backend", "ModelCard", "Preprocessor", "open_backend", "read_card"]
