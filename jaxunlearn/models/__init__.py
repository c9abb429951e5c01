"""Image classifiers: SupConResNet (CIFAR ResNet + projection head + linear classifier), SupConViT
(ViT-small with the same head), a model built from an embedding network and a head, and the registry that
names them (`jaxunlearn.models.registry` states what a model is)."""

from jaxunlearn.models.embedding_classifier import EmbeddingClassifier
from jaxunlearn.models.registry import MODELS, PRECISIONS, create_model, register_model
from jaxunlearn.models.resnet import ARCHITECTURES, SupConResNet, count_params, relu_l2_normalise
from jaxunlearn.models.vit import SupConViT

__all__ = [
    "ARCHITECTURES", "EmbeddingClassifier", "MODELS", "PRECISIONS", "SupConResNet", "SupConViT", "count_params",
    "create_model", "register_model", "relu_l2_normalise",
]
