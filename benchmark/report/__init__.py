"""Reports from run records alone (no torch, no data): load (records → frame, plan) → aggregate (pandas) → render.

    from benchmark.report import write_leaderboard, write_figures
    write_leaderboard("results", "results")             # leaderboard.md / .csv / .tex
    write_figures("results", "results/figures")          # figures/<suite>/..., per-run figures in <suite>/runs/
    # benchmark.report.site.write_site("results", "results/site")   # static HTML site linking to those figures

`benchmark.report.aggregate` holds every number (a DataFrame per table), `benchmark.report.render` formats them.
"""

from __future__ import annotations

from benchmark.report.leaderboard import build_leaderboard, write_leaderboard

__all__ = ["build_leaderboard", "write_figures", "write_leaderboard"]


def __getattr__(name: str):
    if name == "write_figures":  # matplotlib is imported only when figures are drawn
        from benchmark.report.figures import write_figures

        return write_figures
    raise AttributeError(f"module 'benchmark.report' has no attribute {name!r}")
