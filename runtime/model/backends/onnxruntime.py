"""ONNX Runtime backend: CPU, CUDA or TensorRT execution provider; FP32, FP16 and INT8 (QDQ) models.

The provider is chosen explicitly (``"cpu"``, ``"cuda"``, ``"tensorrt"``) or by ``"auto"``, which takes CUDA
when onnxruntime-gpu sees a device and CPU otherwise, and logs what it picked and why (the TensorRT
provider compiles an engine on first run, minutes, so it is never picked implicitly). A requested provider
that ONNX Runtime cannot load is an error, never a silent fallback to CPU. On the GPU the input and output
are bound with IO binding (one uint8 upload per batch, one float32 download); with ``cuda_graph=True`` and a
model of fixed batch size, the CUDA provider captures the run once as a CUDA graph over fixed device buffers
and replays it. The model card is read from the ONNX file's ``metadata_props``.

The TensorRT provider's options follow the card (:func:`tensorrt_provider_options`): reduced precision only
where the card names it, engines cached under a key made of the card's weights fingerprint, precision and
batch range, and an optimisation profile spanning that batch range so that a new batch size does not
rebuild the engine.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from runtime.errors import ArtifactError, BackendError, ConfigError
from runtime.model.backends.base import Backend, check_graph_input, check_model_file
from runtime.model.card import ModelCard, read_onnx_card
from runtime.optional import require

log = logging.getLogger(__name__)

PROVIDER_NAMES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}
PROVIDER_CHOICES = ("auto", *PROVIDER_NAMES)
# The batch range of the TensorRT provider's optimisation profile when the card names none (export's
# BatchRange default, "MIN:OPT:MAX").
DEFAULT_BATCH_RANGE = "1:8:32"


def batch_range(card: ModelCard) -> tuple[int, int, int]:
    """``(min, opt, max)`` batch of ``card`` (``extra["batch"]``, written at export), else the default."""
    text = str(card.extra.get("batch", DEFAULT_BATCH_RANGE))
    try:
        lo, opt, hi = (int(v) for v in text.split(":"))
    except ValueError:
        raise ArtifactError(
            f"the model card's batch range {text!r} is not MIN:OPT:MAX; re-export the model with netvlad-export"
        ) from None
    if not 1 <= lo <= opt <= hi:
        raise ArtifactError(
            f"the model card's batch range {text!r} must satisfy 1 <= MIN <= OPT <= MAX; re-export the model"
        )
    return lo, opt, hi


def tensorrt_provider_options(card: ModelCard, cache_dir: str | Path) -> dict[str, str]:
    """ONNX Runtime TensorRT provider options for the model ``card`` describes (all values strings).

    - Precision follows the card: ``trt_fp16_enable`` only for an fp16 card (the FP16 ONNX), never for an
      fp32 one, so TensorRT cannot run a float32 model, or its float32 NetVLAD head, in FP16 behind the
      user's back (for an fp16 card the flag lets TensorRT choose FP16 for any layer, the head included;
      ``benchmarks/gpu/run.sh`` measures that parity against the CPU);
      ``trt_int8_enable`` only for an int8 (QDQ) card, whose Q/DQ nodes place the INT8 layers
      (no calibration table: the scales are in the graph). Whether TensorRT needs the flag for a QDQ model
      is checked on a GPU by ``benchmarks/gpu/run.sh`` (its ``qdq_int8_flag`` section).
    - The engine cache key (``trt_engine_cache_prefix``) is the card's weights fingerprint, precision and
      batch range, so a re-exported ``model.onnx`` with new weights never reuses a stale engine.
    - The optimisation profile spans the card's batch range (:func:`batch_range`), so any batch within it
      runs on one engine instead of rebuilding (minutes) for each new batch size.
    """
    lo, opt, hi = batch_range(card)
    h, w = card.input_height, card.input_width

    def shape(batch: int) -> str:
        return f"{card.input_name}:{batch}x{h}x{w}x3"  # NHWC, the kit's model input

    return {
        "trt_fp16_enable": "True" if card.precision == "fp16" else "False",
        "trt_int8_enable": "True" if card.precision == "int8" else "False",
        "trt_engine_cache_enable": "True",
        "trt_engine_cache_path": str(cache_dir),
        "trt_engine_cache_prefix": f"netvlad-{card.weights_fingerprint}-{card.precision}-b{lo}-{opt}-{hi}",
        "trt_timing_cache_enable": "True",
        "trt_timing_cache_path": str(cache_dir),
        "trt_profile_min_shapes": shape(lo),
        "trt_profile_opt_shapes": shape(opt),
        "trt_profile_max_shapes": shape(hi),
    }


def choose_provider(provider: str, available: list[str]) -> str:
    """Resolve ``provider`` ("auto", "cpu", "cuda", "tensorrt") against ONNX Runtime's available providers."""
    if provider not in PROVIDER_CHOICES:
        raise ConfigError(f"provider must be one of {PROVIDER_CHOICES}, got {provider!r}")
    if provider == "auto":
        if PROVIDER_NAMES["cuda"] in available:
            log.info("onnxruntime provider auto -> cuda (CUDAExecutionProvider is available)")
            return "cuda"
        log.info("onnxruntime provider auto -> cpu (no CUDAExecutionProvider in %s)", available)
        return "cpu"
    if PROVIDER_NAMES[provider] not in available:
        raise BackendError(
            f"onnxruntime provider '{provider}' ({PROVIDER_NAMES[provider]}) is not available in this "
            f"installation (available: {available}); install onnxruntime-gpu with: "
            "pip install 'netvlad-kit[gpu]', or choose provider 'cpu'"
        )
    return provider


