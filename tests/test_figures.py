"""Figures from factory-built records: every figure is produced, non-empty and a valid PNG / PDF."""

from __future__ import annotations

import base64
import logging
import warnings

import pytest
from PIL import Image
from record_factory import make_grid, make_record, write_records

from benchmark.errors import UserError
from benchmark.report import figures
from benchmark.report.figures.jobs import figure_jobs
from benchmark.report.load import by_suite, load_plan
from benchmark.report.ranking import medmnist_plus_rankings

SUITE = "unit"
SUITE_KINDS = ["heatmap_acc", "heatmap_auc", "heatmap_f1_macro", "heatmap_balanced_acc",
               "per_class_recall_breastmnist", "per_class_recall_retinamnist", "resolution_acc", "avg_rank",
               "samples_breastmnist-28", "samples_retinamnist-28", "reliability"]


def _check_png(path):
    assert path.stat().st_size > 0
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG" and im.width > 50 and im.height > 30


@pytest.fixture(scope="module")
def grid_figures(tmp_path_factory, module_logs):
    root = tmp_path_factory.mktemp("figs")
    records = make_grid(suite=SUITE)
    write_records(records, root / "runs")
    (root / "runs" / SUITE / "half.json").write_text('{"schema_version": 1, "sta', encoding="utf-8")
    # PNG only and a low dpi keep the test fast; PDF output is checked on a smaller suite below
    paths = figures.write_figures(root / "runs", root / "figures", formats=("png",), dpi=40)
    assert "half.json" in module_logs.text
    return records, root / "figures", paths


def test_every_figure_produced_and_opens(grid_figures):
    records, out, paths = grid_figures
    expected = {f"{SUITE}/{k}.png" for k in SUITE_KINDS}
    for rec in records:
        kinds = (["confusion", "roc", "confidence", "reliability", "curves", "predictions"]
                 if rec["status"] == "completed" else ["curves"])
        expected |= {f"{SUITE}/runs/{rec['run_id']}_{k}.png" for k in kinds}
    # drawn with all suites, where tested (the published 4 datasets are too few: no diagram)
    published = {f"ranking/critical_difference_{r.key}.png" for r in medmnist_plus_rankings() if r.tested}
    pngs = {p.relative_to(out).as_posix() for p in paths if p.suffix == ".png"}
    assert pngs == expected | published
    pngs -= published
    assert len(pngs) == 10 * 6 + 1 + len(SUITE_KINDS)  # 10 completed runs × 6 kinds, 1 failed run's curves
    for name in sorted(pngs | published):
        _check_png(out / name)
    index = out / SUITE / "index.md"
    text = index.read_text(encoding="utf-8")
    assert index in paths and all(f"({name.removeprefix(SUITE + '/')})" in text for name in pngs)


def test_no_pyplot_figures_left_open(grid_figures):
    import matplotlib.pyplot as plt

    assert plt.get_fignums() == []


def test_png_and_pdf_small_suite(tmp_path):
    recs = [make_record(suite="tiny", dataset="bloodmnist", model="vit_b16", seed=0, n_test=40),
            make_record(suite="tiny", dataset="bloodmnist", model="resnet18_28", seed=0, n_test=40,
                        status="failed", with_samples=False)]
    write_records(recs, tmp_path / "runs")
    paths = figures.write_figures(tmp_path / "runs", tmp_path / "out", suite="tiny", formats=("png", "pdf"), dpi=50)
    figs = [p for p in paths if p.suffix in (".png", ".pdf")]
    stems = {p.stem for p in figs}
    assert {p.stem for p in figs if p.suffix == ".png"} == {p.stem for p in figs if p.suffix == ".pdf"} == stems
    assert "samples_bloodmnist-28" in stems and f"{recs[1]['run_id']}_curves" in stems
    assert f"{recs[1]['run_id']}_confusion" not in stems  # failed run: no predictions
    for p in figs:
        if p.suffix == ".pdf":
            data = p.read_bytes()
            assert data.startswith(b"%PDF") and len(data) > 1000
        else:
            _check_png(p)


