"""MedMNIST multi-dataset benchmark suite: suites → data → models → training → metrics → records → report.

The Python API (imported lazily: `import benchmark` imports neither torch nor pandas):

    import benchmark
    records = benchmark.load_records("results")        # a results, runs or suite folder, or record files
    frame = benchmark.records_frame(records)            # pandas: one row per run, test metrics as columns
    benchmark.write_leaderboard("results", "results")   # leaderboard.md / .csv / .tex
    benchmark.write_figures("results", "results/figures", formats=("png",))
"""

__version__ = "0.1.0"

_API = {
    "load_records": "benchmark.records",
    "records_frame": "benchmark.records",
    "per_class_frame": "benchmark.records",
    "write_leaderboard": "benchmark.report.leaderboard",
    "write_figures": "benchmark.report.figures",
}

__all__ = ["__version__", "load_records", "per_class_frame", "records_frame", "write_figures", "write_leaderboard"]


def __getattr__(name: str):
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'benchmark' has no attribute {name!r}")
