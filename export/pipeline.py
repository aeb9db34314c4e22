"""The whole export step behind ``netvlad-export``: checkpoint -> ONNX (+ FP16, INT8, engines) + parity.json.

Every artifact is first written into a hidden staging folder inside the output folder and moved into place
only when every requested artifact exists and every parity gate passed (or ``force``): a failure at any
point leaves the output folder as it was, apart from ``parity.json`` when a gate was missed.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from export.config import ExportConfig
from export.images import ImageSet, fixed_images, iter_batches, load_images, open_image_set
from runtime import ModelCard, read_card
from runtime.datasets import is_dataset_spec
from runtime.errors import ArtifactError, DatasetError, ModelCardError, ParityError
from runtime.files import clean_stale, output_lock
from runtime.protocol import EVAL_RADIUS_M, MODEL_SUFFIXES, is_engine

log = logging.getLogger(__name__)

ProgressFactory = Callable[..., Any]  # like runtime.cli.console.progress(total=..., desc=..., unit=...)
REFERENCE = "PyTorch FP32 (reference)"
STAGING_PREFIX = ".export-"  # hidden folder inside the output where artifacts are made


@dataclass(frozen=True)
class ExportResult:
    """What :func:`run_export` wrote: artifact paths (by name) and the parity reports."""

    out_dir: Path
    artifacts: dict[str, Path]
    reports: tuple[Any, ...]
    parity_json: Path


def check_output_folder(out_dir: Path, fingerprint: str, names: Sequence[str], overwrite: bool) -> None:
    """Refuse an output folder that holds artifacts of another model (different weights fingerprint), or,
    unless ``overwrite``, an artifact of one of ``names`` (what this export will write)."""
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise ArtifactError(f"output '{out_dir}' exists and is not a folder; choose another --out")
    for path in sorted(p for p in out_dir.iterdir() if p.suffix.lower() in MODEL_SUFFIXES and p.is_file()):
        try:
            card = read_card(path)
        except ModelCardError as exc:
            raise ArtifactError(
                f"output folder '{out_dir}' holds '{path.name}', which is not a netvlad-kit artifact of "
                f"this model ({exc}); choose another --out or remove it"
            ) from exc
        if card.weights_fingerprint != fingerprint:
            raise ArtifactError(
                f"output folder '{out_dir}' holds artifacts of another model: '{path.name}' has weights "
                f"fingerprint {card.weights_fingerprint}, this checkpoint is {fingerprint}; choose another "
                "--out, or delete the old artifacts first"
            )
    existing = [n for n in names if (out_dir / n).exists()]
    if existing and not overwrite:
        raise ArtifactError(
            f"output folder '{out_dir}' already holds {', '.join(existing)}; pass --overwrite to replace "
            "them, or choose another --out"
        )


def validation_subset(spec: str, limit: int, radius_m: float = EVAL_RADIUS_M) -> Any:
    """The validation dataset, at most ``limit`` database images and ``limit`` queries, evenly spaced;
    queries without a database image within ``radius_m`` dropped."""
    from runtime import open_dataset

    dataset = open_dataset(spec)

    def pick(n: int) -> np.ndarray:
        return np.unique(np.linspace(0, n - 1, min(n, limit)).round().astype(int))

    db, q = pick(dataset.num_db), pick(dataset.num_queries)
    subset = dataset.select(db, q).without_unmatched_queries(radius_m)
    if subset.num_queries == 0:
        raise DatasetError(
            f"validation set '{spec}': no query has a database image within {radius_m} m among the "
            f"{len(db)} database images used; raise the validation limit or use another set"
        )
    return subset


def open_artifact(path: Path, threads: int) -> Any:
    """The runtime backend a robot would run ``path`` with: ONNX Runtime's CPU provider, or TensorRT."""
    from runtime import open_backend

    if is_engine(path):
        return open_backend(path, "tensorrt")
    return open_backend(path, "onnxruntime-cpu", threads=threads)


def describe_files(
    backends: Mapping[str, Any], paths: Sequence[Path], card: ModelCard, progress: Any = None
) -> dict[str, np.ndarray]:
    """Descriptors ``(N, D)`` of image files through every backend (each file decoded once)."""
    parts: dict[str, list[np.ndarray]] = {name: [] for name in backends}
    update = progress.update if progress is not None else None
    for batch in iter_batches(paths, card, 32):  # (B, H, W, 3)
        for name, backend in backends.items():
            parts[name].append(backend.infer(batch, batch_size=8, progress=update))
    return {name: np.concatenate(p) for name, p in parts.items()}