def create_session(
    model: Any,
    providers: Sequence[Any] = (PROVIDER_NAMES["cpu"],),
    threads: int | None = None,
    optimized_model_path: str | Path | None = None,
) -> Any:
    """The kit's one ONNX Runtime session setup: an ``onnxruntime.InferenceSession`` over ``model``.

    ``model``: a path, serialised bytes or an ``onnx.ModelProto``. ``providers``: ONNX Runtime's provider
    list (names or ``(name, options)`` pairs), first choice first. ``threads``: intra-op threads (None: one
    per core), one inter-op thread, idle threads sleep rather than spin. Full graph optimisation; ONNX
    Runtime's own console logging is kept to errors (the kit logs through ``logging``). ``optimized_model_path``: also write the optimised graph
    there (to inspect the kernels that run). A model ONNX Runtime cannot load raises :class:`ArtifactError`.
    """
    ort = require("onnxruntime", "running ONNX models")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only; e.g. the NCHWc "hardware specific" warning is noise
    if threads is not None:
        if not isinstance(threads, int) or threads < 0:
            raise ConfigError(f"threads must be an integer >= 0 (0: one per core), got {threads!r}")
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    # Idle intra-op threads sleep instead of spinning: the kit's sessions share the CPU with decoding and the
    # map search, which spinning threads starve (live, 30 FPS, 2 cores: search stage p50 8.5-8.8 -> 4.4-5.0
    # ms, capture-to-result / inference p50 1.51-1.83 -> 1.46-1.50, three runs each, side by side).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if optimized_model_path is not None:
        options.optimized_model_filepath = str(optimized_model_path)
    if hasattr(model, "SerializeToString"):
        source, name = model.SerializeToString(), "the in-memory ONNX model"
    elif isinstance(model, (bytes, bytearray)):
        source, name = bytes(model), "the in-memory ONNX model"
    else:
        source, name = str(model), f"'{model}'"
    try:
        return ort.InferenceSession(source, sess_options=options, providers=list(providers))
    except Exception as exc:  # InvalidProtobuf, Fail, NoSuchFile, ...
        raise ArtifactError(
            f"{name} cannot be loaded by onnxruntime ({type(exc).__name__}: {str(exc).strip()[:300]}); "
            "the file is truncated, corrupt or not ONNX. Re-export it with netvlad-export"
        ) from exc