def test_pngs_of_plots_are_palette_images_and_pngs_of_photographs_keep_their_colours(tmp_path):
    """A plot's PNG is a palette image: a fraction of the full-colour file's bytes, no pixel more than 16 levels
    off the drawing and white still white. A figure of colour photographs (here random colours, the hardest
    case) keeps every pixel of the drawing."""
    import io

    import numpy as np

    from benchmark.report.figures.style import PNG_PALETTE_MAX_ERROR, new_figure, save_figure

    def draw(with_photograph: bool):
        rng = np.random.default_rng(0)
        fig = new_figure(3.5, 2.0)
        left, right = fig.subplots(1, 2)
        if with_photograph:
            left.imshow(rng.integers(0, 256, (28, 28, 3), dtype=np.uint8))
        for k in range(3):
            left.plot(np.cumsum(rng.normal(size=50)), label=f"walk {k}")
        right.fill_between(range(50), np.cumsum(rng.normal(size=50)), alpha=0.3)
        left.legend()
        full = io.BytesIO()
        fig.savefig(full, format="png", dpi=150)
        (path,) = save_figure(fig, tmp_path, f"photograph-{with_photograph}", ("png",), 150)
        with Image.open(path) as saved, Image.open(full) as drawn:
            pixels = np.asarray(saved.convert("RGB"), float), np.asarray(drawn.convert("RGB"), float)
            error = np.abs(pixels[0] - pixels[1])
            assert tuple(pixels[0][0, 0]) == (255, 255, 255)  # the background
            return saved.mode, error.max(), error.mean(), path.stat().st_size / len(full.getvalue())

    mode, largest, mean, ratio = draw(with_photograph=False)
    assert mode == "P" and largest <= PNG_PALETTE_MAX_ERROR and mean <= 0.5 and ratio < 0.6, (mode, largest, ratio)
    mode, largest, _, _ = draw(with_photograph=True)
    assert mode == "RGB" and largest == 0


def test_old_records_without_samples_or_predictions(tmp_path, caplog):
    # an old record: no test_predictions; its samples block has one undecodable image
    rec = make_record(suite="old")
    del rec["test_predictions"]
    rec["samples"]["per_class"][0][0] = base64.b64encode(b"not a png").decode()
    no_samples = make_record(suite="old", dataset="retinamnist", with_samples=False)
    del no_samples["test_predictions"]
    write_records([rec, no_samples], tmp_path / "runs")
    with caplog.at_level(logging.WARNING, logger="benchmark"):
        paths = figures.write_figures(tmp_path / "runs", tmp_path / "out", formats=("png",), dpi=40)
    names = {p.name for p in paths}
    assert f"{rec['run_id']}_curves.png" in names and f"{rec['run_id']}_confusion.png" not in names
    assert "samples_breastmnist-28.png" in names and "samples_retinamnist-28.png" not in names
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert f"{rec['run_id']}: skipped 1 undecodable sample image(s)" in warned
    assert any(m.startswith(f"{rec['run_id']}: no test_predictions") for m in warned)


def test_heatmap_with_rotated_dataset_names_fits_its_canvas(tmp_path, caplog):
    # one group on two long-named test sets (BUSI grouped and random split): the dataset names are rotated and
    # hang below the axes; a canvas sized for the rows alone made matplotlib give up the layout (title over
    # the cells, names cut off) with a warning, which the figure code logs under the figure's name
    recs = [make_record(suite="leak", dataset="breast_ultrasound", size=64, seed=0, with_samples=False)]
    random_split = make_record(suite="leak", dataset="breast_ultrasound", size=64, seed=1, with_samples=False)
    random_split["dataset"]["split"] = {"kind": "random", "seed": 0}
    write_records([*recs, random_split], tmp_path / "runs")
    with caplog.at_level(logging.WARNING, logger="benchmark"), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        paths = figures.write_figures(tmp_path / "runs", tmp_path / "out", formats=("png",), dpi=40)
    assert "heatmap_acc.png" in {p.name for p in paths}
    assert not [r.getMessage() for r in caplog.records if r.getMessage().startswith("figure ")]
    assert not [str(w.message) for w in caught if "layout" in str(w.message)]  # none bypasses the log either


