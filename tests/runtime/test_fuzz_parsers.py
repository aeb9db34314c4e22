"""Property-based fuzzing (Hypothesis) of the parsers that read user files: a dataset CSV, a map's
map.json and places.csv, the model card. Whatever the bytes, each either returns a valid object or raises
the kit's own error: never another exception (a traceback for the user), never a NaN that slips through."""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from runtime.datasets import load_generic
from runtime.errors import ArtifactError, DatasetError, ModelCardError
from runtime.map.build import MAP_FORMAT_VERSION
from runtime.map.places import COLUMNS, Places
from runtime.map.store import read_map_meta
from runtime.model.card import ONNX_METADATA_KEY, ModelCard

FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# numbers as people (and broken tools) write them
number_text = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(-(10**12), 10**12).map(str),
    st.sampled_from(["", " ", "nan", "NaN", "inf", "-inf", "1e400", "12.5m", "1,5", "0x10", "--1", "∞"]),
)
cell = st.one_of(number_text, st.text(max_size=12), st.sampled_from(["a.png", "b.png", "a.png "]))


def _csv_text(header: list[str], rows: list[list[str]]) -> str:
    import csv
    import io

    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue()


# -- dataset CSV -----------------------------------------------------------------------------------------
dataset_header = st.sampled_from(
    [["image", "easting", "northing"], ["image", "lat", "lon"], ["image", "easting", "northing", "heading"],
     ["image", "x", "y"], ["image"], []]
)  # fmt: skip


@pytest.mark.slow
@FUZZ
@given(
    header=dataset_header,
    rows=st.lists(st.lists(cell, min_size=0, max_size=5), max_size=8),
    raw=st.one_of(st.none(), st.binary(max_size=200)),
)
def test_a_dataset_csv_loads_or_raises_a_dataset_error(header, rows, raw):
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        good = _csv_text(["image", "easting", "northing"], [["q.png", "1", "2"]])
        (folder / "queries.csv").write_text(good)
        db = folder / "database.csv"
        if raw is not None:
            db.write_bytes(raw)
        else:
            db.write_text(_csv_text(header, rows))
        try:
            dataset = load_generic(folder, check_images=False)
        except DatasetError:
            return
        assert np.isfinite(dataset.db_utm).all() and dataset.db_utm.shape == (dataset.num_db, 2)
        rows_kept = list(zip(dataset.db_images, map(tuple, dataset.db_utm.tolist()), strict=True))
        assert len(rows_kept) == len(set(rows_kept))  # duplicate rows were dropped
        assert all(image and image == image.strip() for image in dataset.db_images)


def test_duplicate_rows_are_dropped_with_a_counted_warning(tmp_path, caplog):
    (tmp_path / "queries.csv").write_text("image,easting,northing\nq.png,1,2\n")
    (tmp_path / "database.csv").write_text(
        "image,easting,northing\na.png,1,2\nb.png,5,2\na.png,1,2\na.png,1,2\nb.png,9,2\n"
    )
    with caplog.at_level("WARNING", logger="runtime.datasets.generic"):
        dataset = load_generic(tmp_path, check_images=False)
    assert dataset.db_images == ("a.png", "b.png", "b.png") and dataset.db_utm[:, 0].tolist() == [1, 5, 9]
    assert [r.getMessage() for r in caplog.records] == [
        f"{tmp_path / 'database.csv'}: dropped 2 duplicate row(s) (an image listed again with the same values); "
        "3 rows kept"
    ]


# -- places.csv ------------------------------------------------------------------------------------------
@pytest.mark.slow
@FUZZ
@given(
    rows=st.lists(
        st.tuples(
            st.one_of(st.integers(-2, 6).map(str), cell),
            cell,
            number_text,
            number_text,
            st.one_of(st.just(""), number_text),
            st.one_of(st.just(""), number_text),
            st.sampled_from(["database", "queries", ""]),
        ).map(list),
        max_size=6,
    ),
    header=st.one_of(st.just(list(COLUMNS)), st.lists(st.sampled_from(COLUMNS), max_size=7)),
    raw=st.one_of(st.none(), st.binary(max_size=200)),
    short=st.booleans(),
)
def test_places_csv_reads_or_raises_an_artifact_error(rows, header, raw, short):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "places.csv"
        if raw is not None:
            path.write_bytes(raw)
        else:
            path.write_text(_csv_text(header, [r[:-2] if short else r for r in rows]))
        try:
            places = Places.read_csv(path)
        except ArtifactError:
            return
        n = len(places)
        assert places.utm.shape == (n, 2) and np.isfinite(places.utm).all()
        assert places.heading.shape == (n,) and not np.isinf(places.heading).any()
        assert all(places.images)


