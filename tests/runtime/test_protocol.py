"""The shared pieces every stage calls: protocol constants, read_card, is_dataset_spec, create_session."""

import re

import numpy as np
import pytest

from runtime.datasets import is_dataset_spec
from runtime.errors import ArtifactError, ConfigError, ModelCardError
from runtime.model.backends.onnxruntime import create_session
from runtime.model.card import read_card, write_sidecar
from runtime.protocol import EVAL_RADIUS_M, NEGATIVE_RADIUS_M, POSITIVE_RADIUS_M, is_engine
from tests.runtime.helpers import make_onnx_model


def test_protocol_radii_and_engine_suffixes():
    assert (POSITIVE_RADIUS_M, NEGATIVE_RADIUS_M, EVAL_RADIUS_M) == (10.0, 25.0, 25.0)
    assert [is_engine(p) for p in ("m.engine", "m.PLAN", "m.onnx", "m.engine.json")] == [
        True,
        True,
        False,
        False,
    ]


def test_read_card_by_suffix(tmp_path):
    onnx_path, card = make_onnx_model(tmp_path / "model.onnx")
    assert read_card(onnx_path) == card
    engine = tmp_path / "model.fp16.engine"
    engine.write_bytes(b"not read: the card is the sidecar")
    write_sidecar(engine, card.replace(precision="fp16"))
    assert read_card(engine).precision == "fp16"
    with pytest.raises(ModelCardError, match="has no model card: expected its JSON sidecar"):
        read_card(tmp_path / "other.plan")


def test_is_dataset_spec(tmp_path):
    generic = tmp_path / "world"
    generic.mkdir()
    (generic / "database.csv").write_text("image,easting,northing\n")
    images = tmp_path / "images"
    images.mkdir()
    (images / "a.png").write_bytes(b"")
    nordland = tmp_path / "nord"
    (nordland / "summer").mkdir(parents=True)
    (nordland / "winter").mkdir()
    specs = [
        generic,
        images,
        nordland,
        "nordland",
        "nordland:/x",
        "aligned:a,b",
        "pitts30k_val.mat",
        "missing",
    ]
    assert [is_dataset_spec(s) for s in specs] == [True, False, True, True, True, True, True, False]


def test_create_session_from_bytes_and_its_errors(tmp_path):
    path, _ = make_onnx_model(tmp_path / "model.onnx")
    images = np.random.default_rng(0).integers(0, 256, (2, 48, 64, 3), dtype=np.uint8)
    from_path, from_bytes = create_session(path, threads=1), create_session(path.read_bytes(), threads=1)
    (a,) = from_path.run(None, {"image": images})
    (b,) = from_bytes.run(None, {"image": images})
    np.testing.assert_array_equal(a, b)
    assert from_path.get_providers() == ["CPUExecutionProvider"]
    with pytest.raises(
        ArtifactError, match=re.escape("the in-memory ONNX model cannot be loaded by onnxruntime")
    ):
        create_session(b"garbage")
    with pytest.raises(
        ConfigError, match=re.escape("threads must be an integer >= 0 (0: one per core), got -1")
    ):
        create_session(path, threads=-1)
