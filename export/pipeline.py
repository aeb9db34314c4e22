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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from export.config import ExportConfig
from export.images import ImageSet, fixed_images, iter_batches, load_images, open_image_set
from runtime.card import ModelCard, read_onnx_card, read_sidecar
from runtime.errors import ArtifactError, DatasetError, ModelCardError
from runtime.outputs import clean_stale, output_lock
from runtime.protocol import EVAL_RADIUS_M

log = logging.getLogger(__name__)

ProgressFactory = Callable[..., Any]  # like runtime.console.progress(total=..., desc=..., unit=...)
ARTIFACT_PATTERNS = ("*.onnx", "*.engine")
STAGING_PREFIX = ".export-"  # hidden folder inside the output where artifacts are made


@dataclass(frozen=True)
class ExportResult:
    """What :func:`run_export` wrote: artifact paths (by name) and the parity reports."""

    out_dir: Path
    artifacts: dict[str, Path]
    reports: tuple[Any, ...]
    parity_json: Path


def check_output_folder(out_dir: Path, fingerprint: str) -> None:
    """Refuse an output folder that holds artifacts of another model (different weights fingerprint)."""
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise ArtifactError(f"output '{out_dir}' exists and is not a folder; choose another --out")
    for pattern in ARTIFACT_PATTERNS:
        for path in sorted(out_dir.glob(pattern)):
            try:
                card = read_sidecar(path) if path.suffix == ".engine" else read_onnx_card(path)
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


def validation_subset(spec: str, limit: int, radius_m: float = EVAL_RADIUS_M) -> Any:
    """The validation dataset, at most ``limit`` database images and ``limit`` queries, evenly spaced;
    queries without a database image within ``radius_m`` dropped."""
    from runtime.datasets import open_dataset

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


def _is_dataset(spec: str) -> bool:
    path = Path(spec)
    return (
        (path / "database.csv").is_file()
        or spec.startswith(("nordland", "aligned:"))
        or path.suffix == ".mat"
    )


def _describe_with(describe: Callable, paths: list[Path], card: ModelCard, bar: Any) -> np.ndarray:
    parts = []
    for batch in iter_batches(paths, card, 8):
        parts.append(np.asarray(describe(batch), dtype=np.float32))
        if bar is not None:
            bar.update(len(batch))
    return np.concatenate(parts)


def measure_parity(
    model: Any,
    artifacts: dict[str, Path],
    cfg: ExportConfig,
    calibration: ImageSet | None,
    progress: ProgressFactory | None = None,
) -> list[Any]:
    """Parity reports of every artifact against the FP32 PyTorch ``model`` (see :mod:`export.parity`)."""
    from export.onnx import onnx_session, run_session, torch_descriptors
    from export.parity import compare_images, compare_retrieval
    from training.model import DeployModel

    deploy = DeployModel(model).eval()
    card = model.card()
    overrides = dict(cfg.parity_thresholds or {})
    spec = cfg.validation or (cfg.calibration if cfg.calibration and _is_dataset(cfg.calibration) else None)

    def describer(path: Path) -> Callable[[np.ndarray], np.ndarray]:
        if path.suffix == ".onnx":
            session = onnx_session(path, cfg.threads)
            return lambda images: run_session(session, images)
        from runtime.backends import open_backend

        backend = open_backend(path, "tensorrt")
        return lambda images: backend.infer(images, batch_size=16)

    reports = []
    if spec is not None:
        dataset = validation_subset(spec, cfg.validation_limit)
        paths = [dataset.image_path("database", i) for i in range(dataset.num_db)]
        paths += [dataset.image_path("queries", i) for i in range(dataset.num_queries)]
        positives = dataset.positives(EVAL_RADIUS_M)
        what = f"{dataset.name}: {dataset.num_db} database images, {dataset.num_queries} queries"
        total = len(paths) * (1 + len(artifacts))
        bar = progress(total=total, desc="parity", unit="img") if progress else None
        ref = _describe_with(lambda x: torch_descriptors(deploy, x), paths, card, bar)
        split = dataset.num_db
        for name, path in artifacts.items():
            cand = _describe_with(describer(path), paths, card, bar)
            precision = _card_of(path).precision
            reports.append(
                compare_retrieval(
                    name,
                    precision,
                    (ref[:split], ref[split:]),
                    (cand[:split], cand[split:]),
                    positives,
                    what,
                    thresholds=overrides.get(precision),
                )
            )
        if bar is not None:
            bar.close()
    else:
        log.warning(
            "no validation dataset (--val DATASET, or a dataset as --calib): parity gates descriptor cosine "
            "only, not recall"
        )
        images = fixed_images(card, cfg.fixed_images)
        what = f"{len(images)} fixed images"
        if calibration is not None:
            extra = load_images(list(calibration.subset(64).paths), card)
            images, what = np.concatenate([images, extra]), f"{what} + {len(extra)} calibration images"
        ref = torch_descriptors(deploy, images)
        for name, path in artifacts.items():
            cand = describer(path)(images)
            precision = _card_of(path).precision
            reports.append(
                compare_images(name, precision, ref, cand, what, thresholds=overrides.get(precision))
            )
    return reports


def _card_of(path: Path) -> ModelCard:
    return read_sidecar(path) if path.suffix == ".engine" else read_onnx_card(path)


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
    variant TensorRT can build (``engine``), and ``parity.json``. Raises :class:`ParityError` when a gate is
    missed (unless ``cfg.force``), and the kit's other errors for bad input, before any work where possible.
    """
    from export import fp16 as fp16_step
    from export import quantize as quantize_step
    from export.onnx import export_place_model
    from export.parity import check_gate, format_table, write_parity_json
    from training.checkpoint import load_model

    cfg = cfg or ExportConfig()
    out_dir = Path(out_dir)
    calibration = open_image_set(cfg.calibration).subset(cfg.calibration_images) if cfg.int8 else None
    if cfg.engine:
        from runtime.optional import require

        require("tensorrt", "building TensorRT engines (--engine)")  # fail before minutes of work
    model = load_model(checkpoint)
    fingerprint = model.fingerprint()
    check_output_folder(out_dir, fingerprint)
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
        check_gate(reports, force=cfg.force)
        final: dict[str, Path] = {}
        for name, path in artifacts.items():
            os.replace(path, out_dir / name)
            final[name] = out_dir / name
            sidecar = path.with_name(path.name + ".json")
            if sidecar.is_file():
                os.replace(sidecar, out_dir / sidecar.name)
        return ExportResult(out_dir, final, tuple(reports), parity_json)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
