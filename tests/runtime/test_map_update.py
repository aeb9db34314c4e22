"""Maps that grow and shrink (netvlad-map add/remove) and Localizer.reload(): real FAISS, real ONNX Runtime."""

from __future__ import annotations

import re
import threading

import numpy as np
import pytest
from typer.testing import CliRunner

from runtime import Localizer, open_backend
from runtime.cli.map import app as map_app
from runtime.errors import ConfigError, MapMismatchError
from runtime.map import (
    MapConfig,
    add_to_map,
    build_map,
    extract_descriptors,
    open_map,
    read_map_meta,
    remove_from_map,
)
from runtime.map.build import PROJECTION_FILE
from runtime.map.index import faiss_module
from runtime.map.places import Places
from runtime.map.whitening import MapProjection
from tests.runtime.helpers import make_onnx_model, make_stand_in_world

runner = CliRunner()


@pytest.fixture(scope="module")
def worlds(tmp_path_factory):
    root = tmp_path_factory.mktemp("grow")
    model, card = make_onnx_model(root / "model.onnx")
    first = make_stand_in_world(root / "first", places=30, seed=1, size=(48, 64))
    # a second stretch 10 km further east, in another folder
    second = make_stand_in_world(
        root / "second", places=20, seed=2, size=(48, 64), origin=(510000.0, 5000000.0)
    )
    with open_backend(model) as backend:
        descriptors = {
            f"{name}_db": extract_descriptors(backend, lambda i, d=d: d.read_image("database", i), d.num_db)
            for name, d in (("first", first), ("second", second))
        }
    return {"root": root, "model": model, "card": card, "first": first, "second": second, **descriptors}


def _stored(map_dir) -> np.ndarray:
    """A map's descriptors as stored: the float16 file of a map of codes, the flat or fp16 index's rows."""
    meta = read_map_meta(map_dir)
    if meta["index"]["type"] in ("flat", "fp16"):
        index = faiss_module().read_index(str(map_dir / "index.faiss"))
        return index.reconstruct_n(0, index.ntotal)
    return np.load(map_dir / "descriptors.f16.npy").astype(np.float32)


def _in_map_space(map_dir, descriptors: np.ndarray) -> np.ndarray:
    """Model descriptors in a map's space: centred on the mean of the places it was built with (kept by
    add and remove), L2-normalised."""
    return MapProjection.load(map_dir / PROJECTION_FILE).apply(descriptors)


def _quantisers(map_dir) -> tuple[np.ndarray, np.ndarray]:
    faiss = faiss_module()
    index = faiss.read_index(str(map_dir / "index.faiss"))  # keep it alive while its parts are read
    ivf = faiss.extract_index_ivf(index)
    coarse = ivf.quantizer.reconstruct_n(0, ivf.nlist)
    return coarse, faiss.vector_to_array(faiss.downcast_index(ivf).pq.centroids).copy()


@pytest.mark.parametrize("kind", ["flat", "fp16", "sq8", "ivfpq"])
def test_add_appends_places_with_the_same_quantisers_and_updates_calibration(worlds, tmp_path, kind):
    map_dir = build_map(
        worlds["model"], worlds["first"], tmp_path / "map", MapConfig(index=kind, faiss_threads=1)
    )
    before = read_map_meta(map_dir)
    if kind == "ivfpq":
        quantisers = _quantisers(map_dir)
    assert add_to_map(map_dir, worlds["model"], worlds["second"], faiss_threads=1) == 20
    meta = read_map_meta(map_dir)
    assert meta["count"] == 50 and meta["revision"] == 1 and before["revision"] == 0
    assert meta["history"][-1]["op"] == "add" and meta["history"][-1]["places"] == 20
    assert meta["calibration"]["samples"] == 50 and before["calibration"]["samples"] == 30
    assert meta["index"]["factory"] == before["index"]["factory"]
    places = Places.read_csv(map_dir / "places.csv")
    # the first dataset's images stay relative to the map's root; the second's are recorded in full
    assert places.images[0] == "database/0000.png"
    assert places.images[30] == str(worlds["second"].root.resolve() / "database/0000.png")
    assert places.utm[30].tolist() == [510000.0, 5000000.0]
    stored = _stored(map_dir)
    reference = _in_map_space(map_dir, np.concatenate([worlds["first_db"], worlds["second_db"]]))
    np.testing.assert_allclose(stored, reference, atol=1e-6 if kind == "flat" else 1e-3)
    if kind == "ivfpq":  # the IVF quantiser and PQ codebooks were reused, not retrained
        for old, new in zip(quantisers, _quantisers(map_dir), strict=True):
            np.testing.assert_array_equal(old, new)
        assert meta["index"]["recall_vs_exact"]["queries"] == 50
    with Localizer.open(worlds["model"], map_dir) as localizer:
        second = worlds["second"]
        hits = [
            localizer.localize(second.read_image("queries", i), color="RGB").best.place_id for i in range(20)
        ]
        assert hits == list(range(30, 50))


