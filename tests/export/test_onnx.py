"""ONNX export: graph shape and ops, model card, dynamic batch, parity with PyTorch, atomic failure."""

from __future__ import annotations

import numpy as np
import pytest

from runtime.errors import ArtifactError, ParityError
from runtime.model.card import read_onnx_card
from tests.conftest import requires_torch

pytestmark = requires_torch


def test_exported_graph_is_clean_and_dynamic(tiny_onnx, tiny_model):
    import onnx

    from export.onnx import head_op_counts, summarize_graph

    proto = onnx.load(str(tiny_onnx))
    onnx.checker.check_model(proto, full_check=True)
    s = summarize_graph(proto)
    assert s.opset >= 17
    assert s.input_type == onnx.TensorProto.UINT8
    assert s.input_shape[1:] == (64, 96, 3) and isinstance(s.input_shape[0], str)
    assert s.output_shape[1:] == (tiny_model.descriptor_dim,)
    assert not {"Where", "Equal", "If", "Loop"} & set(s.op_counts)
    # loop-free NetVLAD: one soft assignment, one aggregation product, a short head
    assert s.op_counts["Softmax"] == 1 and s.op_counts["MatMul"] == 1
    head = head_op_counts(proto)
    assert max(head.values()) < 8 and sum(head.values()) < 20, head
    # the dynamo exporter folds the static "same" padding into the convolutions
    assert "Pad" not in s.op_counts


def test_card_in_metadata(tiny_onnx, tiny_model):
    card = read_onnx_card(tiny_onnx)
    assert card.precision == "fp32"
    assert card.weights_fingerprint == tiny_model.fingerprint()
    assert (card.input_height, card.input_width, card.num_clusters) == (64, 96, 8)
    assert card.extra["exporter"] == "dynamo"
    assert card.extra["onnx_vs_torch_worst_cosine"] >= 0.9999


def test_descriptors_match_pytorch_at_any_batch(tiny_onnx, tiny_model):
    from export.images import fixed_images
    from runtime import open_backend
    from training.backend import TorchBackend

    card = read_onnx_card(tiny_onnx)
    images = fixed_images(card, 5, seed=3)
    with open_backend(tiny_onnx, "onnxruntime-cpu", threads=1) as onnx, TorchBackend(tiny_model) as torch:
        ref = torch.infer(images)
        outs = [onnx.infer(images, batch_size=batch) for batch in (1, 5)]
    for out in outs:
        cos = (out * ref).sum(1)
        assert out.shape == (5, tiny_model.descriptor_dim)
        assert cos.min() >= 0.9999
        np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)


def test_unrolled_netvlad_is_rejected(tiny_model):
    """A per-cluster loop (every public port) exports K Softmax-free blocks: check_graph must refuse it."""
    import torch

    from export.config import ExportConfig
    from export.onnx import check_graph, trace_deploy_model
    from training.model import netvlad_loop_reference

    class Looped(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, images):
            x = images.float().permute(0, 3, 1, 2) / 255.0
            return netvlad_loop_reference(self.model.netvlad, self.model.local_features(x))

    card = tiny_model.card()
    proto = trace_deploy_model(Looped(tiny_model).eval(), card, ExportConfig(exporter="legacy", opset=17))
    with pytest.raises(ArtifactError, match=r"NetVLAD is unrolled per cluster: ops repeated >= K=8 times"):
        check_graph(proto, card, source="looped.onnx")


@pytest.mark.slow
def test_missed_parity_writes_nothing(tiny_checkpoint, tmp_path):
    from export.config import ExportConfig
    from export.onnx import export_onnx

    out = tmp_path / "model.onnx"
    # an impossible gate (cosine > 1) must fail and leave the folder empty
    cfg = ExportConfig.preset("quick", onnx_min_cosine=1.0, fixed_images=2)
    try:
        export_onnx(tiny_checkpoint, out, cfg)
    except ParityError as exc:
        assert "worst cosine" in str(exc) and "nothing was written" in str(exc)
        assert list(tmp_path.iterdir()) == []
    else:  # bit-exact agreement is possible; then the file must be complete
        assert read_onnx_card(out).precision == "fp32"
