"""Critical-difference diagrams (Demšar 2006) of the rankings across datasets (`benchmark.report.ranking`).

Each model sits at its mean rank over the datasets (1 = best, on the right); a thick bar joins models whose mean
ranks differ by less than the Nemenyi critical difference (the CD bar at the top), i.e. models the Friedman /
Nemenyi test cannot tell apart. Drawn by autorank's `plot_stats` on our Agg figure; only for a tested ranking
of three models or more (the `rank` extra installed, at least `ranking.MIN_DATASETS` datasets).
"""

from __future__ import annotations

from matplotlib.figure import Figure

from benchmark.report.aggregate import METRIC_LABELS
from benchmark.report.figures.style import DOUBLE, new_figure
from benchmark.report.load import SuiteData
from benchmark.report.ranking import ALPHA, Ranking, medmnist_plus_rankings, suite_rankings


def plot_critical_difference(ranking: Ranking) -> Figure | None:
    if not ranking.tested or ranking.nemenyi is None:
        return None
    from autorank import plot_stats

    n_models, n_datasets = ranking.values.shape[1], ranking.values.shape[0]
    fig = new_figure(DOUBLE, 1.4 + 0.16 * n_models, layout=None)
    ax = fig.subplots()
    plot_stats(ranking.result, allow_insignificant=True, ax=ax)
    fig.suptitle(f"{ranking.title}: mean rank on {METRIC_LABELS.get(ranking.metric, ranking.metric)} over "
                 f"{n_datasets} datasets\nFriedman p = {ranking.pvalue:.2g}; bars join models within the Nemenyi "
                 f"critical difference (CD = {ranking.cd:.2f}, α = {ALPHA:g})", fontsize=8, y=0.995)
    return fig


def plot_suite_critical_difference(data: SuiteData, metric: str) -> Figure | None:
    """The critical-difference diagram of one suite's ranking on `metric` (None while it is untested)."""
    found = [r for r in suite_rankings(data) if r.metric == metric]
    return plot_critical_difference(found[0]) if found else None


def plot_published_critical_difference(key: str) -> Figure | None:
    """The critical-difference diagram of one published MedMNIST+ ranking (`Ranking.key`)."""
    found = [r for r in medmnist_plus_rankings() if r.key == key]
    return plot_critical_difference(found[0]) if found else None
