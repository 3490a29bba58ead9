"""How each run of a results table ran: its code, machine, library versions, dates and wall time.

Read from ``summary.json``'s ``provenance`` (one entry per segment, ``dqnlab.run.provenance``), so a table of
scores carries the exact code and machine of every score beside it. Runs from code older than provenance say
"not recorded" rather than guessing.
"""

from __future__ import annotations

from typing import Any

from dqnlab.share.plotting import Run
from dqnlab.share.tables import markdown_table

NOT_RECORDED = "not recorded"


def _joined(entries: list[dict[str, Any]], key: str) -> str:
    """The segments' distinct values of ``key`` in order (``a then b`` when a resume changed it)."""
    seen: list[str] = []
    for entry in entries:
        value = str(entry.get(key, "?"))
        if value not in seen:
            seen.append(value)
    return " then ".join(seen) if seen else NOT_RECORDED


def record_row(run: Run) -> list[str]:
    """One run's row: run dir, code, machine, torch, UTC start and end, wall time (s), segments."""
    entries: list[dict[str, Any]] = list(run.summary.get("provenance", []))
    wall = run.summary.get("wall_time_s")
    segments = int(run.summary.get("segments", 1))
    if not entries:  # code older than provenance (or an unfinished run): nothing is guessed, not even segments
        when = code = machine = torch_version = segments_text = NOT_RECORDED
    else:
        segments_text = str(segments)
        machine = _joined(entries, "machine")
        if any("gpu" in e for e in entries):
            machine += f" ({_joined([e for e in entries if 'gpu' in e], 'gpu')})"
        code, torch_version = _joined(entries, "code"), _joined(entries, "torch")
        when = f"{entries[0].get('started_utc', '?')} to {entries[-1].get('ended_utc', '?')}"
        if len(entries) < segments:  # resumed from a checkpoint written before provenance was recorded
            when += f" (the first {segments - len(entries)} of {segments} segments not recorded)"
    wall_text = f"{float(wall):,.0f}" if wall is not None else "unfinished"
    return [run.path.name, code, machine, torch_version, when, wall_text, segments_text]


def records_markdown(runs: list[Run]) -> str:
    """A Markdown table of :func:`record_row` for ``runs``, ordered by run dir."""
    header = ["run", "code", "machine", "torch", "UTC", "wall time (s)", "segments"]
    return markdown_table(header, [record_row(run) for run in sorted(runs, key=lambda r: str(r.path))])
