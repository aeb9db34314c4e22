"""Checkpoints round-trip exactly, are written atomically, and bad files fail with clear errors."""

from __future__ import annotations

import pytest

from tests.conftest import requires_torch

pytestmark = requires_torch
torch = pytest.importorskip("torch")

from runtime.errors import ArtifactError  # noqa: E402
from training.checkpoint import load_checkpoint, load_model, save_checkpoint  # noqa: E402
from training.model import ModelConfig, PlaceModel  # noqa: E402


@pytest.fixture(scope="module")
def model() -> PlaceModel:
    torch.manual_seed(0)
    m = PlaceModel(ModelConfig.preset("tiny"), pretrained=False)
    m.provenance["centroids"] = "test"
    return m.eval()


def test_round_trip_is_exact(model, tmp_path):
    path = save_checkpoint(tmp_path / "sub" / "m.pt", model, training_state={"step": 7})
    assert sorted(p.name for p in path.parent.iterdir()) == ["m.pt"]  # no temporary left behind
    loaded = load_model(path)
    assert not loaded.training
    assert loaded.config == model.config and loaded.fingerprint() == model.fingerprint()
    assert loaded.provenance == model.provenance
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert load_checkpoint(path)["training_state"] == {"step": 7}


def test_missing_checkpoint(tmp_path):
    with pytest.raises(
        ArtifactError, match=r"checkpoint '.*nope\.pt' does not exist or is not a file; train one"
    ):
        load_model(tmp_path / "nope.pt")


def test_truncated_checkpoint(model, tmp_path):
    path = save_checkpoint(tmp_path / "m.pt", model)
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(
        ArtifactError, match=r"cannot be read .*truncated, corrupt or not a netvlad-kit checkpoint"
    ):
        load_model(path)


def test_foreign_checkpoint(tmp_path):
    path = tmp_path / "foreign.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, path)
    with pytest.raises(
        ArtifactError,
        match=r"is not a netvlad-kit checkpoint \(expected a dict with format 'netvlad-kit.checkpoint', found \['state_dict'\]\)",
    ):
        load_model(path)


def test_weights_that_do_not_fit_the_config(model, tmp_path):
    path = save_checkpoint(tmp_path / "m.pt", model)
    payload = torch.load(path, weights_only=True)
    payload["model_config"]["num_clusters"] = 4
    torch.save(payload, path)
    with pytest.raises(ArtifactError, match="weights do not fit its model config"):
        load_model(path)