def test_add_refuses_another_model_and_images_already_in_the_map(worlds, tmp_path):
    map_dir = build_map(worlds["model"], worlds["first"], tmp_path / "map", MapConfig(faiss_threads=1))
    other, other_card = make_onnx_model(tmp_path / "other.onnx", seed=7)
    expected = (
        f"map '{map_dir}' was built with model {worlds['card'].weights_fingerprint} (64-D) but '{other}' is "
        f"{other_card.weights_fingerprint} (64-D); add with the map's model ('model.onnx'), or rebuild the "
        "map with this one"
    )
    with pytest.raises(MapMismatchError, match=re.escape(expected)):
        add_to_map(map_dir, other, worlds["second"])
    expected = (
        f"30 of the 30 images of 'first' are already in map '{map_dir}' (first: 'database/0000.png'); remove "
        f"them first with: netvlad-map remove --map {map_dir} --image PATTERN"
    )
    with pytest.raises(ConfigError, match=re.escape(expected)):
        add_to_map(map_dir, worlds["model"], worlds["first"])
    assert read_map_meta(map_dir)["revision"] == 0  # nothing was written


@pytest.mark.parametrize("kind", ["flat", "fp16", "sq8", "ivfpq"])
def test_remove_by_image_and_region_keeps_the_rest_in_order(worlds, tmp_path, kind):
    map_dir = build_map(
        worlds["model"], worlds["first"], tmp_path / "map", MapConfig(index=kind, faiss_threads=1)
    )
    reference = _in_map_space(map_dir, worlds["first_db"])
    # places 0..9 by image pattern, and the box around places 25..29 (eastings 500750..500870)
    removed = remove_from_map(
        map_dir, images=["database/000*.png"], region=(500740.0, 4999990.0, 501000.0, 5000010.0)
    )
    assert removed == 15
    meta = read_map_meta(map_dir)
    assert meta["count"] == 15 and meta["revision"] == 1 and meta["calibration"]["samples"] == 15
    places = Places.read_csv(map_dir / "places.csv")
    assert places.images == tuple(f"database/{i:04d}.png" for i in range(10, 25))
    np.testing.assert_allclose(_stored(map_dir), reference[10:25], atol=1e-6 if kind == "flat" else 1e-3)
    if kind == "ivfpq":
        assert faiss_module().read_index(str(map_dir / "index.faiss")).ntotal == 15
    with Localizer.open(worlds["model"], map_dir) as localizer:
        assert localizer.localize(worlds["first"].read_image("queries", 12), color="RGB").best.place_id == 2


def test_remove_refuses_nothing_and_everything(worlds, tmp_path):
    map_dir = build_map(worlds["model"], worlds["first"], tmp_path / "map", MapConfig(faiss_threads=1))
    expected = f"no place of map '{map_dir}' matches images ['queries/*']; nothing removed"
    with pytest.raises(ConfigError, match=re.escape(expected)):
        remove_from_map(map_dir, images=["queries/*"])
    expected = f"images ['database/*'] matches all 30 places of map '{map_dir}'; delete the map instead of emptying it"
    with pytest.raises(ConfigError, match=re.escape(expected)):
        remove_from_map(map_dir, images=["database/*"])
    with pytest.raises(ConfigError, match=re.escape("region must be easting_min,northing_min,easting_max")):
        remove_from_map(map_dir, region=(1.0, 1.0, 0.0, 0.0))
    assert read_map_meta(map_dir)["revision"] == 0


