"""Figures drawn from run records alone into `results/figures/<suite>/` (per-run figures in its `runs/`).

Reads records only: no torch, no `benchmark.data` / `benchmark.models` / `benchmark.train`. Every figure is a
standalone `matplotlib.figure.Figure` on an Agg canvas (never pyplot, so no GUI backend and no global
figure state), styled with one seaborn theme (whitegrid, "paper" context, colour-blind palette) and sized
for a paper: 3.5 in wide (single column) or 7 in (double column), fonts 6-8 pt.

Per completed run (`<suite>/runs/<run_id>_<kind>.<fmt>`):
    confusion   counts and row-normalised confusion matrices (from record["test_predictions"])
    roc         ROC curve per class, AUC in the legend (binary: the positive class only)
    confidence  histogram of the max class probability, correct vs incorrect
    curves      training loss / validation loss and validation metrics per epoch, best epoch marked
                (also drawn for failed runs that have a history)
Per suite (`<suite>/<kind>.<fmt>`):
    heatmap_<metric>              model x dataset heatmap of each headline metric (best per column boxed)
    per_class_recall_<dataset>    per-class recall bars per model (mean ± std over seeds)
    resolution_acc                test ACC vs dataset image size (28/64/128/224) per model, one panel per dataset
    avg_rank                      average rank across datasets per model, for each headline metric
    critical_difference_<metric>  Demšar's critical-difference diagram of the suite's ranking across datasets (only
                                  once tested: the `rank` extra and >= 5 datasets; `figures.ranking`)
    samples_<dataset>-<size>      grid of test images per class (from record["samples"], when present)
plus `<suite>/index.md` listing the files, and (all suites drawn) `ranking/critical_difference_<ranking>` for the
published MedMNIST+ rankings. Every number drawn comes from `benchmark.report.aggregate`.

One module per family of figures (`runs`, `calibration`, `comparison`, `ranking`, `samples`), the shared look and record
access in `style`, and the one list of figure jobs with the entry points that draw them in `jobs`.
"""

from benchmark.report.figures.calibration import plot_reliability, plot_reliability_suite
from benchmark.report.figures.comparison import plot_avg_rank, plot_heatmap, plot_per_class_recall, plot_resolution
from benchmark.report.figures.jobs import (
    RANKING_FOLDER,
    RUN_FIGURES,
    FigureJob,
    figure_jobs,
    ranking_figures,
    suite_figures,
    write_figures,
)
from benchmark.report.figures.ranking import plot_critical_difference
from benchmark.report.figures.runs import plot_confidence, plot_confusion, plot_curves, plot_roc
from benchmark.report.figures.samples import plot_predictions, plot_samples, sample_sets
from benchmark.report.figures.style import safe_stem

__all__ = ["RANKING_FOLDER", "RUN_FIGURES", "FigureJob", "figure_jobs", "plot_avg_rank", "plot_confidence",
           "plot_confusion", "plot_curves", "plot_critical_difference", "plot_heatmap", "plot_per_class_recall",
           "plot_predictions", "plot_reliability", "plot_reliability_suite", "plot_resolution", "plot_roc",
           "plot_samples", "ranking_figures", "safe_stem", "sample_sets", "suite_figures", "write_figures"]
