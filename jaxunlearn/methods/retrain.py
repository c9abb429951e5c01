"""The retrained reference: the pretraining recipe from a fresh initialisation on the retain set only."""


from jaxunlearn.config import SupervisedHparams, TrainConfig
from jaxunlearn.methods.base import Context, Method, register
from jaxunlearn.methods.supervised import supervised_objective, supervised_optimizer, supervised_plan


@register
class Retrain(Method):
    name = "retrain"
    hparams_type = SupervisedHparams
    from_scratch = True
    in_paper_comparison = False

    def default_hparams(self, mode: str, original: TrainConfig) -> SupervisedHparams:
        return original.recipe

    def optimizer(self, hparams: SupervisedHparams, steps_per_epoch, aux):
        return supervised_optimizer(hparams, steps_per_epoch[0])

    def plan(self, hparams: SupervisedHparams, context: Context, epoch: int):
        return supervised_plan(context.split.retain, hparams.batch_size, context.rng(epoch),
                               keep_partial=hparams.keep_partial_batch)

    def loss_fn(self, hparams: SupervisedHparams, context: Context):
        return supervised_objective(hparams)
