"""Test helpers for the runtime: a small but real ONNX place model, and a small geotagged world on disk.

The model follows the kit's I/O contract exactly (uint8 NHWC RGB in, L2-normalised float32 (N, D) out,
model card in metadata_props) so the real ONNX Runtime path is exercised:
image -> Cast -> NCHW -> AveragePool(p) -> Flatten -> minus its mean -> random projection -> L2.
"""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np

from runtime.model.card import ModelCard, attach_to_onnx, fingerprint_arrays


def make_onnx_model(
    path: Path,
    height: int = 48,
    width: int = 64,
    pool: int = 4,
    dim: int = 64,
    seed: int = 0,
    batch: int | str = "N",
    precision: str = "fp32",
) -> tuple[Path, ModelCard]:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    cells = (height // pool) * (width // pool)
    features = 3 * cells
    projection = (rng.standard_normal((features, dim)) / np.sqrt(features)).astype(np.float32)
    card = ModelCard(
        backbone="test-avgpool",
        input_height=height,
        input_width=width,
        num_clusters=cells,
        local_dim=3,
        descriptor_dim=dim,
        whitening_dim=dim,
        weights_fingerprint=fingerprint_arrays([("projection", projection)]),
        precision=precision,
        calibration="test" if precision == "int8" else None,
    )
    nodes = [
        helper.make_node("Cast", ["image"], ["x_f"], to=TensorProto.FLOAT),
        helper.make_node("Transpose", ["x_f"], ["x_nchw"], perm=[0, 3, 1, 2]),  # (N, 3, H, W)
        helper.make_node(
            "AveragePool", ["x_nchw"], ["pooled"], kernel_shape=[pool, pool], strides=[pool, pool]
        ),
        helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),  # (N, 3 * H/p * W/p)
        helper.make_node("ReduceMean", ["flat"], ["mean"], axes=[1], keepdims=1),
        helper.make_node("Sub", ["flat", "mean"], ["centred"]),
        helper.make_node("MatMul", ["centred", "projection"], ["projected"]),  # (N, D)
        helper.make_node("LpNormalization", ["projected"], ["descriptor"], axis=1, p=2),
    ]
    weights = numpy_helper.from_array(projection, "projection")
    if precision == "fp16":  # the projection runs in float16 between two casts, like a converted model
        weights = numpy_helper.from_array(projection.astype(np.float16), "projection")
        nodes[6:7] = [
            helper.make_node("Cast", ["centred"], ["centred16"], to=TensorProto.FLOAT16),
            helper.make_node("MatMul", ["centred16", "projection"], ["projected16"]),
            helper.make_node("Cast", ["projected16"], ["projected"], to=TensorProto.FLOAT),
        ]
    graph = helper.make_graph(
        nodes,
        "test_place_model",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, [batch, height, width, 3])],
        [helper.make_tensor_value_info("descriptor", TensorProto.FLOAT, [batch, dim])],
        initializer=[weights],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    attach_to_onnx(model, card)
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    if precision == "int8":  # real QDQ quantisation by ONNX Runtime's tools, calibrated on random images
        _quantize_qdq(path, height, width, seed)
    return path, card


def _quantize_qdq(path: Path, height: int, width: int, seed: int) -> None:
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from runtime.model.card import read_onnx_card

    rng = np.random.default_rng(seed)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(
                [{"image": rng.integers(0, 256, (1, height, width, 3), dtype=np.uint8)} for _ in range(8)]
            )

        def get_next(self):
            return next(self.batches, None)

    card = read_onnx_card(path)
    fp32 = path.with_name(path.stem + ".fp32.onnx")
    path.rename(fp32)
    quantize_static(
        str(fp32),
        str(path),
        Reader(),
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=["MatMul"],
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
    )
    model = onnx.load(str(path))
    attach_to_onnx(model, card)
    onnx.save(model, str(path))


