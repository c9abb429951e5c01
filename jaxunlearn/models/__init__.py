"""Image classifiers: SupConResNet (CIFAR ResNet + projection head + linear classifier)."""

from jaxunlearn.models.resnet import ARCHITECTURES, SupConResNet, count_params, create_model

__all__ = ["ARCHITECTURES", "SupConResNet", "count_params", "create_model"]
