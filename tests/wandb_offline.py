"""Read back an offline W&B run from its ``run-<id>.wandb`` file: run record, config, history rows.

wandb >= 0.2x writes everything of an offline run into that one file (its Python ``datastore`` reader is gone;
``files/config.yaml`` and ``wandb-summary.json`` appear only when a run syncs). The file is W&B's LevelDB-style
log: a 7-byte header (``:W&B``, magic ``0xBEE1``, version), then 32 KiB blocks of records, each a 7-byte header
(crc32, length, type: 1 full, 2 first, 3 middle, 4 last) and a chunk of a serialized ``wandb_internal.Record``.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_BLOCK = 32_768
_HEADER = 7


def records(path: Path) -> Iterator[Any]:
    """Every ``wandb_internal_pb2.Record`` in a ``.wandb`` file, in order."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    ident, magic, _version = struct.unpack("<4sHB", data[:_HEADER])
    assert ident == b":W&B" and magic == 0xBEE1, f"{path} is not a W&B run file"
    pos, chunks = _HEADER, b""
    while pos + _HEADER <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _HEADER:  # block trailer padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + _HEADER])
        if kind == 0 and length == 0:  # zero padding up to the next block
            pos += left
            continue
        chunks += data[pos + _HEADER : pos + _HEADER + length]
        pos += _HEADER + length
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(chunks)
            chunks = b""
            yield record


def _key(item: Any) -> str:
    return item.key or "/".join(item.nested_key)


@dataclass
class OfflineRun:
    """What an offline run recorded."""

    run_id: str = ""
    name: str = ""
    group: str = ""
    tags: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)


def read_offline_run(run_dir: Path) -> OfflineRun:
    """Parse ``<run_dir>/run-*.wandb`` (``run_dir`` = ``.../wandb/offline-run-<time>-<id>``)."""
    (path,) = run_dir.glob("run-*.wandb")
    run = OfflineRun()
    for r in records(path):
        kind = r.WhichOneof("record_type")
        if kind == "run":
            run.run_id, run.name, run.group = r.run.run_id, r.run.display_name, r.run.run_group
            run.tags = list(r.run.tags)
            run.config.update({_key(i): json.loads(i.value_json) for i in r.run.config.update})
        elif kind == "config":
            run.config.update({_key(i): json.loads(i.value_json) for i in r.config.update})
        elif kind == "history":
            run.history.append({_key(i): json.loads(i.value_json) for i in r.history.item})
    return run
