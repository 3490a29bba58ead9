"""A stand-in for ``sacct`` where SLURM has no accounting database: job states from ``scontrol show job``.

submitit asks ``sacct -o JobID,State,NodeList --parsable2 -j ID [-j ID ...]`` and reads a header line, then
``JobID|State|NodeList`` per job (array tasks as ``ARRAYID_TASKID``, pending ranges as ``ARRAYID_[0-3]``).
Without accounting the real ``sacct`` fails, submitit logs "Bypassing sacct error" on every poll and never sees
a job that ended without its result file (``scancel``, SIGKILL, out of memory): the sweep would wait forever.
:func:`dqnlab.cluster.slurm.use_sacct_standin` puts this module first on the sweep process's ``PATH`` in that case.

Only that query is answered; anything else gets ``sacct``'s own "accounting storage is disabled" error.
"""

from __future__ import annotations

import subprocess
import sys

FIELDS = ("JobID", "State", "NodeList")
# States submitit does not know as unfinished, which are not finished either.
_STILL_RUNNING = {"SUSPENDED", "CONFIGURING", "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED", "REQUEUE_FED"}
_STILL_PENDING = {"REQUEUE_HOLD", "RESV_DEL_HOLD", "SPECIAL_EXIT"}


def parse_args(argv: list[str]) -> list[str] | None:
    """The job ids of submitit's query, or ``None`` for any other ``sacct`` call."""
    ids: list[str] = []
    fields = None
    it = iter(argv)
    for arg in it:
        if arg == "-o":
            fields = next(it, "")
        elif arg == "-j":
            ids.append(next(it, ""))
        elif arg != "--parsable2":
            return None
    return ids if fields == ",".join(FIELDS) and ids else None


def job_records(job_id: str) -> list[dict[str, str]]:
    """``scontrol show job -o`` for one job (an array: all its tasks), as key=value dicts; [] when unknown."""
    proc = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True, check=False)
    if proc.returncode != 0:  # purged (older than MinJobAge) or never existed: no line, as sacct says nothing
        return []
    records = []
    for line in proc.stdout.splitlines():
        record = {}
        for field in line.split():
            key, sep, value = field.partition("=")
            if sep:
                record[key] = value
        if record:
            records.append(record)
    return records


def sacct_line(record: dict[str, str]) -> str:
    """``JobID|State|NodeList`` for one ``scontrol`` record, in submitit's vocabulary."""
    array_id, task_id = record.get("ArrayJobId"), record.get("ArrayTaskId")
    if array_id and task_id:
        job = f"{array_id}_{task_id}" if task_id.isdigit() else f"{array_id}_[{task_id}]"
    else:
        job = record.get("JobId", "")
    state = record.get("JobState", "UNKNOWN")
    if state in _STILL_RUNNING:
        state = "RUNNING"
    elif state in _STILL_PENDING:
        state = "PENDING"
    return f"{job}|{state}|{record.get('NodeList', '')}"


def main(argv: list[str] | None = None) -> int:
    """Answer submitit's query on stdout; exit 1 like the real ``sacct`` for anything else."""
    ids = parse_args(sys.argv[1:] if argv is None else argv)
    if ids is None:
        print("sacct (dqnlab stand-in): only submitit's job-state query is answered here", file=sys.stderr)
        return 1
    lines = ["|".join(FIELDS)]
    for job_id in ids:
        lines.extend(sacct_line(r) for r in job_records(job_id))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
