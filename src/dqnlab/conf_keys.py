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


def override_key(override: str) -> str:
    """The config key a command-line override sets: ``+optimizer.lr=1e-3`` -> ``optimizer.lr``, ``~checkpoint`` ->
    ``checkpoint``, ``env=pong`` -> ``env`` (Hydra's ``+``, ``++`` and ``~`` prefixes and the value dropped).
    """
    return override.lstrip("+~").split("=", 1)[0]


def _is_global(text: str, group: str) -> bool:
    """Whether a group's file (its ``text``) is merged at the top level rather than under ``group``."""
    comments = (line.replace(" ", "") for line in text.splitlines() if line.startswith("#"))
    return group in _GLOBAL_GROUPS or "#@package_global_" in comments


@cache
def _files(conf_dir: str) -> tuple[tuple[str, bool, dict], ...]:
    """``(group, global, data)`` of every yaml file under ``conf_dir`` holding a mapping (``""``: ``conf/*.yaml``)."""
    root, files = Path(conf_dir), []
    for path in sorted(root.glob("*.yaml")) + sorted(root.glob("*/*.yaml")):
        group = path.parent.name if path.parent != root else ""
        text = path.read_text()
        data = yaml.load(text, Loader=_Loader) or {}
        if isinstance(data, dict):
            files.append((group, not group or _is_global(text, group), data))
    return tuple(files)


def _global_keys(conf_dir: str, group: str) -> set[str]:
    """The keys the top-level and global files (experiments, debug overlays, hparams) write into ``group``."""
    found: set[str] = set()
    for _, is_global, data in _files(conf_dir):
        if is_global and isinstance(data.get(group), dict):
            found.update(str(key) for key in data[group])
    return found


@cache
def group_keys(conf_dir: str, groups: tuple[str, ...]) -> dict[str, frozenset[str]]:
    """Every second-level key a file under ``conf_dir`` writes into each of ``groups``.

    Args:
        conf_dir: The config directory (``conf/``).
        groups: The config groups (``validate.GROUPS``).

    Returns:
        ``{group: keys}``, e.g. ``{"optimizer": {"lr", "eps", ...}, ...}`` (``_target_`` and the like included).

    """
    keys: dict[str, set[str]] = {group: _global_keys(conf_dir, group) for group in groups}
    for group, is_global, data in _files(conf_dir):
        if group in keys and not is_global:  # conf/hydra/*: Hydra's own config, not checked here
            keys[group].update(str(key) for key in data if key != "defaults")
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


def option_keys(conf_dir: str, group: str, option: str) -> frozenset[str] | None:
    """The keys ``conf/<group>/<option>.yaml`` gives its group, with those of the same group's files in its
    defaults list (``env/breakout.yaml`` lists ``atari``); ``None`` when the file is not there.
    """
    path = Path(conf_dir) / group / f"{option}.yaml"
    if not path.is_file():
        return None
    data = yaml.load(path.read_text(), Loader=_Loader) or {}
    if not isinstance(data, dict):
        return None
    keys = {str(key) for key in data if key != "defaults"}
    for entry in data.get("defaults") or []:
        if isinstance(entry, str) and entry != "_self_" and "/" not in entry and "@" not in entry:
            keys |= option_keys(conf_dir, group, entry) or set()
    return frozenset(keys)


def chosen_options(picks: dict[str, str], conf_dir: str) -> dict[str, str]:
    """The group options a command line's ``group=option`` picks select, with those its experiment selects
    (``experiment=atari100k``: ``override /env: atari``, ...); the command line's own picks win, as in Hydra.
    """
    chosen: dict[str, str] = {}
    experiment = Path(conf_dir) / "experiment" / f"{picks.get('experiment', '')}.yaml"
    if "experiment" in picks and experiment.is_file():
        data = yaml.load(experiment.read_text(), Loader=_Loader) or {}
        for entry in data.get("defaults") or [] if isinstance(data, dict) else []:
            for head, option in entry.items() if isinstance(entry, dict) else []:
                if str(head).startswith("override /") and isinstance(option, str):
                    chosen[str(head).removeprefix("override /")] = option
    return chosen | picks


