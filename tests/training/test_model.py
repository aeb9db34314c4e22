"""The model contract: loop-free NetVLAD == loop reference, clean ONNX graph, DeployModel == PlaceModel."""

from __future__ import annotations

import collections

import numpy as np
import pytest

from runtime.optional import available
from tests.conftest import requires_torch, requires_torchvision

pytestmark = requires_torch

torch = pytest.importorskip("torch")

from runtime.errors import ConfigError, MissingDependencyError  # noqa: E402
from training.model import (  # noqa: E402
    DeployModel,
    ModelConfig,
    NetVLAD,
    PlaceModel,
    build_model,
    fit_pca_whitening,
    netvlad_loop_reference,
    normalize_images,
)


def _random_layer(k: int, d: int, seed: int = 0) -> NetVLAD:
    torch.manual_seed(seed)
    layer = NetVLAD(k, d)
    with torch.no_grad():
        layer.assignment.weight.normal_(0, 1.0)
        layer.assignment.bias.normal_(0, 1.0)
        layer.centroids.normal_(0, 0.3)
    return layer.eval()


def test_loop_free_equals_loop_reference_to_float32_rounding():
    layer = _random_layer(16, 32)
    x = torch.randn(3, 32, 6, 9, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        fast, ref = layer(x), netvlad_loop_reference(layer, x)
    assert fast.shape == (3, 16 * 32)
    assert torch.max(torch.abs(fast - ref)).item() < 2e-6
    assert torch.allclose(fast.norm(dim=1), torch.ones(3), atol=1e-6)
    # the float64 version of the same computation agrees with both to float32 precision
    with torch.no_grad():
        ref64 = netvlad_loop_reference(layer.double(), x.double()).float()
    assert torch.max(torch.abs(fast - ref64)).item() < 2e-6


def test_loop_free_gradients_match_loop_reference():
    layer = _random_layer(4, 8)
    x = torch.randn(2, 8, 3, 4, generator=torch.Generator().manual_seed(2))
    target = torch.randn(2, 32, generator=torch.Generator().manual_seed(3))
    grads = []
    for fn in (layer, lambda t: netvlad_loop_reference(layer, t)):
        layer.zero_grad()
        (fn(x) * target).sum().backward()
        grads.append([p.grad.clone() for p in layer.parameters()])
    for a, b in zip(*grads, strict=True):
        assert torch.allclose(a, b, atol=1e-5)


def test_zero_features_give_finite_output():
    layer = _random_layer(4, 8)
    with torch.no_grad():
        out = layer(torch.zeros(1, 8, 2, 2))
    assert torch.isfinite(out).all()


def test_v2_initialisation_turns_assignment_into_distance_softmax():
    layer = NetVLAD(5, 6)
    centroids = torch.nn.functional.normalize(torch.randn(5, 6), dim=1)
    layer.init_from_centroids(centroids, alpha=3.0)
    x = torch.nn.functional.normalize(torch.randn(1, 6, 2, 3), dim=1)
    soft = layer.soft_assignment(x)[0]  # (K, N)
    dist2 = ((x[0].flatten(1).T[:, None, :] - centroids[None]) ** 2).sum(-1)  # (N, K)
    expected = torch.softmax(-3.0 * dist2, dim=1).T
    assert torch.allclose(soft, expected, atol=1e-6)


def _export_ops(module, args, path) -> collections.Counter:
    import onnx

    torch.onnx.export(module, args, str(path), dynamo=False, input_names=["x"], output_names=["y"])
    return collections.Counter(node.op_type for node in onnx.load(str(path)).graph.node)


@pytest.mark.skipif(not available("onnx"), reason="needs onnx")
def test_exported_layer_is_not_unrolled_per_cluster_and_has_no_where(tmp_path):
    counts = {}
    for k in (4, 16):
        counts[k] = _export_ops(_random_layer(k, 8), (torch.randn(1, 8, 3, 5),), tmp_path / f"k{k}.onnx")
        assert not {"Where", "Equal", "If", "Loop"} & set(counts[k]), counts[k]
    # the graph does not grow with K: no per-cluster copies
    assert sum(counts[4].values()) == sum(counts[16].values())
    assert counts[4]["MatMul"] == 1

    # the loop reference does unroll (what the test would catch if the layer regressed to it)
    class Loop(torch.nn.Module):
        def __init__(self, layer):
            super().__init__()
            self.layer = layer

        def forward(self, x):
            return netvlad_loop_reference(self.layer, x)

    loop4 = _export_ops(Loop(_random_layer(4, 8)), (torch.randn(1, 8, 3, 5),), tmp_path / "l4.onnx")
    loop16 = _export_ops(Loop(_random_layer(16, 8)), (torch.randn(1, 8, 3, 5),), tmp_path / "l16.onnx")
    assert sum(loop16.values()) > sum(loop4.values()) + 12 * 3


@pytest.fixture(scope="module")
def tiny_model() -> PlaceModel:
    torch.manual_seed(0)
    model = build_model(ModelConfig.preset("tiny"))
    with torch.no_grad():
        model.netvlad.centroids.normal_(0, 0.1)
    return model.eval()


def test_place_model_shapes_card_and_frozen_split(tiny_model):
    cfg = tiny_model.config
    assert cfg.local_dim == 112 and cfg.descriptor_dim == 8 * 112
    x = torch.randn(2, 3, cfg.input_height, cfg.input_width)
    with torch.no_grad():
        frozen = tiny_model.frozen_features(x)
        assert frozen.shape == (2, 80, 4, 6)
        assert tiny_model.local_features(x).shape == (2, 112, 4, 6)
        out = tiny_model(x)
        assert torch.equal(out, tiny_model.head(frozen))
    assert out.shape == (2, 896)
    assert torch.allclose(out.norm(dim=1), torch.ones(2), atol=1e-5)
    assert all(not p.requires_grad for p in tiny_model.backbone_frozen.parameters())
    assert all(p.requires_grad for p in tiny_model.backbone_trainable.parameters())
    card = tiny_model.card()
    assert (card.backbone, card.descriptor_dim, card.local_dim, card.num_clusters) == (
        "efficientnet_lite0",
        896,
        112,
        8,
    )
    assert (card.input_height, card.input_width, card.precision) == (64, 96, "fp32")
    assert card.weights_fingerprint == tiny_model.fingerprint() and len(card.weights_fingerprint) == 16
    # BatchNorm keeps its ImageNet statistics in train mode: train() and eval() give the same output
    tiny_model.train()
    with torch.no_grad():
        assert torch.allclose(tiny_model(x), out, atol=1e-6)
    tiny_model.eval()


def test_imagenet_weights_are_loaded_offline(tiny_model):
    random_model = PlaceModel(tiny_model.config, pretrained=False)
    assert tiny_model.provenance["backbone_weights"] == "imagenet"
    assert random_model.provenance["backbone_weights"] == "random"
    a = tiny_model.backbone_frozen[0][0][0].weight
    b = random_model.backbone_frozen[0][0][0].weight
    assert not torch.equal(a, b)


def test_deploy_model_equals_place_model_on_normalised_input(tiny_model):
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.integers(0, 256, size=(2, 64, 96, 3), dtype=np.uint8))
    with torch.no_grad():
        deployed = DeployModel(tiny_model)(images)
        mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
        std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        manual = (images.permute(0, 3, 1, 2).float() / 255.0 - mean) / std
        reference = tiny_model(manual)
    assert torch.allclose(normalize_images(images), manual, atol=1e-5)
    assert torch.max(torch.abs(deployed - reference)).item() < 1e-5


