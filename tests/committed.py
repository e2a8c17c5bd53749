"""The project's committed result files: what a clean clone holds, not what local runs added beside them.

A developer who ran the README's smoke suite has untracked records under `results/runs/smoke/`; tests about the
committed results (run ids, machine paths, the committed leaderboard) must not read those.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]


def committed_files(pattern: str) -> list[Path]:
    """Tracked files matching a glob relative to the project (every match when this is not a git checkout)."""
    matches = sorted(PROJECT.glob(pattern))
    try:
        listed = subprocess.run(["git", "ls-files", "-z", "--", pattern], cwd=PROJECT, capture_output=True,
                                check=True).stdout.decode().split("\0")
    except (OSError, subprocess.CalledProcessError):
        return matches
    tracked = {PROJECT / name for name in listed if name}
    return [path for path in matches if path in tracked]
