"""The NetVLAD place-recognition model: backbones, the loop-free NetVLAD layer, PCA-whitening.

Contract used by export, runtime and benchmarks::

    from training.model import ModelConfig, PlaceModel, DeployModel, build_model
    model = build_model(ModelConfig())            # efficientnet_lite0 + NetVLAD(K=64), 7,168-D
    DeployModel(model)(uint8 (N, H, W, 3) RGB)     # -> (N, D) float32, L2-normalised
"""

from training.model.backbones import BACKBONES, Backbone, build_backbone
from training.model.clusters import (
    ClusterInit,
    fit_clusters,
    initialize_netvlad,
    refit_centroids,
    sample_local_descriptors,
)
from training.model.netvlad import NetVLAD, l2_normalize, netvlad_loop_reference
from training.model.place import DeployModel, ModelConfig, PlaceModel, build_model, normalize_images
from training.model.whitening import PCAWhitening, fit_pca_whitening

__all__ = [
    "BACKBONES",
    "Backbone",
    "ClusterInit",
    "DeployModel",
    "ModelConfig",
    "NetVLAD",
    "PCAWhitening",
    "PlaceModel",
    "build_backbone",
    "build_model",
    "fit_clusters",
    "fit_pca_whitening",
    "initialize_netvlad",
    "l2_normalize",
    "netvlad_loop_reference",
    "normalize_images",
    "refit_centroids",
    "sample_local_descriptors",
]
