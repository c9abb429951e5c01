"""Equal tuning budgets for an experiment's methods, chosen without reading test data.

Each tuned method gets the same budget: at most `TUNING_BUDGET` configurations, every learning rate of its
`Tuning` with every value of one knob of its own. They run on the experiment's first seed, each is scored by
`tuning_score` (its gap to the retrained reference on forget-train, retain-train and the validation images
the protocol holds out of the training set), and `choose` takes the lowest score. The chosen configuration
then runs on every seed beside the reference defaults (`jaxunlearn.experiment`).
"""

import dataclasses
import math
from typing import Any

from jaxunlearn.errors import UserError

TUNING_BUDGET = 6
"""The most configurations any method may try."""

SCORED_PARTS = ("forget_train_acc", "retain_train_acc", "validation_acc")
"""The accuracies whose gaps to the retrained reference score a configuration: no test image among them."""


@dataclasses.dataclass(frozen=True)
class Tuning:
    """One method's tuning grid: every value of `learning_rates` × every value of `knob` (a hyperparameter of
    the method's own, such as "lambda_ul"; None: the learning rate alone). Values are `--hp` strings."""

    learning_rates: tuple[str, ...]
    knob: str | None = None
    values: tuple[str, ...] = ()

    def configurations(self) -> list[dict[str, str]]:
        """The grid as `--hp` overrides, learning rate outermost."""
        if self.knob is None:
            return [{"learning_rate": rate} for rate in self.learning_rates]
        return [{"learning_rate": rate, self.knob: value} for rate in self.learning_rates for value in self.values]

    def check(self, method: str) -> None:
        """UserError for an empty grid, repeated values, a knob that is the learning rate or lacks values, or
        more than `TUNING_BUDGET` configurations."""
        if not self.learning_rates:
            raise UserError(f"tuning of {method}: no learning rates")
        if self.knob is None and self.values:
            raise UserError(f"tuning of {method}: values {self.values} without a knob")
        if self.knob is not None and (self.knob == "learning_rate" or not self.values):
            raise UserError(f"tuning of {method}: the knob must be another hyperparameter than the learning "
                            f"rate, with at least one value")
        for name, values in (("learning rates", self.learning_rates), ("values", self.values)):
            if len(set(values)) != len(values):
                raise UserError(f"tuning of {method}: repeated {name} {values}")
        count = len(self.configurations())
        if count > TUNING_BUDGET:
            raise UserError(f"tuning of {method}: {count} configurations, more than the budget of {TUNING_BUDGET}")


def tuning_score(metrics: dict[str, float], reference: dict[str, float]) -> float:
    """Mean of |accuracy − the reference's| over `SCORED_PARTS` (0 to 1, lower is better); a run without a
    finite value for one of them (a diverged model's NaN) scores infinity."""
    gaps = [abs(metrics.get(part, math.nan) - reference[part]) for part in SCORED_PARTS]
    return float(sum(gaps) / len(gaps)) if all(math.isfinite(gap) for gap in gaps) else math.inf


def choose(scores: list[float]) -> int:
    """The index of the lowest score, the first among equals."""
    return min(range(len(scores)), key=lambda i: (scores[i], i))


def tuning_record(configurations: list[dict[str, str]], metrics: list[dict[str, Any]],
                  reference: dict[str, float], seed: int) -> dict[str, Any]:
    """results.json's account of one method's tuning: every configuration with its scored accuracies, gaps
    and score, and the chosen index and overrides."""
    scores = [tuning_score(m, reference) for m in metrics]
    chosen = choose(scores)
    tried = [{"hparams": configuration, "score": score, **{part: m.get(part) for part in SCORED_PARTS},
              "seconds": m.get("seconds")}
             for configuration, m, score in zip(configurations, metrics, scores)]
    return {"seed": seed, "configurations": tried, "chosen": chosen, "hparams": configurations[chosen],
            "reference": {part: reference[part] for part in SCORED_PARTS}}
