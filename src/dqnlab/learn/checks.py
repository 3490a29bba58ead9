"""The learner's checks: the optimizer's, the TD update's, the network's and the target sync's knobs."""

from __future__ import annotations

from typing import TYPE_CHECKING

from omegaconf import DictConfig

from dqnlab.checks import ABSENT, PROB, Knob, check_choices, select
from dqnlab.errors import ConfigError

if TYPE_CHECKING:
    from gymnasium.vector import VectorEnv

KNOBS: tuple[Knob, ...] = (
    Knob("optimizer.lr", float, "the learning rate", "1e-3", low=0.0, low_open=True),
    Knob("optimizer.eps", float, "the optimizer's denominator epsilon", "1e-8", low=0.0),
    Knob("optimizer.weight_decay", float, "the weight decay", "0", low=0.0),
    Knob("algo.batch_size", int, "transitions per gradient step", "64", low=1),
    Knob("algo.gamma", float, "the discount per env step", "0.99", **PROB),
    Knob("algo.n_step", int, "the n-step return length in env steps", "1", low=1),
    Knob("algo.max_grad_norm", float, "the gradient-norm clip (0 or null = off)", "10.0", low=0.0, nullable=True),
    Knob("algo.num_atoms", int, "the atoms of the return distribution (C51)", "51", low=1),
    Knob("algo.v_min", float, "the smallest atom in return units", "-10.0"),
    Knob("algo.v_max", float, "the largest atom in return units", "10.0"),
    Knob("network.sigma0", float, "the initial noise scale of noisy layers", "0.5", low=0.0, low_open=True),
    Knob("target.interval", int, "gradient steps between target syncs", "1_000", low=1),
    Knob("target.tau", float, "the target blend weight (1 = copy)", "1.0", low=0.0, high=1.0, low_open=True),
    Knob("reset.every", int, "gradient steps between resets", "20_000", low=1),
    Knob("reset.until", int, "the last gradient step a reset may fall on", "80_000", low=1, nullable=True),
    Knob("reset.shrink", float, "the factor on the parameters not reset", "1.0", low=0.0, high=1.0),
    Knob("reset.perturb", float, "the weight of a fresh init added to them", "0.0", low=0.0),
    Knob("augment.pad", int, "pixels of edge padding per side", "4", low=0),
    Knob("augment.intensity_scale", float, "the std of the brightness factor", "0.05", low=0.0),
    Knob("augment.max_shift", int, "the largest crop offset in pixels", "7", low=0, nullable=True),
)

CHOICES: dict[str, tuple[str, ...]] = {
    "algo.loss": ("mse", "huber", "cross_entropy"),
    "algo.precision": ("auto", "fp32", "bf16"),
}


# List-typed knobs and an example value, for a scalar given where a list belongs (network.hidden_sizes=64).
LIST_KNOBS = {"network.hidden_sizes": "[64,64]"}


def list_problems(cfg: DictConfig) -> list[str]:
    """A list knob must be a list of positive whole numbers."""
    problems = []
    for key, example in LIST_KNOBS.items():
        value = select(cfg, key)
        if value is ABSENT or value is None:
            continue
        items = list(value) if not isinstance(value, (str, int, float)) else None
        if items is None or not all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in items):
            problems.append(f"{key}={value} must be a list of layer widths: e.g. {key}={example}")
    return problems


def relation_problems(v: dict[str, float]) -> list[str]:
    """C51's atoms must span a range."""
    v_min, v_max = v.get("algo.v_min"), v.get("algo.v_max")
    if v.get("algo.num_atoms", 1) > 1 and v_min is not None and v_max is not None and v_min >= v_max:
        return [f"algo.v_min={v_min} must be below algo.v_max={v_max}: the atoms span [v_min, v_max]"]
    return []


def choice_problems(cfg: DictConfig) -> list[str]:
    """The loss must be one dqnlab has, and the one of the learner's kind (expected value or distributional)."""
    problems = check_choices(cfg, CHOICES)
    loss, atoms = select(cfg, "algo.loss"), select(cfg, "algo.num_atoms")
    distributional = isinstance(atoms, int) and not isinstance(atoms, bool) and atoms > 1
    if loss in CHOICES["algo.loss"] and distributional != (loss == "cross_entropy"):
        problems.append(
            f"algo.loss={loss} with algo.num_atoms={1 if atoms is ABSENT else atoms}: loss=cross_entropy is the "
            "loss of a distributional learner (num_atoms > 1) and only of it; use algo=c51 for C51, algo=dqn "
            "(mse or huber) otherwise"
        )
    return problems


def check_augment(cfg: DictConfig, env: VectorEnv) -> None:
    """Image augmentation needs image observations ``[C, H, W]``."""
    if not cfg.get("augment"):
        return
    shape = tuple(env.single_observation_space.shape or ())
    if len(shape) != 3:
        name = cfg.env.get("id") or cfg.env.get("game") or "this env"
        raise ConfigError(
            f"augment shifts and brightens images ([C, H, W] observations), but {name}'s observations are shaped "
            f"{shape}: drop the augment group (augment=null) or use a pixel env"
        )
