"""A small convolutional classifier for the engine-level tests: two convolutions with the package's masked
BatchNorm averaged over the data axis, a projection to a unit-norm embedding and a linear head.

It exercises what those tests are about (padded batches and their mask, BatchNorm statistics over devices,
gradient reduction, many models side by side) and compiles in about a quarter of the time of the narrow
ResNet-18, which the end-to-end tests (`make test-long`) train.
"""

from flax import nnx

from jaxunlearn.engine.parallel import AXIS
from jaxunlearn.models import EmbeddingClassifier, relu_l2_normalise
from jaxunlearn.models.batch_norm import MaskedBatchNorm


class SmallEmbedding(nnx.Module):
    def __init__(self, in_channels: int, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(in_channels, 8, (3, 3), use_bias=False, rngs=rngs)
        self.norm1 = MaskedBatchNorm(8, axis_name=AXIS, rngs=rngs)
        self.conv2 = nnx.Conv(8, 16, (3, 3), strides=2, use_bias=False, rngs=rngs)
        self.norm2 = MaskedBatchNorm(16, axis_name=AXIS, rngs=rngs)
        self.projection = nnx.Linear(16, 16, rngs=rngs)

    def __call__(self, x, *, train, mask=None):
        x = nnx.relu(self.norm1(self.conv1(x), use_running_average=not train, mask=mask))
        x = nnx.relu(self.norm2(self.conv2(x), use_running_average=not train, mask=mask))
        return relu_l2_normalise(self.projection(x.mean(axis=(1, 2))))


class SmallHead(nnx.Module):
    def __init__(self, num_classes: int, rngs: nnx.Rngs):
        self.linear = nnx.Linear(16, num_classes, rngs=rngs)

    def __call__(self, feat, *, mask=None):  # no statistics: the mask of a padded batch changes nothing
        return self.linear(feat)


def small_model(num_classes: int, seed: int = 0, in_channels: int = 1) -> EmbeddingClassifier:
    rngs = nnx.Rngs(seed)
    return EmbeddingClassifier(SmallEmbedding(in_channels, rngs), SmallHead(num_classes, rngs))