def test_bad_arguments_are_user_errors(tmp_path):
    write_records([make_record(suite="x")], tmp_path / "runs")
    with pytest.raises(UserError, match="format"):
        figures.write_figures(tmp_path / "runs", tmp_path / "out", formats=("jpg",))
    with pytest.raises(UserError, match="dpi"):
        figures.write_figures(tmp_path / "runs", tmp_path / "out", dpi=0)
    with pytest.raises(UserError, match="no records for suite"):
        figures.write_figures(tmp_path / "runs", tmp_path / "out", suite="missing")


def test_seeds_expected_come_from_the_suite_file(tmp_path):
    """Every record has seed 0 only, but the suite file plans seeds 0-2: the heatmap marks each cell 1/3†."""
    (tmp_path / "suites").mkdir()
    (tmp_path / "suites" / "planned.yaml").write_text(
        "name: planned\nseeds: [0, 1, 2]\ndatasets: [breastmnist]\nmodels: [resnet18_28, vit_b16]\n")
    records = [make_record(suite="planned", model=m, seed=0) for m in ("resnet18_28", "vit_b16")]
    write_records(records, tmp_path / "runs")
    figures.write_figures(tmp_path / "runs", tmp_path / "figures", formats=("png",), dpi=40,
                          suites_dir=tmp_path / "suites")
    index = (tmp_path / "figures" / "planned" / "index.md").read_text()
    assert "(heatmap_acc.png)" in index
    plan = load_plan("planned", tmp_path / "suites")
    fig = figures.plot_heatmap(records, "acc", "planned", plan)
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert len(texts) == 2 and all(t.endswith("\n1/3†") for t in texts), texts
    unplanned = figures.plot_heatmap(records, "acc", "planned")
    assert not any("†" in t.get_text() for t in unplanned.axes[0].texts)


def test_suite_reliability_and_severity_curves_draw_one_line_per_scheme():
    """Four schemes of one model and size are four lines, named as the leaderboard's and the heatmap's rows; plain
    training is named only where a model and size has both kinds (from scratch and fine-tuned: they were one line)."""
    from benchmark.report.figures.calibration import plot_reliability_suite
    from benchmark.report.figures.robustness import plot_robustness_heatmap, plot_severity_curves
    from benchmark.report.figures.style import distinct_row_labels, short

    records = [make_record(suite="schemes", scheme=scheme, n_test=40, with_samples=False)
               for scheme in ("from_scratch", "fine_tune", "lora", "knn")]
    for step, record in enumerate(records, 1):
        record["robustness"] = {"clean": {"acc": 0.9, "auc": 0.9, "balanced_error": 0.1}, "corruptions": {
            "pixelate": {"severities": [{"severity": s, "acc": 0.9 - 0.02 * step * s, "auc": 0.9,
                                         "balanced_error": 0.1 + 0.02 * step * s} for s in range(1, 6)]}}}
    rows = [f"resnet18_28 (28) · {scheme}" for scheme in ("fine_tune", "from_scratch", "knn", "lora")]
    reliability = [text.get_text() for text in plot_reliability_suite(records, "schemes").axes[0].get_legend().get_texts()]
    assert [text.split(" ECE ")[0] for text in reliability[1:]] == [short(row) for row in rows]  # as the legend cuts
    # one seed each: its ECE is the leaderboard's; several seeds' pooled predictions are said to be pooled
    pooled = plot_reliability_suite(records + records[:1], "schemes").axes[0].get_legend().get_texts()
    assert " pooled ECE " in pooled[2].get_text() and " pooled " not in pooled[1].get_text()
    # kNN's vote fractions are not probabilities: no ECE, as in the leaderboard
    assert reliability[3].endswith("· knn ECE n/a (vote fractions)")
    assert "n/a" not in "".join(reliability[1:3] + reliability[4:])
    assert distinct_row_labels([("m", 28, "from_scratch"), ("m", 28, "lora"), ("m", 64, "fine_tune")]) == {
        ("m", 28, "from_scratch"): "m (28)", ("m", 28, "lora"): "m (28) · lora", ("m", 64, "fine_tune"): "m (64)"}
    severity = plot_severity_curves(records, "breastmnist", "schemes").axes[0].get_legend().get_texts()
    assert [text.get_text() for text in severity] == [short(row, 30) for row in rows]
    heatmap = plot_robustness_heatmap(records, "breastmnist", "schemes").axes[0].get_yticklabels()
    assert [label.get_text() for label in heatmap] == rows


