"""MedMNIST multi-dataset benchmark: suites of dataset × model × seed runs, one JSON record per run, and the
tables and figures made from those records.

The Python API (imported on first use: `import benchmark` imports neither torch nor pandas until a function is
called):

    import benchmark
    suite = benchmark.load_suite("smoke", limit=64, epochs=1)
    summary = benchmark.run_suite(suite, output="results")
    records = benchmark.load_records("results")        # a results, runs or suite folder, or record files
    frame = benchmark.records_frame(records)            # pandas: one row per run, test metrics as columns
    benchmark.write_leaderboard("results", "results")   # leaderboard.md / .csv / .tex
    benchmark.write_figures("results", "results/figures", formats=("png",))
    run = benchmark.load_run("breastmnist-28-resnet18_28-s0-b64276d5")   # a finished run: model + best.pt
    report = benchmark.predict(run, ["image.png", "breastmnist:test"])  # .predictions, .errors, .write("x.csv")
    benchmark.export_model(run, "onnx", quantize="int8")  # also explain(run, files), serve(run) / create_app(run)
    benchmark.write_site("results", "results/site")     # the static HTML site (links to results/figures)

Messages go to the `benchmark` logger (`logging.getLogger("benchmark").setLevel(logging.WARNING)` silences them).
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# name -> the module that defines it
_API = {
    "load_suite": "benchmark.config",
    "run_suite": "benchmark.runner",
    "GridSummary": "benchmark.runner",
    "run_perf": "benchmark.perf",
    "PerfConfig": "benchmark.perf",
    "UserError": "benchmark.errors",
    "load_records": "benchmark.records",
    "records_frame": "benchmark.records",
    "per_class_frame": "benchmark.records",
    "write_leaderboard": "benchmark.report.leaderboard",
    "write_figures": "benchmark.report.figures",
    "load_run": "benchmark.use.loaded",
    "predict": "benchmark.use.predict",
    "export_model": "benchmark.use.export",
    "explain": "benchmark.use.explain",
    "create_app": "benchmark.use.serve",
    "serve": "benchmark.use.serve",
    "robustness": "benchmark.use.robustness",
    "write_site": "benchmark.report.site",
}

__all__ = ["__version__", *sorted(_API)]


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'benchmark' has no attribute {name!r}")
    value = getattr(importlib.import_module(_API[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_API})