def key_of_another_option(key: str, chosen: dict[str, str], conf_dir: str) -> str | None:
    """``env=breakout env.wrappers=[...]``: a key that other options of the group have but the chosen one does not
    (Hydra's message would suggest ``+env.wrappers``, which the chosen env's factory then refuses).

    Args:
        key: A dotted override key, e.g. ``env.wrappers``.
        chosen: The group options the command line selects, e.g. ``{"env": "breakout"}``.
        conf_dir: The config directory.

    Returns:
        The message, or ``None`` when the chosen option or a global file (an experiment) may give the key.

    """
    head, _, rest = key.partition(".")
    second = rest.split(".")[0]
    if head not in chosen or not second:
        return None
    keys = option_keys(conf_dir, head, chosen[head])
    if keys is None or not keys or second in keys or second in _global_keys(conf_dir, head):
        return None
    close = difflib.get_close_matches(second, sorted(keys), n=1, cutoff=0.6)
    fix = (
        f"did you mean {head}.{close[0]}?"
        if close
        else f"its keys: {', '.join(sorted(k for k in keys if k[0] != '_'))}"
    )
    return f"{key} is not a setting of {head}={chosen[head]} (conf/{head}/{chosen[head]}.yaml): {fix}"


def _default_options(conf_dir: str, group: str) -> list[str]:
    """The options ``conf/train.yaml``'s defaults list picks for ``group`` (``logger: csv`` -> ``["csv"]``)."""
    data = yaml.load((Path(conf_dir) / "train.yaml").read_text(), Loader=_Loader) or {}
    for entry in data.get("defaults") or [] if isinstance(data, dict) else []:
        if isinstance(entry, dict) and group in entry:
            value = entry[group]
            return [str(v) for v in value] if isinstance(value, list) else [str(value)] if value else []
    return []


def group_not_chosen(key: str, argv: list[str], chosen: dict[str, str], conf_dir: str) -> str | None:
    """``reset.every=100`` on a command that does not choose the group (its default is none): Hydra suggests
    ``+reset.every=100``, which would add a node without its ``_target_``; name the option that has the key.

    Args:
        key: A dotted override key, e.g. ``augment.pad``.
        argv: The command line (a ``group=`` of any kind, a sweep's too, chooses the group).
        chosen: The group options the command line and its experiment select (:func:`chosen_options`).
        conf_dir: The config directory.

    Returns:
        The message, or ``None`` when the group is chosen, or chosen by default in ``conf/train.yaml``.

    """
    head, _, rest = key.partition(".")
    second = rest.split(".")[0]
    folder = Path(conf_dir) / head
    if not second or head == "logger" or not folder.is_dir() or head in chosen or _default_options(conf_dir, head):
        return None
    if any(override_key(a).split("@")[0] in (head, f"/{head}") for a in argv):
        return None
    options = [p.stem for p in sorted(folder.glob("*.yaml")) if second in (option_keys(conf_dir, head, p.stem) or ())]
    if not options:
        return None  # unknown_group_key's case
    picks = " or ".join(f"{head}={o}" for o in options)
    return f"{key} is a setting of the {head} group, which this command does not choose (none by default): add {picks}"


def logger_not_chosen(key: str, argv: list[str], conf_dir: str) -> str | None:
    """``logger.wandb.mode=offline`` on a command whose loggers are ``csv``: Hydra suggests ``+logger.wandb.mode``,
    a key no logger would read. Also for a resume: the run's own loggers come back after the command is composed.

    Args:
        key: A dotted override key, e.g. ``logger.wandb.mode``.
        argv: The command line (its ``logger=`` pick, if any, says which loggers it has).
        conf_dir: The config directory.

    Returns:
        The message, or ``None`` when the key's logger is one of the command's (or a sweep picks loggers).

    """
    head, _, rest = key.partition(".")
    name = rest.split(".")[0]
    if head != "logger" or not name or not (Path(conf_dir) / "logger" / f"{name}.yaml").is_file():
        return None
    picks = [a.split("=", 1)[1] for a in argv if "=" in a and override_key(a) == "logger"]
    if picks and not picks[-1].startswith("[") and "," in picks[-1]:
        return None  # logger=csv,wandb under -m: one logger per job
    chosen = [v.strip() for v in picks[-1].strip("[]").split(",") if v.strip()] if picks else None
    if chosen is None:
        chosen = _default_options(conf_dir, "logger")
    if name in chosen:
        return None
    return (
        f"this command's loggers are {', '.join(chosen) or 'none'} and {name} is not one of them (a resumed run's "
        f"own loggers come back only once the command is composed): add it, e.g. logger=[{','.join([*chosen, name])}]"
    )
