"""A model made of two modules: an embedding network and a classifier head on its output."""

import inspect

import jax
from flax import nnx


def _keywords(module: nnx.Module) -> tuple[bool, bool]:
    """Whether module's call takes `train` and `mask` keywords."""
    parameters = inspect.signature(type(module).__call__).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    return takes_any or "train" in parameters, takes_any or "mask" in parameters


class EmbeddingClassifier(nnx.Module):
    """model(images) = (head(feat), feat) with feat = embedding(images): any embedding network [B, H, W, C] →
    [B, D] and any head [B, D] → [B, num_classes] become a model every method can train and unlearn.

    `train` is passed to a module whose call takes it (for its BatchNorm or dropout), `mask` likewise (see
    `jaxunlearn.models.registry`). Contrastive Unlearning contrasts feat as returned: normalise it in the
    embedding network if the method should see unit vectors, as SupCon models do.
    """

    def __init__(self, embedding: nnx.Module, head: nnx.Module):
        self.embedding = embedding
        self.head = head
        self._embedding_keywords = _keywords(embedding)
        self._head_keywords = _keywords(head)

    def __call__(self, x: jax.Array, *, train: bool, mask: jax.Array | None = None
                 ) -> tuple[jax.Array, jax.Array]:
        feat = _call(self.embedding, self._embedding_keywords, x, train, mask)
        return _call(self.head, self._head_keywords, feat, train, mask), feat


def _call(module: nnx.Module, keywords: tuple[bool, bool], x: jax.Array, train: bool,
          mask: jax.Array | None) -> jax.Array:
    takes_train, takes_mask = keywords
    options = {"train": train} if takes_train else {}
    if mask is not None:
        if not takes_mask:
            raise TypeError(f"{type(module).__name__} takes no `mask`, and this batch is padded to the device "
                            f"count: give it a `mask` argument (see jaxunlearn.models.registry) or use a batch "
                            f"size the device count divides")
        options["mask"] = mask
    return module(x, **options)
