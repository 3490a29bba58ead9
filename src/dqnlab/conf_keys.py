"""The keys that ``conf/`` can give each config group, for a misspelled ``group.key=`` on the command line.

Hydra rejects ``optimizer.lrr=1`` itself, in five lines that end by suggesting ``+optimizer.lrr=1``: a key nothing
reads. Hydra knows the right key only after composing the whole config, but a cheap superset is at hand: every
second-level key that any file under ``conf/`` writes into a group (its own options, and the global files:
hparams, experiments, debug overlays). A key outside that set cannot be in any composed config, so it is refused
before Hydra starts, with the close match; one inside it is left to Hydra (it may belong to another option).
"""

from __future__ import annotations

import difflib
from functools import cache
from pathlib import Path

import yaml

# Groups whose files are merged at the top level (`/hparams@_global_` in the env files, `# @package _global_`).
_GLOBAL_GROUPS = ("debug", "experiment", "hparams", "hparams_search")
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when present: ~10x faster


def _is_global(text: str, group: str) -> bool:
    """Whether a group's file (its ``text``) is merged at the top level rather than under ``group``."""
    comments = (line.replace(" ", "") for line in text.splitlines() if line.startswith("#"))
    return group in _GLOBAL_GROUPS or "#@package_global_" in comments


@cache
def group_keys(conf_dir: str, groups: tuple[str, ...]) -> dict[str, frozenset[str]]:
    """Every second-level key a file under ``conf_dir`` writes into each of ``groups``.

    Args:
        conf_dir: The config directory (``conf/``).
        groups: The config groups (``validate.GROUPS``).

    Returns:
        ``{group: keys}``, e.g. ``{"optimizer": {"lr", "eps", ...}, ...}`` (``_target_`` and the like included).

    """
    keys: dict[str, set[str]] = {group: set() for group in groups}
    root = Path(conf_dir)
    for path in sorted(root.glob("*.yaml")) + sorted(root.glob("*/*.yaml")):
        group = path.parent.name if path.parent != root else ""
        if group and group not in keys:
            continue  # conf/hydra/*: Hydra's own config, not checked here
        text = path.read_text()
        data = yaml.load(text, Loader=_Loader) or {}
        if not isinstance(data, dict):
            continue
        if group and not _is_global(text, group):
            keys[group].update(str(key) for key in data if key != "defaults")
            continue
        for head, value in data.items():
            if head in keys and isinstance(value, dict):
                keys[head].update(str(key) for key in value)
    return {group: frozenset(found) for group, found in keys.items()}


def unknown_group_key(key: str, conf_dir: str, groups: tuple[str, ...]) -> str | None:
    """For ``group.key...`` whose second part no file under ``conf_dir`` gives that group: the problem and a fix.

    Args:
        key: A dotted override key, e.g. ``optimizer.lrr``.
        conf_dir: The config directory.
        groups: The config groups.

    Returns:
        The message, or ``None`` when the key may exist (or is not a group's: other checks cover those).

    """
    head, _, rest = key.partition(".")
    second = rest.split(".")[0]
    if head not in groups or not second:
        return None
    known = group_keys(conf_dir, groups)[head]
    if not known or second in known:
        return None
    close = difflib.get_close_matches(second, sorted(known), n=1, cutoff=0.6)
    if close:
        fix = f"did you mean {head}.{close[0]}{rest[len(second) :]}?"
    else:
        fix = f"the {head} keys in conf/ are {', '.join(sorted(k for k in known if not k.startswith('_')))}"
    return f"{key} is not a dqnlab setting (no file in conf/ gives {head} a key {second!r}): {fix}"