def test_reload_switches_a_running_localizer_to_the_changed_map(worlds, tmp_path):
    map_dir = build_map(worlds["model"], worlds["first"], tmp_path / "map", MapConfig(faiss_threads=1))
    second = worlds["second"]
    query = second.read_image("queries", 4)
    with Localizer.open(worlds["model"], map_dir) as localizer:
        assert localizer.reload() is False  # unchanged
        assert localizer.localize(query, color="RGB").best.place_id < 30  # not in the map yet
        errors, seen = [], []

        def localise_meanwhile() -> None:  # frames keep coming while the map is swapped
            try:
                for _ in range(40):
                    result = localizer.localize(query, color="RGB")
                    seen.append((len(localizer.map), result.best.place_id))
            except BaseException as exc:  # pragma: no cover - the assertion below reports it
                errors.append(exc)

        thread = threading.Thread(target=localise_meanwhile)
        thread.start()
        add_to_map(map_dir, worlds["model"], second, faiss_threads=1)
        assert localizer.reload() is True
        thread.join()
        assert errors == []
        assert all(0 <= place < 50 for _, place in seen)
        assert len(localizer.map) == 50 and localizer.map.revision == 1
        assert localizer.localize(query, color="RGB").best.place_id == 34
        remove_from_map(map_dir, region=(509000.0, 4999000.0, 511000.0, 5001000.0))
        assert localizer.reload() is True and len(localizer.map) == 30


def test_cli_add_and_remove(worlds, tmp_path):
    map_dir = build_map(worlds["model"], worlds["first"], tmp_path / "map", MapConfig(faiss_threads=1))
    result = runner.invoke(
        map_app,
        [
            "add",
            "--map",
            str(map_dir),
            "--dataset",
            str(worlds["second"].root),
            "--model",
            str(worlds["model"]),
            "-q",
        ],
    )
    assert result.exit_code == 0, result.output
    assert result.output.strip().endswith(f"{map_dir}: added 20 places")
    result = runner.invoke(map_app, ["remove", "--map", str(map_dir), "--image", "database/001*.png", "-q"])
    assert result.exit_code == 0, result.output
    assert result.output.strip().endswith(f"{map_dir}: removed 10 places")
    assert read_map_meta(map_dir)["count"] == 40
    result = runner.invoke(map_app, ["remove", "--map", str(map_dir), "--region", "1,2,x"])
    assert result.exit_code == 2
    assert "--region must be four numbers easting_min,northing_min,easting_max,northing_max, got '1,2,x'" in (
        result.output
    )


def test_a_self_contained_map_keeps_its_images_inside_when_it_grows_and_shrinks(worlds, tmp_path):
    config = MapConfig(embed_images=True, faiss_threads=1)
    map_dir = build_map(worlds["model"], worlds["first"], tmp_path / "map", config)
    add_to_map(map_dir, worlds["model"], worlds["second"], faiss_threads=1)
    opened = open_map(map_dir)
    assert opened.meta["dataset"]["root"] == "images"
    assert opened.places.images[0] == "database/0000.png"
    assert opened.places.images[30] == "added-r1/database/0000.png"
    assert all(opened.image_path(i).is_file() for i in range(50))
    assert opened.image_path(30).read_bytes() == (worlds["second"].root / "database/0000.png").read_bytes()
    remove_from_map(map_dir, images=["added-r1/*"])
    opened = open_map(map_dir)
    assert len(opened) == 30 and all(opened.image_path(i).is_file() for i in range(30))
    assert not (map_dir / "images" / "added-r1").exists()
