"""Shared fixtures: the real Hydra config composed through the compose API, as `python train.py` would."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = str(ROOT / "conf")
PYTHON = sys.executable

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")


def compose_cfg(overrides: list[str], output_dir: Path) -> DictConfig:
    """Compose conf/train.yaml with overrides; outputs go to ``output_dir``."""
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    if not any(o.startswith("paths.output_dir=") for o in overrides):
        with open_dict(cfg):
            cfg.paths.output_dir = str(output_dir)
    return cfg


@pytest.fixture
def make_cfg(tmp_path: Path) -> Callable[..., DictConfig]:
    """Factory: ``make_cfg("debug=smoke", "seed=1")`` -> composed config writing under tmp_path."""

    def _make(*overrides: str) -> DictConfig:
        return compose_cfg(list(overrides), tmp_path)

    return _make


@pytest.fixture(autouse=True)
def _torch_float_defaults():
    """Each test starts on torch's float handling: a run's build() turns flush_denormal on for its thread."""
    import torch

    torch.set_flush_denormal(False)
    yield
    torch.set_flush_denormal(False)
