"""Maps (real FAISS indexes) and the Localizer (real ONNX Runtime) on a small geotagged world on disk."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from runtime import Localizer, LocalizerConfig
from runtime.errors import ArtifactError, ConfigError, MapMismatchError, OutputError
from runtime.evaluation.recall import rank_database, recall_at_n
from runtime.map import MapConfig, build_map, open_map, read_map_meta
from runtime.sources import ImageFolderSource
from tests.runtime.helpers import make_onnx_model, make_stand_in_world


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    model, card = make_onnx_model(root / "model.onnx")
    dataset = make_stand_in_world(root / "data", places=40)
    map_dir = build_map(model, dataset, root / "map")
    return {"root": root, "model": model, "card": card, "dataset": dataset, "map": map_dir}


def test_map_files_and_metadata(world):
    meta = read_map_meta(world["map"])
    card = world["card"]
    assert meta["count"] == 40 and meta["descriptor_dim"] == 64 and meta["metric"] == "inner_product"
    assert meta["model"]["fingerprint"] == card.weights_fingerprint
    assert meta["index"]["type"] == "flat" and meta["dataset"]["split"] == "database"
    # calibrated on the map: 40 images play unmapped places; the verdict flags 90 % of them
    cal = meta["calibration"]
    assert cal["source"] == "map" and cal["samples"] == 40 and cal["impostors"] == 40
    assert cal["evidence_kind"] == "gap"
    assert cal["unknown_below_confidence"] == 0.9 and meta["projection"]["whitening"] is None
    assert cal["unknown_threshold"] == pytest.approx(np.quantile(cal["impostor_quantiles"], 0.9), rel=0.05)
    lines = (world["map"] / "places.csv").read_text().splitlines()
    assert lines[0] == "id,image,easting,northing,heading,time,split"
    assert lines[2] == "1,database/0001.png,500030.000,5000000.000,,,database"
    opened = open_map(world["map"], card)
    assert len(opened) == 40 and opened.image_path(3).is_file()


def test_map_is_written_atomically_and_not_overwritten(world, tmp_path):
    with pytest.raises(OutputError, match="already exists; choose another --out or pass --overwrite"):
        build_map(world["model"], world["dataset"], world["map"])
    # a failing build leaves no directory behind
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(world["model"].read_bytes()[:100])
    with pytest.raises(ArtifactError):
        build_map(broken, world["dataset"], tmp_path / "map")
    assert not (tmp_path / "map").exists()


def test_map_of_another_model_is_refused(world, tmp_path):
    other, other_card = make_onnx_model(tmp_path / "other.onnx", seed=1)
    expected = (
        f"map '{world['map']}' was built with model {world['card'].weights_fingerprint} (64-D) but "
        f"'{other}' is {other_card.weights_fingerprint} (64-D); rebuild it with: netvlad-map build "
        f"--model {other} --dataset {world['dataset'].root.resolve()} --out {world['map']} --overwrite"
    )
    with pytest.raises(MapMismatchError, match=re.escape(expected)):
        Localizer.open(other, world["map"])
    with Localizer.open(other, world["map"], override_map_check=True) as localizer:
        assert localizer.map.descriptor_dim == 64
    wide, _ = make_onnx_model(tmp_path / "wide.onnx", dim=32)
    with pytest.raises(MapMismatchError, match=r"\(64-D\) but .* \(32-D\)"):
        Localizer.open(wide, world["map"], override_map_check=True)


def test_localizer_finds_the_places(world):
    dataset = world["dataset"]
    with Localizer.open(world["model"], world["map"], config=LocalizerConfig(top_k=3)) as localizer:
        with ImageFolderSource(dataset.root / "queries") as source:
            results = list(localizer.run(source))
        assert [r.index for r in results] == list(range(40))
        assert all(r.best.place_id == i for i, r in enumerate(results))
        assert all(not r.unknown and 0 < r.confidence <= 1 for r in results)
        assert all(r.confidence >= localizer.threshold == 0.9 for r in results)
        first = results[0]
        assert first.position == pytest.approx((500000.0, 5000000.0), abs=1e-6)
        assert first.times.inference > 0 and first.times.total >= first.times.inference
        record = json.loads(json.dumps(first.to_record()))
        assert record["matches"][0]["image"] == "database/0000.png" and len(record["matches"]) == 3
        # localize() over the same frames agrees with run(): the same stream state (the query domain's centre)
        for i in range(5):
            localizer.localize(dataset.read_image("queries", i)[:, :, ::-1])  # BGR
        single = localizer.localize(dataset.read_image("queries", 5)[:, :, ::-1])
        assert [m.place_id for m in single.matches] == [m.place_id for m in results[5].matches]
        assert single.best.similarity == pytest.approx(results[5].best.similarity, abs=1e-5)
        # a frame from nowhere in the map is an unknown place
        noise = np.random.default_rng(3).integers(0, 256, (96, 128, 3), dtype=np.uint8)
        assert localizer.localize(noise).unknown
        expected = "a frame must be uint8 (0-255), got float64 (96, 128, 3)"
        with pytest.raises(ConfigError, match=re.escape(expected)):
            localizer.localize(np.zeros((96, 128, 3)))
        with pytest.raises(ConfigError, match=re.escape("got shape (96, 128, 2)")):
            localizer.localize(np.zeros((96, 128, 2), np.uint8))


def test_compressed_index_reports_its_recall(world, tmp_path):
    dataset = make_stand_in_world(tmp_path / "data", places=300, spacing_m=30.0, seed=4, size=(48, 64))
    config = MapConfig(index="ivfpq", pq_m=16, nprobe=4, faiss_threads=1)
    out = build_map(world["model"], dataset, tmp_path / "ivf", config)
    plain = build_map(world["model"], dataset, tmp_path / "ivf-plain", config.replace(rerank=0))
    meta, plain_meta = read_map_meta(out), read_map_meta(plain)
    assert meta["index"]["factory"] == "IVF4,PQ16x6"  # the one sizing rule: 300 places -> 4 lists, 6 bits
    assert meta["index"]["rerank"] == {"candidates": 500, "file": "descriptors.f16.npy", "dtype": "float16"}
    assert "rerank" not in plain_meta["index"]  # its descriptors.f16.npy serves add/remove, not search
    stored = np.load(out / "descriptors.f16.npy")
    assert stored.dtype == np.float16 and stored.shape == (300, 64)
    # re-ranking the compressed candidates exactly finds exact search's top-1; the codes alone do not
    recall, plain_recall = meta["index"]["recall_vs_exact"], plain_meta["index"]["recall_vs_exact"]
    assert recall["queries"] == 300 and recall["recall_at_1"] == 1.0 and recall["recall_at_10"] == 1.0
    assert plain_recall["recall_at_1"] < 0.9 and plain_recall["recall_at_10"] >= 0.8
    exact = build_map(world["model"], dataset, tmp_path / "flat", MapConfig(faiss_threads=1))
    # the compressed map answers as the exact one does: same places, similarities to float16 precision
    with Localizer.open(world["model"], out) as compressed, Localizer.open(world["model"], exact) as flat:
        assert type(compressed.map.index).__name__ == "RerankedIndex"
        for i in range(0, 300, 10):
            image = dataset.read_image("queries", i)
            a, b = compressed.localize(image, color="RGB"), flat.localize(image, color="RGB")
            assert len({m.place_id for m in a.matches} & {m.place_id for m in b.matches}) >= 4
            assert a.best.place_id == b.best.place_id
            assert a.best.similarity == pytest.approx(b.best.similarity, abs=2e-3)
    all_split = build_map(world["model"], dataset, tmp_path / "all", MapConfig(split="all", faiss_threads=1))
    assert read_map_meta(all_split)["count"] == 600


@pytest.mark.parametrize(("kind", "factory"), [("fp16", "SQfp16"), ("sq8", "SQ8")])
def test_scalar_quantised_maps_answer_as_float32_exact_search(world, tmp_path, kind, factory):
    dataset = make_stand_in_world(tmp_path / "data", places=200, spacing_m=30.0, seed=4, size=(48, 64))
    out = build_map(world["model"], dataset, tmp_path / kind, MapConfig(index=kind, faiss_threads=1))
    exact = build_map(world["model"], dataset, tmp_path / "flat", MapConfig(faiss_threads=1))
    index = read_map_meta(out)["index"]
    assert (
        index["type"] == kind
        and index["factory"] == factory
        and index["code_bytes"] == 64 * (2 if kind == "fp16" else 1)
    )
    assert index["gpu_search"] == (
        f"faiss-gpu has no flat scalar-quantised index (this map's is {factory}); rebuild it with --index "
        "flat to search it on the GPU"
    )
    # sq8 stores codes: the float16 descriptors beside them, its top 16 re-ranked against them; fp16 holds them
    assert (out / "descriptors.f16.npy").is_file() == (kind == "sq8")
    rerank = {"candidates": 16, "file": "descriptors.f16.npy", "dtype": "float16"}
    assert index.get("rerank") == (rerank if kind == "sq8" else None)
    assert index["recall_vs_exact"]["queries"] == 200 and index["recall_vs_exact"]["recall_at_1"] >= 0.99
    reopened, reference = open_map(out), open_map(exact)
    assert type(reopened.index).__name__ == ("RerankedIndex" if kind == "sq8" else "IndexScalarQuantizer")
    # noisy revisits of every place, in the maps' space (the same projection: same model, same places)
    rng = np.random.default_rng(5)
    queries = reference.descriptors(np.arange(200)) + 0.05 * rng.standard_normal((200, 64)).astype(np.float32)
    sims, ids = reopened.search_prepared(queries, 5)
    exact_sims, exact_ids = reference.search_prepared(queries, 5)  # float32 exact search
    assert np.mean(ids[:, 0] == exact_ids[:, 0]) >= 0.99
    np.testing.assert_allclose(sims[:, 0], exact_sims[:, 0], atol=2e-3)
    np.testing.assert_allclose(reopened.descriptors(ids[:, 0]), reference.descriptors(ids[:, 0]), atol=2e-3)


def test_compressed_map_without_its_descriptors_is_refused(world, tmp_path):
    dataset = make_stand_in_world(tmp_path / "data", places=60, seed=5)
    out = build_map(world["model"], dataset, tmp_path / "ivf", MapConfig(index="ivfpq", faiss_threads=1))
    (out / "descriptors.f16.npy").unlink()
    expected = f"map '{out}' re-ranks against 'descriptors.f16.npy', which is missing; rebuild the map"
    with pytest.raises(ArtifactError, match=re.escape(expected)):
        open_map(out)


def test_recall_from_the_localizer_equals_exact_ranking(world):
    from runtime import open_backend
    from runtime.map import extract_descriptors

    dataset = world["dataset"]
    with open_backend(world["model"]) as backend:
        db = extract_descriptors(backend, lambda i: dataset.read_image("database", i), dataset.num_db)
        q = extract_descriptors(backend, lambda i: dataset.read_image("queries", i), dataset.num_queries)
    expected = recall_at_n(rank_database(db, q, 5), dataset.positives(25.0), (1, 5))
    with Localizer.open(world["model"], world["map"], config=LocalizerConfig(top_k=5)) as localizer:
        ranked = np.array(
            [
                [
                    m.place_id
                    for m in localizer.localize(dataset.read_image("queries", i), color="RGB").matches
                ]
                for i in range(dataset.num_queries)
            ]
        )
    assert recall_at_n(ranked, dataset.positives(25.0), (1, 5)) == expected


def test_batched_pipeline_gives_the_same_answers(world):
    import threading
    import time

    from runtime import Frame

    dataset = world["dataset"]
    frames = [
        Frame(dataset.read_image("queries", i)[:, :, ::-1], float(i), str(i), i, 0.0, time.perf_counter())
        for i in range(dataset.num_queries)
    ]
    depth = 8

    def queued_up(full: threading.Event):
        """The frames, telling when the feeder asks for the one after a full queue (frame 1 + depth: the
        first frame is with the model, frames 1..depth wait for it)."""
        for frame in frames:
            if frame.index == 1 + depth:
                full.set()
            yield frame

    results, sizes = {}, {}
    for batch in (1, 4):
        config = LocalizerConfig(max_batch=batch, queue_size=depth)
        with Localizer.open(world["model"], world["map"], config=config) as localizer:
            infer, sizes[batch], full = localizer.backend.infer, [], threading.Event()

            def counting_infer(x, _sizes=sizes[batch], _infer=infer, _full=full):
                if not _sizes:  # the first call waits for the queue to fill: the queue, not the clock
                    assert _full.wait(timeout=120), "the feeder never filled the queue"
                _sizes.append(len(x))
                return _infer(x)

            localizer.backend.infer = counting_infer
            results[batch] = list(localizer.run(queued_up(full)))
    assert [r.index for r in results[4]] == list(range(40))
    # the second model call finds at least 5 frames waiting (0..8 were queued, the first call took at most 4)
    assert sizes[1] == [1] * 40 and sum(sizes[4]) == 40 and sizes[4][1] == 4 and max(sizes[4]) == 4
    for a, b in zip(results[1], results[4], strict=True):
        assert [m.place_id for m in a.matches] == [m.place_id for m in b.matches]
        assert a.best.similarity == pytest.approx(b.best.similarity, abs=1e-5)
    with pytest.raises(ConfigError, match="max_batch >= 1"):
        LocalizerConfig(max_batch=0)
