"""Map building on Ray (a local 2-worker Ray, real ONNX Runtime actors): the same map as one process."""

from __future__ import annotations

import json
import re
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from runtime.cli.map import app as map_app
from runtime.errors import MissingDependencyError
from runtime.map import MapConfig, build_map, read_map_meta
from runtime.map.index import faiss_module
from tests.runtime.helpers import make_onnx_model, make_stand_in_world

runner = CliRunner()


def _descriptors(map_dir) -> np.ndarray:
    index = faiss_module().read_index(str(map_dir / "index.faiss"))
    return index.reconstruct_n(0, index.ntotal)


@pytest.mark.slow
def test_ray_build_gives_the_single_process_map(tmp_path):
    pytest.importorskip("ray", reason="needs ray (pip install 'netvlad-kit[cluster]')")
    import ray

    from runtime.map.ray_build import build_map_on_ray

    model, _ = make_onnx_model(tmp_path / "model.onnx")
    dataset = make_stand_in_world(tmp_path / "data", places=36, size=(48, 64))
    config = MapConfig(batch_size=8, faiss_threads=1)
    single = build_map(model, dataset, tmp_path / "single", config)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        on_ray = build_map_on_ray(model, dataset, tmp_path / "ray", config, workers=2)
    finally:
        ray.shutdown()
    np.testing.assert_allclose(_descriptors(on_ray), _descriptors(single), atol=1e-5)
    assert (on_ray / "places.csv").read_text() == (single / "places.csv").read_text()
    a, b = read_map_meta(on_ray), read_map_meta(single)
    assert json.dumps(a["calibration"], sort_keys=True) == json.dumps(b["calibration"], sort_keys=True)
    assert a["ray"] == {"address": "local", "workers": 2, "gpus_per_worker": 0.0}
    assert a["build_seconds"]["images_per_s"] > 0
    assert not list(tmp_path.glob(".ray.shards.*"))  # the shards are removed once assembled


def test_ray_build_without_ray_names_the_extra(tmp_path, monkeypatch):
    from runtime.map.ray_build import build_map_on_ray

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(
        MissingDependencyError, match=re.escape("install it with: pip install 'netvlad-kit[cluster]'")
    ):
        build_map_on_ray(tmp_path / "model.onnx", str(tmp_path), tmp_path / "map")
    result = runner.invoke(
        map_app,
        [
            "build",
            "--model",
            str(tmp_path / "m.onnx"),
            "--dataset",
            str(tmp_path),
            "--out",
            str(tmp_path / "map"),
            "--ray",
            "local",
        ],
    )
    assert result.exit_code == 2
    assert "pip install 'netvlad-kit[cluster]'" in result.output
