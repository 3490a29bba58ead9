"""The vocabulary of config checks: a numeric knob and its range, and the helpers every part's checks share.

Each part checks its own knobs beside its code (``envs/checks.py``, ``data/checks.py``, ``learn/checks.py``,
``run/checks.py``, the SLURM launcher in ``cluster/slurm.py``); :mod:`dqnlab.validate` gathers them before
anything heavy starts. A check is a pure function from the composed config to a list of problems, each one
sentence naming the key and the fix; problems found together are reported together (:func:`raise_all`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from dqnlab.errors import ConfigError

ABSENT = object()  # what select() returns for a key that does not exist or is ??? (missing)


@dataclass(frozen=True)
class Knob:
    """A numeric config key and the range it must lie in; a key that is absent from the config is skipped.

    Attributes:
        key: Dotted config key.
        kind: ``int`` or ``float`` (ints are accepted where floats are).
        what: What the knob is, with its unit, for the message.
        example: A valid value to suggest.
        low: Lower bound, or ``None``.
        high: Upper bound, or ``None``.
        low_open: The lower bound itself is excluded.
        nullable: ``null`` is allowed (it means "off" or "default").

    """

    key: str
    kind: type
    what: str
    example: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    nullable: bool = False

    def range_text(self) -> str:
        """The allowed range in words, e.g. ``in [0, 1]`` or ``> 0``."""
        if self.low is not None and self.high is not None:
            return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}]"
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        return f"<= {self.high:g}"

    def contains(self, value: float) -> bool:
        """Whether ``value`` lies in the allowed range."""
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return not (self.high is not None and value > self.high)


PROB = {"low": 0.0, "high": 1.0}  # a probability's range, for Knob(..., **PROB)


def select(cfg: DictConfig, key: str) -> Any:
    """The resolved value at ``key``, or ``ABSENT`` when the key does not exist or is ``???``."""
    return OmegaConf.select(cfg, key, default=ABSENT)


def walk(node: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Every ``(dotted key, value)`` of a plain container, depth first (list items as ``key[i]``)."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for k, v in items:
        key = f"{prefix}[{k}]" if isinstance(k, int) else f"{prefix}.{k}" if prefix else str(k)
        yield key, v
        yield from walk(v, key)


def fmt(value: Any) -> str:
    """A value as the message shows it: strings quoted, the rest as typed."""
    return repr(value) if isinstance(value, str) else str(value)


def gib(n: float) -> str:
    """Bytes in GiB, two decimals."""
    return f"{n / 2**30:.2f} GiB"


def check_knob(cfg: DictConfig, knob: Knob) -> tuple[list[str], float | None]:
    """Problems with one knob, and its value when it is valid and set (for the relational checks)."""
    try:
        value = select(cfg, knob.key)
    except OmegaConfBaseException as e:
        return [f"{knob.key} cannot be resolved ({e}): fix the interpolation or set {knob.key}={knob.example}"], None
    if value is ABSENT or (value is None and knob.nullable):
        return [], None
    whole = knob.kind is int
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not is_number or (whole and not float(value).is_integer()):
        kind = "a whole number" if whole else "a number"
        return [f"{knob.key}={fmt(value)} must be {kind} ({knob.what}): e.g. {knob.key}={knob.example}"], None
    if whole and isinstance(value, float):
        # 1e6 parses as a float and would break shapes and ranges downstream.
        return [
            f"{knob.key}={value!r} must be a whole number ({knob.what}), but 1e6-style values are floats: "
            f"write {knob.key}={int(value):_}"
        ], None
    if not math.isfinite(value) or not knob.contains(value):
        return [
            f"{knob.key}={fmt(value)} is out of range: {knob.what} must be {knob.range_text()}; "
            f"e.g. {knob.key}={knob.example}"
        ], None
    return [], value


def check_knobs(cfg: DictConfig, knobs: Iterable[Knob]) -> tuple[list[str], dict[str, float]]:
    """Every knob's problems, and the values of the valid ones that are set (keyed by dotted key)."""
    problems: list[str] = []
    valid: dict[str, float] = {}
    for knob in knobs:
        knob_problems, value = check_knob(cfg, knob)
        problems += knob_problems
        if value is not None:
            valid[knob.key] = value
    return problems, valid


def check_choices(cfg: DictConfig, choices: dict[str, tuple[str, ...]]) -> list[str]:
    """A string knob must be one of its options."""
    problems = []
    for key, options in choices.items():
        value = select(cfg, key)
        if value is not ABSENT and value not in options:
            problems.append(f"{key}={fmt(value)} is not known: use one of {', '.join(options)}")
    return problems


def raise_all(problems: list[str]) -> None:
    """Raise one :class:`ConfigError` listing every problem (nothing when the list is empty)."""
    if len(problems) == 1:
        raise ConfigError(problems[0])
    if problems:
        raise ConfigError("\n".join([f"{len(problems)} problems with the config:", *(f"- {p}" for p in problems)]))