def place_image(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A smooth random colour image (a 'place'); BGR uint8."""
    small = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


def _as_query(seen: np.ndarray, rng: np.random.Generator, noise: int, contrast: float) -> np.ndarray:
    """A query image of a scene (float BGR): contrast about mid-grey, noise, a 3-pixel shift; uint8."""
    seen = 128.0 + contrast * (seen - 128.0) if contrast != 1.0 else seen
    noisy = np.clip(seen + rng.integers(-noise, noise + 1, seen.shape), 0, 255).astype(np.uint8)
    return np.roll(noisy, 3, axis=1)


def make_stand_in_world(
    root: Path,
    places: int = 40,
    spacing_m: float = 30.0,
    seed: int = 0,
    size=(96, 128),
    noise: int = 20,
    distract: float = 0.0,
    origin: tuple[float, float] = (500000.0, 5000000.0),
    unmapped: int = 0,
    contrast: float = 1.0,
):
    """A route of ``places`` distinct places along a line; database and query images per place, CSVs too.

    Queries are the place image with noise and a small shift, so a pooled-pixel model recognises them;
    ``distract`` blends a random unrelated scene into each query (0: none, 1: only the distractor).
    ``origin``: UTM (easting, northing) of the first place; the route runs east.
    ``contrast`` scales the queries' contrast about mid-grey (a change of domain: < 1 is dimmer, flatter).
    ``unmapped``: that many query images of places not in the database (``unmapped.csv``, ``unmapped/``,
    10 km north), taken under the queries' conditions.
    """
    rng = np.random.default_rng(seed)
    h, w = size
    (root / "database").mkdir(parents=True, exist_ok=True)
    (root / "queries").mkdir(parents=True, exist_ok=True)
    db, q = [], []
    utm = np.stack([origin[0] + spacing_m * np.arange(places), np.full(places, origin[1])], axis=1)
    for i in range(places):
        image = place_image(rng, h, w)
        cv2.imwrite(str(root / "database" / f"{i:04d}.png"), image)
        seen = image.astype(np.float64)
        if distract:  # blend in an unrelated scene: some queries become ambiguous
            seen = (1 - distract) * seen + distract * place_image(rng, h, w)
        cv2.imwrite(str(root / "queries" / f"{i:04d}.png"), _as_query(seen, rng, noise, contrast))
        db.append(f"database/{i:04d}.png")
        q.append(f"queries/{i:04d}.png")
    q_utm = utm + np.array([2.0, 1.0])
    splits = [("database", db, utm), ("queries", q, q_utm)]
    if unmapped:
        (root / "unmapped").mkdir(exist_ok=True)
        names = [f"unmapped/u{i:04d}.png" for i in range(unmapped)]
        for name in names:
            scene = place_image(rng, h, w).astype(np.float64)
            cv2.imwrite(str(root / name), _as_query(scene, rng, noise, contrast))
        far = np.stack(  # 10 km north of the route: no place within any radius
            [origin[0] + spacing_m * np.arange(unmapped), np.full(unmapped, origin[1] + 10_000.0)], axis=1
        )
        splits.append(("unmapped", names, far))
    for split, names, coords in splits:
        with open(root / f"{split}.csv", "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["image", "easting", "northing"])
            for name, (e, n) in zip(names, coords, strict=True):
                writer.writerow([name, f"{e:.2f}", f"{n:.2f}"])
    from runtime.datasets import load_generic

    return load_generic(root)


def make_ambiguous_route(root: Path, places: int = 60, seed: int = 7):
    """A tiny model, a route of ``places`` places 10 m apart whose queries each blend in an unrelated scene
    (60 %), so single frames are ambiguous and sequences help, and its map: ``(model, dataset, map_dir)``."""
    from runtime import MapConfig, build_map

    model, _ = make_onnx_model(root / "model.onnx")
    dataset = make_stand_in_world(
        root / "data", places=places, spacing_m=10.0, seed=seed, size=(48, 64), noise=30, distract=0.6
    )
    return model, dataset, build_map(model, dataset, root / "map", MapConfig(faiss_threads=1))
