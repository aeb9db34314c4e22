"""netvlad-bench floor: the model's multiply-accumulates, the machine's peaks, every stage beside its floor."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.floor import FloorConfig, model_macs, run_floor
from runtime.errors import ConfigError


def test_model_macs_counts_convolutions_and_matrix_products(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    weights = numpy_helper.from_array(np.zeros((4, 3, 3, 3), np.float32), "w")
    grouped = numpy_helper.from_array(np.zeros((4, 1, 3, 3), np.float32), "g")  # depthwise: 4 groups
    project = numpy_helper.from_array(np.zeros((256, 10), np.float32), "p")
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1]),  # (1, 4, 8, 8)
            helper.make_node("Conv", ["y", "g"], ["z"], pads=[1, 1, 1, 1], group=4),  # (1, 4, 8, 8)
            helper.make_node("Flatten", ["z"], ["f"]),  # (1, 256)
            helper.make_node("MatMul", ["f", "p"], ["out"]),  # (1, 10)
        ],
        "macs",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", 10])],
        [weights, grouped, project],
    )
    path = tmp_path / "macs.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    # 4 x 8 x 8 outputs x 3 x 3 x 3; depthwise 4 x 8 x 8 x 1 x 3 x 3; 256 x 10
    assert model_macs(path) == 4 * 64 * 27 + 4 * 64 * 9 + 2560


def test_floor_reports_every_stage_beside_its_floor(bench_world, tmp_path):
    model = bench_world.models / "model.onnx"
    result = run_floor([model], tmp_path, FloorConfig(places=200, repeats=5, warmup=1))
    assert set(result["peaks"]) == {"fp32_gflops", "int8_gops", "copy_gbs"}
    assert all(v is None or v > 0 for v in result["peaks"].values())
    names = [s["stage"] for s in result["stages"]]
    assert names[0] == "inference model.onnx (onnxruntime-cpu)"
    assert names[-2:] == ["exact search, 200 places", "sequence update, 200 places"]
    dim = result["stages"][-1]["bound"]
    assert "200 x " in dim and "float32" in dim
    inference = result["stages"][0]
    assert inference["gmacs"] == pytest.approx(model_macs(model) / 1e9, abs=1e-4) and inference["gmacs"] > 0
    assert all(s["floor_ms"] > 0 and s["p50_ms"] > 0 for s in result["stages"])
    assert (tmp_path / "floor.md").read_text().startswith("# Each stage against its floor")


def test_floor_needs_a_model(tmp_path):
    with pytest.raises(ConfigError, match="name at least one model"):
        run_floor([], tmp_path)