def measure_parity(
    model: Any,
    artifacts: dict[str, Path],
    cfg: ExportConfig,
    calibration: ImageSet | None,
    progress: ProgressFactory | None = None,
) -> list[Any]:
    """Parity reports of every artifact against the FP32 PyTorch ``model`` (see :mod:`export.parity`).

    Both sides run through the runtime's :class:`~runtime.model.backends.base.Backend` interface: the reference as
    :class:`training.model.TorchBackend`, each artifact through the backend a robot would run it with.
    """
    from export.parity import compare_images, compare_retrieval
    from training.backend import TorchBackend

    card = model.card()
    overrides = dict(cfg.parity_thresholds or {})
    spec = cfg.validation or (
        cfg.calibration if cfg.calibration and is_dataset_spec(cfg.calibration) else None
    )
    backends: dict[str, Any] = {}
    try:
        backends[REFERENCE] = TorchBackend(model)
        for name, path in artifacts.items():
            backends[name] = open_artifact(path, cfg.threads)
        precisions = {name: b.card.precision for name, b in backends.items()}
        reports = []
        if spec is not None:
            dataset = validation_subset(spec, cfg.validation_limit)
            paths = [dataset.image_path("database", i) for i in range(dataset.num_db)]
            paths += [dataset.image_path("queries", i) for i in range(dataset.num_queries)]
            positives = dataset.positives(EVAL_RADIUS_M)
            what = f"{dataset.name}: {dataset.num_db} database images, {dataset.num_queries} queries"
            bar = progress(total=len(paths) * len(backends), desc="parity", unit="img") if progress else None
            described = describe_files(backends, paths, card, bar)
            if bar is not None:
                bar.close()
            ref, split = described.pop(REFERENCE), dataset.num_db
            for name, cand in described.items():
                reports.append(
                    compare_retrieval(
                        name,
                        precisions[name],
                        (ref[:split], ref[split:]),
                        (cand[:split], cand[split:]),
                        positives,
                        what,
                        thresholds=overrides.get(precisions[name]),
                    )
                )
        else:
            log.warning(
                "no validation dataset (--val DATASET, or a dataset as --calib): parity gates descriptor "
                "cosine only, not recall"
            )
            images = fixed_images(card, cfg.fixed_images)
            what = f"{len(images)} fixed images"
            if calibration is not None:
                extra = load_images(list(calibration.subset(64).paths), card)
                images, what = np.concatenate([images, extra]), f"{what} + {len(extra)} calibration images"
            ref = backends[REFERENCE].infer(images, batch_size=8)
            for name in artifacts:
                cand = backends[name].infer(images, batch_size=8)
                precision = precisions[name]
                reports.append(
                    compare_images(name, precision, ref, cand, what, thresholds=overrides.get(precision))
                )
        return reports
    finally:
        for backend in backends.values():
            backend.close()


def planned_names(cfg: ExportConfig) -> list[str]:
    """The artifact file names ``cfg`` asks for (engine names assume TensorRT builds every variant)."""
    from export.fp16 import fp16_path
    from export.quantize import int8_path
    from export.tensorrt import engine_path

    fp32 = Path("model.onnx")
    onnx = [fp32] + ([fp16_path(fp32)] if cfg.fp16 else [])
    onnx += [int8_path(fp32, t) for t in cfg.int8_targets] if cfg.int8 else []
    engines = [engine_path(p) for p in onnx if not p.name.endswith("-cpu.onnx")] if cfg.engine else []
    return [p.name for p in onnx + engines]


def _move(path: Path, out_dir: Path) -> Path:
    """Move a staged artifact (and an engine's card sidecar) into ``out_dir``; returns its new path."""
    sidecar = path.with_name(path.name + ".json")
    if sidecar.is_file():
        os.replace(sidecar, out_dir / sidecar.name)
    os.replace(path, out_dir / path.name)
    return out_dir / path.name


def run_export(
    checkpoint: str | os.PathLike,
    out_dir: str | os.PathLike,
    cfg: ExportConfig | None = None,
    progress: ProgressFactory | None = None,
) -> ExportResult:
    """Export ``checkpoint`` into ``out_dir`` (see :func:`_export`), as the only writer of ``out_dir``.

    A second export to the same folder meanwhile is refused (:class:`OutputError` naming this PID); the
    staging folders of an export that was killed are removed first.
    """
    if Path(out_dir).exists() and not Path(out_dir).is_dir():
        raise ArtifactError(f"output '{out_dir}' exists and is not a folder; choose another --out")
    with output_lock(out_dir, "export folder"):
        clean_stale(out_dir, extra_patterns=(f"{STAGING_PREFIX}*",))
        return _export(checkpoint, out_dir, cfg, progress)


