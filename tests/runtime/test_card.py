import json

import pytest

from runtime.errors import ModelCardError, NetVLADKitError
from runtime.model.card import (
    CARD_FORMAT_VERSION,
    ONNX_METADATA_KEY,
    ModelCard,
    attach_to_onnx,
    fingerprint_arrays,
    read_onnx_card,
    read_sidecar,
    sidecar_path,
    write_sidecar,
)


def make_card(**changes):
    fields = dict(
        backbone="efficientnet_lite0",
        input_height=240,
        input_width=320,
        num_clusters=64,
        local_dim=112,
        descriptor_dim=64 * 112,
        weights_fingerprint="0123456789abcdef",
    )
    fields.update(changes)
    return ModelCard(**fields)


def test_card_round_trips_through_json_and_metadata():
    card = make_card(whitening_dim=4096, descriptor_dim=4096, extra={"note": "x"})
    assert ModelCard.from_json(card.to_json()) == card
    meta = card.to_metadata()
    assert list(meta) == [ONNX_METADATA_KEY]
    assert ModelCard.from_metadata(meta, "m.onnx") == card
    assert card.mean == (0.485, 0.456, 0.406)


def test_card_is_frozen():
    card = make_card()
    with pytest.raises(AttributeError):
        card.input_height = 10


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"input_height": 0}, "input_height must be a positive integer, got 0"),
        (
            {"descriptor_dim": 100},
            "without whitening descriptor_dim must be num_clusters * local_dim = 7168, got 100",
        ),
        ({"whitening_dim": 512}, "descriptor_dim (7168) must equal whitening_dim (512)"),
        ({"precision": "int4"}, "precision must be one of ('fp32', 'fp16', 'int8'), got 'int4'"),
        ({"precision": "int8"}, "an int8 card must name its calibration set"),
        ({"input_dtype": "float32"}, "input must be uint8 NHWC, got float32 NHWC"),
    ],
)
def test_card_validation_names_the_problem(changes, message):
    with pytest.raises(ModelCardError, match="invalid model card") as info:
        make_card(**changes)
    assert message in str(info.value)
    assert isinstance(info.value, ValueError) and isinstance(info.value, NetVLADKitError)


def test_newer_format_version_says_what_to_do():
    data = make_card().to_dict()
    data["format_version"] = CARD_FORMAT_VERSION + 1
    with pytest.raises(ModelCardError) as info:
        ModelCard.from_dict(data, "model.onnx")
    msg = str(info.value)
    assert msg.startswith(
        "model.onnx: model card format version 2 is newer than this netvlad-kit understands"
    )
    assert "upgrade netvlad-kit" in msg


def test_metadata_without_card_is_explained():
    with pytest.raises(
        ModelCardError, match=r"'foreign.onnx' has no netvlad-kit model card .* netvlad-export"
    ):
        ModelCard.from_metadata({"producer": "someone"}, "foreign.onnx")


def test_unknown_fields_and_bad_json_are_refused():
    data = make_card().to_dict() | {"colour": "red"}
    with pytest.raises(ModelCardError, match=r"unknown fields \['colour'\]"):
        ModelCard.from_dict(data, "x")
    with pytest.raises(ModelCardError, match="x.json: model card is not valid JSON"):
        ModelCard.from_json("{", "x.json")


def test_onnx_metadata_round_trip(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    node = helper.make_node("Identity", ["image"], ["descriptor"])
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("descriptor", TensorProto.FLOAT, [1])],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    card = make_card(precision="int8", calibration="200 map images of synth-small")
    attach_to_onnx(proto, card)
    attach_to_onnx(proto, card)  # replacing, not duplicating
    assert [p.key for p in proto.metadata_props] == [ONNX_METADATA_KEY]
    path = tmp_path / "m.onnx"
    onnx.save(proto, str(path))
    assert read_onnx_card(path) == card

    plain = tmp_path / "plain.onnx"
    onnx.save(helper.make_model(graph), str(plain))
    with pytest.raises(ModelCardError, match="has no netvlad-kit model card"):
        read_onnx_card(plain)

    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(path.read_bytes()[:40])
    with pytest.raises(ModelCardError, match="cannot be read as an ONNX model"):
        read_onnx_card(truncated)


def test_engine_sidecar_round_trip(tmp_path):
    engine = tmp_path / "model.fp16.engine"
    engine.write_bytes(b"\0" * 8)
    with pytest.raises(
        ModelCardError, match=r"has no model card: expected its JSON sidecar at '.*model.fp16.engine.json'"
    ):
        read_sidecar(engine)
    card = make_card(precision="fp16")
    path = write_sidecar(engine, card)
    assert path == sidecar_path(engine) == tmp_path / "model.fp16.engine.json"
    assert json.loads(path.read_text())["precision"] == "fp16"
    assert read_sidecar(engine) == card


def test_fingerprint_is_order_free_and_sensitive():
    import numpy as np

    a, b = np.arange(6, dtype=np.float32).reshape(2, 3), np.ones(4, dtype=np.float32)
    fp = fingerprint_arrays([("a", a), ("b", b)])
    assert fp == fingerprint_arrays([("b", b), ("a", a)])
    assert len(fp) == 16
    b2 = b.copy()
    b2[0] = np.nextafter(b2[0], 2)
    assert fingerprint_arrays([("a", a), ("b", b2)]) != fp
    assert fingerprint_arrays([("a", a.reshape(3, 2)), ("b", b)]) != fp