class OnnxRuntimeBackend(Backend):
    """An ``onnxruntime.InferenceSession`` over an exported ``.onnx`` model (card in its metadata)."""

    name = "onnxruntime"

    def __init__(
        self,
        path: str | Path,
        provider: str = "auto",
        threads: int | None = None,
        cache_dir: str | Path | None = None,
        cuda_graph: bool = False,
    ) -> None:
        """Open ``path``. ``threads``: intra-op threads (None: ONNX Runtime's default, one per core).

        ``cache_dir``: where the TensorRT provider keeps its compiled engines (default: ``.trt-cache``
        beside the model). ``cuda_graph``: capture and replay the CUDA provider's run as a CUDA graph; needs
        provider ``cuda`` and a model exported with a fixed batch size (every call then takes that batch).
        """
        ort = require("onnxruntime", "running ONNX models")
        path = check_model_file(path, "ONNX model")
        self.provider = choose_provider(provider, ort.get_available_providers())
        if cuda_graph and self.provider != "cuda":
            raise ConfigError(
                f"cuda_graph needs provider 'cuda', got '{self.provider}'; drop cuda_graph or choose provider 'cuda'"
            )
        self.cuda_graph = bool(cuda_graph)
        session = create_session(path, self._provider_list(path, cache_dir), threads)
        card = ModelCard.from_metadata(session.get_modelmeta().custom_metadata_map, str(path))
        super().__init__(path, card)
        wanted = PROVIDER_NAMES[self.provider]
        if session.get_providers()[0] != wanted:
            raise BackendError(
                f"onnxruntime could not start {wanted} for '{path}' (session runs on "
                f"{session.get_providers()}); check the CUDA/TensorRT libraries or choose provider 'cpu'"
            )
        self._session = session
        inputs, outputs = session.get_inputs(), session.get_outputs()
        if len(inputs) != 1 or inputs[0].type != "tensor(uint8)":
            raise ArtifactError(
                f"'{path}' must take one uint8 NHWC image tensor, it takes "
                f"{[(i.name, i.type, i.shape) for i in inputs]}; re-export it with netvlad-export"
            )
        check_graph_input(path, card, inputs[0].shape)
        self._input_name = inputs[0].name
        self._output_name = outputs[0].name
        batch_dim = inputs[0].shape[0]
        self._fixed_batch = batch_dim if isinstance(batch_dim, int) and batch_dim > 0 else None
        self._on_gpu = self.provider in ("cuda", "tensorrt")
        self._graph = None
        if self.cuda_graph:
            self._graph = self._bind_graph_buffers(ort)
        log.info("opened %s%s", self.describe(), " with a CUDA graph" if self.cuda_graph else "")

    def _provider_list(self, path: Path, cache_dir: str | Path | None) -> list:
        cpu = PROVIDER_NAMES["cpu"]
        if self.provider == "cpu":
            return [cpu]
        if self.provider == "cuda":
            return [(PROVIDER_NAMES["cuda"], {"enable_cuda_graph": "1" if self.cuda_graph else "0"}), cpu]
        card = read_onnx_card(path)  # the options below follow the card, read before the session exists
        cache = Path(cache_dir) if cache_dir else path.parent / ".trt-cache"
        os.makedirs(cache, exist_ok=True)
        trt_options = tensorrt_provider_options(card, cache)
        log.info("TensorRT provider options for '%s': %s", path.name, trt_options)
        return [(PROVIDER_NAMES["tensorrt"], trt_options), PROVIDER_NAMES["cuda"], cpu]

    def _bind_graph_buffers(self, ort):
        """Fixed device buffers bound once, as a CUDA graph replays the same addresses on every run."""
        if self._fixed_batch is None:
            raise ConfigError(
                f"cuda_graph needs a model with a fixed batch size, but '{self.path}' takes any batch; "
                "export it with a fixed batch, or drop cuda_graph"
            )
        h, w, c = self.input_shape
        images = ort.OrtValue.ortvalue_from_shape_and_type([self._fixed_batch, h, w, c], np.uint8, "cuda", 0)
        descriptors = ort.OrtValue.ortvalue_from_shape_and_type(
            [self._fixed_batch, self.card.descriptor_dim], np.float32, "cuda", 0
        )
        binding = self._session.io_binding()
        binding.bind_ortvalue_input(self._input_name, images)
        binding.bind_ortvalue_output(self._output_name, descriptors)
        return images, descriptors, binding, threading.Lock()

    @property
    def device(self) -> str:
        return PROVIDER_NAMES[self.provider]

    def _infer(self, images: np.ndarray) -> np.ndarray:
        if self._graph is not None:
            return self._infer_cuda_graph(images)
        if self._on_gpu:
            return self._infer_io_binding(images)
        (out,) = self._session.run([self._output_name], {self._input_name: images})
        return np.asarray(out, dtype=np.float32)

    def _infer_io_binding(self, images: np.ndarray) -> np.ndarray:
        """GPU path: upload the uint8 batch once, keep the output on the device until one copy back."""
        ort = require("onnxruntime")
        binding = self._session.io_binding()
        binding.bind_ortvalue_input(self._input_name, ort.OrtValue.ortvalue_from_numpy(images, "cuda", 0))
        binding.bind_output(self._output_name, "cuda", 0)
        self._session.run_with_iobinding(binding)
        return np.asarray(binding.copy_outputs_to_cpu()[0], dtype=np.float32)

    def _infer_cuda_graph(self, images: np.ndarray) -> np.ndarray:
        """Copy the batch into the bound input buffer, replay the graph (captured on the first run), copy back."""
        inputs, outputs, binding, lock = self._graph
        with lock:  # one set of bound buffers: one run at a time
            inputs.update_inplace(images)
            self._session.run_with_iobinding(binding)
            return np.array(outputs.numpy(), dtype=np.float32)  # a new host array owned by the caller

    def _release(self) -> None:
        self._graph = None
        self._session = None