def test_places_csv_errors_name_the_row(tmp_path):
    path = tmp_path / "places.csv"
    head = ",".join(COLUMNS) + "\n"
    for body, problem in [
        ("0,a.png,1,2,,,database\n1,b.png,inf,2,,,database\n", "easting is 'inf', not a finite number"),
        ("0,a.png,1,2,,,database\n5,b.png,1,2,,,database\n", "id '5' where 1 belongs (ids count from 0)"),
        ("0,,1,2,,,database\n", "no image"),
        ("0,a.png,1\n", "7 fields expected"),
    ]:
        path.write_text(head + body)
        try:
            Places.read_csv(path)
        except ArtifactError as exc:
            row = 3 if body.count("\n") == 2 else 2
            assert str(exc) == f"'{path}' row {row} is malformed ({problem}); rebuild the map"
        else:
            raise AssertionError(f"{body!r} was accepted")


# -- map.json --------------------------------------------------------------------------------------------
json_value = st.recursive(
    st.one_of(
        st.none(), st.booleans(), st.integers(-5, 10**6), st.floats(allow_nan=False), st.text(max_size=8)
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)
meta_like = st.fixed_dictionaries(
    {"format_version": st.sampled_from([MAP_FORMAT_VERSION, MAP_FORMAT_VERSION - 1, "3", None])},
    optional={
        "count": json_value | st.integers(-1, 100),
        "descriptor_dim": json_value | st.integers(0, 4096),
        "model": json_value | st.fixed_dictionaries({"fingerprint": json_value | st.text(max_size=16)}),
        "dataset": json_value | st.fixed_dictionaries({"root": json_value}),
        "index": json_value | st.just({}),
        "calibration": json_value | st.just({}),
    },
)


@pytest.mark.slow
@FUZZ
@given(meta=st.one_of(meta_like, json_value), raw=st.one_of(st.none(), st.binary(max_size=100)))
def test_map_json_reads_or_raises_an_artifact_error(meta, raw):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp)
        (path / "map.json").write_bytes(raw if raw is not None else json.dumps(meta).encode())
        try:
            read = read_map_meta(path)
        except ArtifactError:
            return
        assert isinstance(read["count"], int) and read["count"] >= 0 and read["descriptor_dim"] >= 1
        assert isinstance(read["model"]["fingerprint"], str) and isinstance(read["dataset"]["root"], str)


def test_a_map_json_field_of_the_wrong_kind_is_named(tmp_path):
    meta = {"format_version": MAP_FORMAT_VERSION, "count": 3, "descriptor_dim": "64", "model": {}}
    (tmp_path / "map.json").write_text(json.dumps(meta))
    try:
        read_map_meta(tmp_path)
    except ArtifactError as exc:
        assert str(exc) == (
            f"'{tmp_path / 'map.json'}' field 'descriptor_dim' must be an integer >= 1, found '64'; the map is "
            "damaged or was edited by hand: rebuild it with netvlad-map build"
        )
    else:
        raise AssertionError("accepted")


# -- the model card --------------------------------------------------------------------------------------
_CARD = json.loads(ModelCard(
    backbone="test", input_height=48, input_width=64, num_clusters=8, local_dim=3, descriptor_dim=64,
    whitening_dim=64, weights_fingerprint="0123456789abcdef",
).to_json())  # fmt: skip


triple = st.lists(
    st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-3, 3), st.text(max_size=3)),
    min_size=0,
    max_size=4,
)


@pytest.mark.slow
@FUZZ
@given(
    changes=st.dictionaries(st.sampled_from(sorted(_CARD)), json_value | triple, max_size=3),
    drop=st.lists(st.sampled_from(sorted(_CARD)), max_size=2),
    extra=st.dictionaries(st.text(max_size=6), json_value, max_size=2),
    raw=st.one_of(st.none(), st.text(max_size=60)),
)
@example(changes={"mean": ["a", "b", "c"]}, drop=[], extra={}, raw=None)  # once a ValueError traceback
@example(changes={"std": [math.nan, 1.0, 1.0]}, drop=[], extra={}, raw=None)  # once accepted
def test_a_model_card_reads_or_raises_a_model_card_error(changes, drop, extra, raw):
    data = {k: v for k, v in {**_CARD, **changes, **extra}.items() if k not in drop}
    text = raw if raw is not None else json.dumps(data)
    try:
        card = ModelCard.from_metadata({ONNX_METADATA_KEY: text} if raw is None else {"x": text}, "fuzz.onnx")
    except ModelCardError:
        return
    assert card.input_height >= 1 and card.input_width >= 1 and card.descriptor_dim >= 1
    assert isinstance(card.weights_fingerprint, str)
    assert all(not isinstance(v, float) or math.isfinite(v) for v in card.to_dict().values())
