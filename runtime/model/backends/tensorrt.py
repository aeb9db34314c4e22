"""TensorRT backend: a serialised engine (``.engine``/``.plan``) with its model-card JSON sidecar.

Written against the TensorRT 10 Python API (``deserialize_cuda_engine``, named I/O tensors,
``set_input_shape``/``set_tensor_address``, ``execute_async_v3``) and cuda-python's runtime bindings
(``cuda.bindings.runtime``; older releases: ``cuda.cudart``) for pinned host buffers, device buffers and one
stream. Buffers are sized once for the largest batch of the engine's optimisation profile 0; a batch
anywhere within ``[min, max]`` of that profile runs without reallocating.

UNVERIFIED here: TensorRT cannot be installed on the machines this kit was developed on; its tests run only
where ``tensorrt`` imports (``requires_tensorrt``).
"""

from __future__ import annotations

import ctypes
import logging
from pathlib import Path

import numpy as np

from runtime.errors import ArtifactError, BackendError
from runtime.model.backends.base import Backend, check_model_file
from runtime.model.card import read_sidecar
from runtime.optional import require

log = logging.getLogger(__name__)


def _cudart():
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        cudart = require("cuda.cudart", "TensorRT inference (CUDA buffers and streams)")
    return cudart


def _check(result, what: str):
    """cuda-python calls return ``(err, *values)``; raise BackendError on a CUDA error."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise BackendError(f"CUDA error during {what}: {err}")
    return values[0] if len(values) == 1 else values


class TensorRTBackend(Backend):
    """Runs a TensorRT engine: uint8 NHWC input in pinned memory -> device -> engine -> float32 descriptors."""

    name = "tensorrt"

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        """Open the engine at ``path`` (its card from the JSON sidecar). ``threads`` is accepted and ignored
        (CPU threads are an ONNX Runtime option), so callers can pass the same options to every backend."""
        path = check_model_file(path, "TensorRT engine")
        card = read_sidecar(path)  # ModelCardError when the sidecar is missing (checked before imports)
        super().__init__(path, card)
        trt = require("tensorrt", "running TensorRT engines")
        self._cudart = _cudart()
        self._host: dict[str, tuple[int, np.ndarray]] = {}
        self._device: dict[str, int] = {}
        self._stream = None
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
        if engine is None:
            raise ArtifactError(
                f"TensorRT cannot deserialise '{path}': the engine is truncated, corrupt, or was built by "
                "another TensorRT version or for another GPU; rebuild it with netvlad-export on this machine"
            )
        self._engine = engine
        self._context = engine.create_execution_context()
        if self._context is None:  # TensorRT returns None (and logs why) e.g. when device memory runs out
            raise BackendError(
                f"TensorRT could not create an execution context for '{path}' (see the TensorRT log above; "
                "usually too little free GPU memory); free GPU memory or use a smaller batch profile"
            )
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or len(outputs) != 1:
            raise ArtifactError(
                f"'{path}' must have one input and one output tensor, has {inputs} -> {outputs}"
            )
        self._input, self._output = inputs[0], outputs[0]
        self._input_dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(self._input)))
        self._output_dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(self._output)))
        h, w, c = self.input_shape
        shape = tuple(engine.get_tensor_shape(self._input))
        if self._input_dtype != np.uint8 or len(shape) != 4 or shape[1:] != (h, w, c):
            raise ArtifactError(
                f"'{path}' takes {self._input_dtype} {shape} but its card describes uint8 (N, {h}, {w}, {c}) "
                "NHWC images; the sidecar does not belong to this engine, rebuild it with netvlad-export --engine"
            )
        if self._output_dtype not in (np.float32, np.float16):
            raise ArtifactError(
                f"'{path}' returns {self._output_dtype} descriptors, expected float32 or float16"
            )
        if shape[0] == -1:  # dynamic batch: profile 0 bounds it
            lo, _opt, hi = engine.get_tensor_profile_shape(self._input, 0)
            self._min_batch, self._max_batch = int(lo[0]), int(hi[0])
        else:
            self._min_batch = self._max_batch = int(shape[0])
        # The output buffer is sized from the engine's own output shape at the largest batch, never from the
        # card: a sidecar that disagrees with the engine would otherwise let TensorRT write past the buffer.
        self._set_input_shape((self._max_batch, h, w, c))
        out_shape = tuple(int(d) for d in self._context.get_tensor_shape(self._output))
        if out_shape != (self._max_batch, card.descriptor_dim):
            raise ArtifactError(
                f"'{path}' returns descriptors of shape {out_shape} at batch {self._max_batch}, but its card "
                f"says ({self._max_batch}, {card.descriptor_dim}); the sidecar does not belong to this engine, "
                "rebuild it with netvlad-export --engine"
            )
        self._stream = _check(self._cudart.cudaStreamCreate(), "cudaStreamCreate")
        self._allocate(self._input, (self._max_batch, h, w, c), self._input_dtype)
        self._allocate(self._output, out_shape, self._output_dtype)
        log.info("opened %s (batch %d..%d)", self.describe(), self._min_batch, self._max_batch)

    def _set_input_shape(self, shape: tuple[int, ...]) -> None:
        if not self._context.set_input_shape(self._input, shape):
            raise BackendError(
                f"TensorRT refused input shape {shape} for '{self.path}' (its profile takes batches "
                f"{self._min_batch}..{self._max_batch} of {self.input_shape}); see the TensorRT log above"
            )

    def _allocate(self, name: str, shape: tuple[int, ...], dtype) -> None:
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        host_ptr = _check(self._cudart.cudaMallocHost(nbytes), "cudaMallocHost")
        # registered at once, so _release frees it if a later step fails
        self._host[name] = (int(host_ptr), None)
        buffer = (ctypes.c_uint8 * nbytes).from_address(int(host_ptr))
        host = np.frombuffer(buffer, dtype=dtype).reshape(shape)  # a view of pinned memory
        self._host[name] = (int(host_ptr), host)
        self._device[name] = int(_check(self._cudart.cudaMalloc(nbytes), "cudaMalloc"))
        if not self._context.set_tensor_address(name, self._device[name]):
            raise BackendError(f"TensorRT refused the device address of tensor '{name}' of '{self.path}'")

    @property
    def max_batch(self) -> int:
        return self._max_batch

    @property
    def min_batch(self) -> int:
        return self._min_batch

    @property
    def device(self) -> str:
        return "cuda:0 (TensorRT)"

    def _infer(self, images: np.ndarray) -> np.ndarray:
        cudart = self._cudart
        n = images.shape[0]
        _, host_in = self._host[self._input]
        _, host_out = self._host[self._output]
        host_in[:n] = images
        self._set_input_shape(images.shape)
        h2d = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        d2h = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        in_bytes = images.nbytes
        out_bytes = n * host_out.shape[1] * host_out.itemsize
        _check(
            cudart.cudaMemcpyAsync(
                self._device[self._input], host_in.ctypes.data, in_bytes, h2d, self._stream
            ),
            "copy to device",
        )
        if not self._context.execute_async_v3(int(self._stream)):
            raise BackendError(f"TensorRT execute_async_v3 failed for '{self.path}' (batch {n})")
        _check(
            cudart.cudaMemcpyAsync(
                host_out.ctypes.data, self._device[self._output], out_bytes, d2h, self._stream
            ),
            "copy to host",
        )
        _check(cudart.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")
        return host_out[:n].astype(np.float32)  # always a copy: the pinned buffer is reused by the next call

    def _release(self) -> None:
        cudart = getattr(self, "_cudart", None)
        if cudart is None:  # failed before any CUDA resource was made
            return
        for ptr in self._device.values():
            cudart.cudaFree(ptr)
        for ptr, _ in self._host.values():
            cudart.cudaFreeHost(ptr)
        self._device.clear()
        self._host.clear()
        if self._stream is not None:
            cudart.cudaStreamDestroy(self._stream)
            self._stream = None
        self._context = None
        self._engine = None