def _export(
    checkpoint: str | os.PathLike,
    out_dir: str | os.PathLike,
    cfg: ExportConfig | None = None,
    progress: ProgressFactory | None = None,
) -> ExportResult:
    """Export ``checkpoint`` into ``out_dir`` as ``cfg`` asks; returns what was written.

    Writes ``model.onnx`` always, ``model.fp16.onnx`` (``fp16``), ``model.int8.onnx`` /
    ``model.int8-cpu.onnx`` (``int8``, per ``int8_targets``), ``*.engine`` + ``*.engine.json`` for every ONNX
    variant TensorRT can build (``engine``), and ``parity.json``. Each artifact that passes its parity gate
    is kept; when one misses its gate the others are still kept and :class:`ParityError` names the refused
    ones, why, and what to do for their precision (``cfg.force`` keeps them all). An existing artifact is
    replaced only with ``cfg.overwrite``. The kit's other errors come for bad input, before any work where
    possible.
    """
    from export import fp16 as fp16_step
    from export import quantize as quantize_step
    from export.onnx import export_place_model
    from export.parity import format_table, gate_message, write_parity_json
    from training.checkpoint import load_model

    cfg = cfg or ExportConfig()
    out_dir = Path(out_dir)
    calibration = open_image_set(cfg.calibration).subset(cfg.calibration_images) if cfg.int8 else None
    if cfg.engine:
        from runtime.optional import require

        require("tensorrt", "building TensorRT engines (--engine)")  # fail before minutes of work
    model = load_model(checkpoint)
    fingerprint = model.fingerprint()
    check_output_folder(out_dir, fingerprint, planned_names(cfg), cfg.overwrite)
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=out_dir))
    try:
        artifacts: dict[str, Path] = {}
        fp32 = export_place_model(model, staging / "model.onnx", cfg, source=str(checkpoint))
        artifacts[fp32.name] = fp32
        if cfg.fp16:
            path = fp16_step.convert_fp16(fp32, fp16_step.fp16_path(fp32))
            artifacts[path.name] = path
        if cfg.int8:
            assert calibration is not None
            for target in cfg.int8_targets:
                bar = (
                    progress(total=len(calibration), desc=f"calibrating int8 ({target})", unit="img")
                    if progress
                    else None
                )
                path = quantize_step.quantize_int8(
                    fp32,
                    quantize_step.int8_path(fp32, target),
                    calibration,
                    quantize_step.QuantizeConfig(target=target),
                    progress=bar.update if bar is not None else None,
                )
                if bar is not None:
                    bar.close()
                artifacts[path.name] = path
        if cfg.engine:
            from export.tensorrt import build_engine

            for name in [n for n in artifacts if not n.endswith("-cpu.onnx")]:
                engine = build_engine(
                    artifacts[name],
                    batch=cfg.batch,
                    timing_cache=out_dir / "timing.cache",
                    workspace_mib=cfg.workspace_mib,
                )
                artifacts[engine.name] = engine
        reports = measure_parity(model, artifacts, cfg, calibration, progress)
        log.info("parity against the FP32 PyTorch model:\n%s", format_table(reports))
        parity_json = write_parity_json(
            out_dir / "parity.json",
            reports,
            checkpoint=str(checkpoint),
            weights_fingerprint=fingerprint,
            calibration=None if calibration is None else calibration.description,
            forced=cfg.force,
        )
        failed = [r for r in reports if not r.passed]
        final: dict[str, Path] = {}
        for name, path in artifacts.items():
            if cfg.force or name not in {r.artifact for r in failed}:
                final[name] = _move(path, out_dir)
        if failed and cfg.force:
            log.warning("parity gate missed, kept because forced: %s", gate_message(failed))
        elif failed:
            kept = ", ".join(final) or "nothing"
            raise ParityError(
                f"parity gate missed: {gate_message(failed)}. Refused {', '.join(r.artifact for r in failed)} "
                f"(see {parity_json}); kept {kept} in '{out_dir}'. Pass --force to keep the refused ones anyway"
            )
        return ExportResult(out_dir, final, tuple(reports), parity_json)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
