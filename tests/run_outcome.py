"""What a run learned and scored, as one comparable string: two records that must hold the same numbers (a resumed
run and an uninterrupted one, host- and device-resident data, deterministic kernels or not, N workers or one)
give the same."""

from __future__ import annotations

import json

from benchmark.records import learned


def outcome(record: dict) -> str:
    """`records.learned` as exact JSON (float reprs), so that NaN compares equal."""
    return json.dumps(learned(record), sort_keys=True)
