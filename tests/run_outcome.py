"""What a run learned and scored, as one comparable string: two records that must hold the same numbers (a resumed
run and an uninterrupted one, host- and device-resident data, deterministic kernels or not) give the same."""

from __future__ import annotations

import json


def outcome(record: dict) -> str:
    """Everything the run learned and scored (history without its timings, best epoch, test metrics and
    probabilities, early stop, config hash); exact float reprs, so NaN compares equal."""
    history = [{key: value for key, value in entry.items() if key != "seconds"} for entry in record["history"]]
    kept = {key: record[key] for key in ("config_hash", "best_epoch", "test", "test_predictions", "stopped_early")}
    return json.dumps({**kept, "history": history}, sort_keys=True)