@pytest.mark.skipif(not (available("onnx") and available("onnxruntime")), reason="needs onnx and onnxruntime")
def test_deploy_model_exports_to_onnx_with_static_same_padding(tiny_model, tmp_path):
    import onnxruntime as ort

    images = np.random.default_rng(1).integers(0, 256, size=(2, 64, 96, 3), dtype=np.uint8)
    path = tmp_path / "m.onnx"
    ops = _export_ops(DeployModel(tiny_model), (torch.from_numpy(images),), path)
    assert "Pad" in ops and not {"Where", "Equal", "If", "Loop"} & set(ops)
    assert "Sigmoid" not in ops  # lite0 uses ReLU6 (Clip), never swish
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = sess.run(None, {"x": images})[0]
    with torch.no_grad():
        ref = DeployModel(tiny_model)(torch.from_numpy(images)).numpy()
    assert np.max(np.abs(out - ref)) < 1e-4


def test_pca_whitening_primal_and_dual_whiten_along_principal_directions():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 30)) @ rng.normal(size=(30, 30))
    w_primal, b_primal = fit_pca_whitening(x, 10)  # D = 30 < N = 40: primal
    y = x @ w_primal.T + b_primal  # whitened: zero mean, identity covariance
    assert np.allclose(y.mean(0), 0, atol=1e-4)
    assert np.allclose(np.cov(y.T, bias=True), np.eye(10), atol=1e-3)

    xd = rng.normal(size=(25, 60)) * np.linspace(3, 0.1, 60)  # D = 60 > N = 25: dual trick
    w_dual, b_dual = fit_pca_whitening(xd, 10)
    assert w_dual.shape == (10, 60) and b_dual.shape == (10,)
    yd = xd @ w_dual.T + b_dual
    assert np.allclose(np.cov(yd.T, bias=True), np.eye(10), atol=1e-3)
    # same directions as the eigenvectors of the full D x D covariance (up to sign)
    vals, vecs = np.linalg.eigh(np.cov(xd.T, bias=True))
    top = vecs[:, np.argsort(vals)[::-1][:10]]  # (D, 10)
    cos = np.abs(np.sum(top * (w_dual / np.linalg.norm(w_dual, axis=1, keepdims=True)).T, axis=0))
    assert np.all(cos > 0.999)
    with pytest.raises(ConfigError, match="at most 24 dimensions carry variance"):
        fit_pca_whitening(xd, 30)