def test_a_random_split_is_its_own_test_set_in_every_figure():
    """busi-leakage compares the grouped and the random split of one dataset: the per-class recall and the
    resolution figures pooled both into one bar and point (n = 6 of 3 seeds each), hiding the gap it measures."""
    from benchmark.report.figures.comparison import _recall_by_group, plot_resolution

    records = [make_record(suite="leak", dataset="breast_ultrasound", size=64, seed=seed, with_samples=False)
               for seed in range(4)]
    for record in records[2:]:
        record["dataset"]["split"] = {"kind": "random"}
    (grouped_runs,) = _recall_by_group(records, "breast_ultrasound")[1].values()
    (random_runs,) = _recall_by_group(records, "breast_ultrasound (random split)")[1].values()
    assert len(grouped_runs) == len(random_runs) == 2
    titles = [ax.get_title() for ax in plot_resolution(records, "leak").axes if ax.get_title()]
    assert titles == ["breast_ultrasound", "breast_ultrasound (random split)"]
    stems = [job.stem for job in figure_jobs(by_suite(records)["leak"]) if job.stem.startswith("per_class_recall")]
    assert stems == ["per_class_recall_breast_ultrasound", "per_class_recall_breast_ultrasound_random_split"]


def test_reused_figures_are_redrawn_exactly_when_their_inputs_change(tmp_path):
    """The site reuses drawn figures; it kept a heatmap of the old records after new runs arrived. A suite figure
    is redrawn when any record of the suite changes, a per-run figure when its record does, nothing else."""
    from benchmark.report.figures.jobs import suite_figures

    records = make_grid(suite="unit", models=("resnet18_28",), seeds=(0,), missing=(), failed=())
    folder = tmp_path / "figures"

    def draw(recs):
        suite_figures(by_suite(recs)["unit"], folder, ("png",), 40, reuse=("png",))
        return {p.relative_to(folder).as_posix(): p.stat().st_mtime_ns for p in folder.rglob("*.png")}

    first = draw(records)
    assert draw(records) == first  # nothing changed: nothing redrawn
    added = make_grid(suite="unit", models=("vit_b16",), seeds=(0,), missing=(), failed=())
    second = draw(records + added)
    assert second["heatmap_acc.png"] != first["heatmap_acc.png"]
    unchanged = [stem for stem in first if stem.startswith("runs/")]
    assert unchanged and all(second[stem] == first[stem] for stem in unchanged)
    rerun = records[0] | {"test": {**records[0]["test"], "acc": 0.5}}  # a --force rerun of one run
    third = draw([rerun, *records[1:], *added])
    redrawn = {stem for stem in unchanged if third[stem] != second[stem]}
    assert redrawn and all(stem.startswith(f"runs/{records[0]['run_id']}") for stem in redrawn)