def test_with_whitening_adds_a_layer_and_keeps_the_rest(tiny_model):
    x = torch.randn(6, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        raw = tiny_model(x).numpy()
    weight, bias = fit_pca_whitening(raw, 4)
    whitened = tiny_model.with_whitening(weight, bias, dim=3)
    assert whitened.config.whitening_dim == 3 and whitened.card().descriptor_dim == 3
    with torch.no_grad():
        out = whitened(x).numpy()
    expected = raw @ weight[:3].T + bias[:3]
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    assert np.allclose(out, expected, atol=1e-4)
    assert whitened.fingerprint() != tiny_model.fingerprint()


def test_unknown_backbone_lists_known_ones():
    with pytest.raises(
        ConfigError,
        match=r"unknown backbone 'vgg19'; known backbones: efficientnet_lite0, resnet18, resnet50, vgg16",
    ):
        ModelConfig(backbone="vgg19")


def test_invalid_model_config_values():
    with pytest.raises(ConfigError, match="num_clusters must be a positive integer, got 0"):
        ModelConfig(num_clusters=0)
    with pytest.raises(ConfigError, match=r"whitening_dim must be None or in 1\.\.7168, got 9000"):
        ModelConfig(whitening_dim=9000)
    with pytest.raises(
        ConfigError, match="trainable_stages must be between 0 and 5 for backbone 'efficientnet_lite0', got 6"
    ):
        PlaceModel(ModelConfig.preset("tiny", trainable_stages=6), pretrained=False)


@pytest.mark.skipif(available("torchvision"), reason="torchvision is installed")
def test_torchvision_backbone_without_torchvision_names_the_extra():
    with pytest.raises(MissingDependencyError, match=r"pip install 'netvlad-kit\[torchvision\]'"):
        build_model(ModelConfig(backbone="vgg16", num_clusters=4, input_height=32, input_width=32))


@requires_torchvision
@pytest.mark.parametrize("name,channels", [("vgg16", 512), ("resnet18", 256)])
def test_torchvision_backbones(name, channels):
    model = PlaceModel(
        ModelConfig(backbone=name, num_clusters=4, input_height=64, input_width=64), pretrained=False
    )
    with torch.no_grad():
        assert model.local_features(torch.randn(1, 3, 64, 64)).shape == (1, channels, 4, 4)


def test_regularised_whitening_keeps_the_neighbours_of_its_own_fitting_images():
    """Plain whitening to nearly the sample count scatters the fitting images; shrinkage keeps their pairs.

    200 descriptors = 100 places seen twice, dominated by 20 shared directions (as NetVLAD vectors are).
    """
    rng = np.random.default_rng(0)
    mix = rng.normal(size=(20, 2000)) * 3
    places = rng.normal(size=(100, 2000)) + rng.normal(size=(100, 20)) @ mix
    x = np.concatenate(
        [places + 4 * rng.normal(size=places.shape), places + 4 * rng.normal(size=places.shape)]
    )
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    twin = np.concatenate([np.arange(100, 200), np.arange(100)])

    def twin_found(weight, bias):
        y = x @ weight.T + bias
        y /= np.linalg.norm(y, axis=1, keepdims=True)
        sims = y @ y.T
        np.fill_diagonal(sims, -np.inf)
        return float(np.mean(np.argmax(sims, axis=1) == twin))

    raw = x @ x.T
    np.fill_diagonal(raw, -np.inf)
    assert np.mean(np.argmax(raw, axis=1) == twin) == 1.0
    assert twin_found(*fit_pca_whitening(x, 199)) < 0.9  # plain whitening (addPCA.m) at N - 1
    assert twin_found(*fit_pca_whitening(x, 199, shrinkage=1.0)) == 1.0
    assert twin_found(*fit_pca_whitening(x, 50, shrinkage=1.0)) == 1.0
    with pytest.raises(ConfigError, match="shrinkage must be >= 0"):
        fit_pca_whitening(x, 10, shrinkage=-1)
