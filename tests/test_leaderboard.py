"""Leaderboard tables from factory-built records: numbers, marks, published rows, the suite's planned grid,
determinism, comparisons."""

from __future__ import annotations

import io
import json
import logging
import math
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from committed import committed_files
from record_factory import FAILED, MISSING, make_grid, make_record, write_records, write_suite_file
from scipy import stats

from benchmark.errors import UserError
from benchmark.records import load_records, parse_protocol, records_frame
from benchmark.report import aggregate, leaderboard, render
from benchmark.report.load import SuitePlan, load_plan, load_published

SUITE = "unit"


def _md_table(md: str, title: str) -> list[dict[str, str]]:
    """Rows (header -> cell text) of the markdown table under `#### <title>`."""
    lines = md.splitlines()
    start = lines.index(f"#### {title}")
    block = []
    for ln in lines[start + 1:]:
        if ln.startswith("#"):
            break
        if ln.startswith("|"):
            block.append(ln)
    assert block, f"no table under {title}"
    split = lambda ln: [c.strip() for c in ln.strip("|").split(" | ")]  # noqa: E731
    header = split(block[0])
    return [dict(zip(header, split(ln))) for ln in block[2:]]


def _row(rows, model, source="measured", size=None):
    hits = [r for r in rows if r["Model"].strip("*") == model and r["Source"].strip("*").startswith(source)
            and (size is None or r["Size"] == str(size))]
    assert len(hits) == 1, (model, source, rows)
    return hits[0]


def _values(records, dataset, model, metric="acc"):
    return [r["test"][metric] for r in sorted(records, key=lambda r: r["seed"])
            if r["status"] == "completed" and r["dataset"]["name"] == dataset and r["model"]["name"] == model]


@pytest.fixture(scope="module")
def grid():
    return make_grid(suite=SUITE)


@pytest.fixture(scope="module")
def board(grid, tmp_path_factory, module_logs):
    root = tmp_path_factory.mktemp("lb")
    runs = root / "runs"
    write_records(grid, runs)
    (runs / SUITE / "zz-half-written.json").write_text('{"schema_version": 1, "status": "compl', encoding="utf-8")
    (runs / SUITE / "partial.json.tmp").write_text("{", encoding="utf-8")
    paths = leaderboard.write_leaderboard(runs, root / "results", suites_dir=root / "no-suites")  # plan unknown
    assert "zz-half-written" in module_logs.text
    md, csv_text, tex = (p.read_text(encoding="utf-8") for p in paths)
    return {"root": root, "runs": runs, "paths": paths, "md": md, "csv": csv_text, "tex": tex}


def test_writes_three_files(board):
    assert [p.name for p in board["paths"]] == ["leaderboard.md", "leaderboard.csv", "leaderboard.tex"]
    assert all(p.stat().st_size > 0 for p in board["paths"])


def test_load_records_skips_half_written_and_tmp(board, grid, caplog):
    recs = load_records(board["runs"], SUITE)
    assert re.search("skipping unreadable record .*zz-half-written", caplog.text)
    assert len(recs) == len(grid) == 11
    assert sorted(r["run_id"] for r in recs) == sorted(r["run_id"] for r in grid)


def test_duplicate_config_hash_keeps_newest_completed(tmp_path):
    old_ok = make_record(seed=0, created_at="2026-11-20T00:00:00+00:00")
    new_ok = json.loads(json.dumps(old_ok))
    new_ok["created_at"] = "2026-11-22T00:00:00+00:00"
    new_ok["test"]["acc"] = 0.123
    newest_failed = make_record(seed=0, status="failed", created_at="2026-11-23T00:00:00+00:00")
    assert newest_failed["config_hash"] == old_ok["config_hash"]
    d = tmp_path / SUITE
    d.mkdir()
    for name, rec in (("a.json", new_ok), ("b.json", old_ok), ("c.json", newest_failed)):
        (d / name).write_text(json.dumps(rec), encoding="utf-8")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        recs = load_records(tmp_path)
    assert len(recs) == 1
    assert recs[0]["status"] == "completed" and recs[0]["test"]["acc"] == 0.123


def test_exact_mean_std_and_seed_count(board, grid):
    vals = _values(grid, "breastmnist", "resnet18_28")
    assert len(vals) == 3
    mean, std = float(np.mean(vals)), float(np.std(vals, ddof=1))
    rows = _md_table(board["md"], f"Suite {SUITE}: test ACC")
    cell = _row(rows, "resnet18_28")["breastmnist"]
    assert cell.replace("**", "").replace("✓ ", "").replace("≈ ", "") == f"{mean:.3f} ± {std:.3f} (n=3)"
    csv = pd.read_csv(io.StringIO(board["csv"]), keep_default_na=False)
    hit = csv[(csv.table == "headline") & (csv.metric == "acc") & (csv.kind == "measured")
              & (csv.model == "resnet18_28") & (csv.dataset == "breastmnist")]
    assert len(hit) == 1
    assert float(hit["mean"].iloc[0]) == pytest.approx(mean, abs=1e-6)
    assert float(hit["std"].iloc[0]) == pytest.approx(std, abs=1e-6)
    assert int(hit["n_seeds"].iloc[0]) == 3 and int(hit["n_expected"].iloc[0]) == 3


def test_only_the_highest_cell_is_marked_and_bold_only_when_significant(board, grid):
    csv = pd.read_csv(io.StringIO(board["csv"]), keep_default_na=False)
    for metric, title in (("acc", "ACC"), ("auc", "AUC"), ("f1_macro", "Macro F1"), ("balanced_acc", "Balanced ACC")):
        rows = _md_table(board["md"], f"Suite {SUITE}: test {title}")
        means = {m: np.mean(_values(grid, "breastmnist", m, metric)) for m in ("resnet18_28", "vit_b16")}
        winner, loser = max(means, key=means.get), min(means, key=means.get)
        won, lost = _row(rows, winner)["breastmnist"], _row(rows, loser)["breastmnist"]
        assert ("✓" in won) != ("≈" in won) and "✓" not in lost and "≈" not in lost and not lost.startswith("**")
        assert won.startswith("**") == ("✓" in won)
        hit = csv[(csv.table == "headline") & (csv.metric == metric) & (csv.kind == "measured")
                  & (csv.model == winner) & (csv.dataset == "breastmnist")]
        assert hit["significance"].iloc[0] == ("best" if "✓" in won else "tie")


def test_incomplete_groups_marked_and_failed_run_listed(board, grid):
    rows = _md_table(board["md"], f"Suite {SUITE}: test ACC")
    for model in ("resnet18_28", "vit_b16"):
        assert "(2/3 seeds)†" in _row(rows, model)["retinamnist"]
    # the incomplete cell is the mean over the seeds that exist, not over zeros
    vals = _values(grid, "retinamnist", "vit_b16")
    assert f"{np.mean(vals):.3f} ± {np.std(vals, ddof=1):.3f}" in _row(rows, "vit_b16")["retinamnist"]
    failed = _md_table(board["md"], f"Suite {SUITE}: failed runs")
    assert len(failed) == 1
    f = failed[0]
    ds, model, seed = FAILED
    assert (f["Dataset"], f["Model"], f["Seed"], f["Epoch"]) == (ds, model, str(seed), "2")
    assert "CUDA out of memory" in f["Error"] and f["Error"].startswith("RuntimeError")
    inc = {(r["Dataset"], r["Model"]): r for r in _md_table(board["md"], f"Suite {SUITE}: incomplete groups")}
    assert inc[(MISSING[0], MISSING[1])]["Missing"] == str(MISSING[2])
    assert inc[(FAILED[0], FAILED[1])]["Failed"] == str(FAILED[2])
    assert "Expected seeds per group: 3 (0, 1, 2)." in board["md"]


def test_published_rows_present_marked_and_not_yet_run(board):
    rows = _md_table(board["md"], f"Suite {SUITE}: test ACC")
    pub = _row(rows, "resnet18_28", source="published: MedMNIST v2")
    assert pub["breastmnist"] == "0.863" and pub["bloodmnist"] == "0.958" and pub["pathmnist"] == "0.907"
    assert pub["retinamnist"] == "0.524"
    assert pub["Average"] == "—" and pub["Avg. rank"] == "—"
    vit = _row(rows, "vit_b16", source="published: MedMNIST ViT")
    assert (vit["bloodmnist"], vit["breastmnist"], vit["pathmnist"], vit["retinamnist"]) == (
        "0.979", "0.904", "0.946", "0.570")
    for model in ("resnet18_28", "vit_b16"):
        measured = _row(rows, model)
        assert measured["bloodmnist"] == "not yet run" and measured["pathmnist"] == "not yet run"
    auc = _md_table(board["md"], f"Suite {SUITE}: test AUC")
    assert _row(auc, "resnet50_224", source="published")["breastmnist"] == "0.866"
    # ViT paper reports accuracy only: no row of it in the AUC table (MedMNIST+ reports ViT-B/16 AUCs)
    assert not [r for r in auc if r["Model"].strip("*") == "vit_b16" and "MedMNIST ViT" in r["Source"]]
    plus = [r for r in auc if r["Model"].strip("*") == "vit_b16" and "MedMNIST+" in r["Source"] and r["Size"] == "28"]
    assert {(r["Scheme"], r["breastmnist"]) for r in plus} == {("fine_tune", "0.848"), ("linear_probe", "0.782")}
    # same columns in every metric table, datasets only published rows have included
    f1 = _md_table(board["md"], f"Suite {SUITE}: test Macro F1")
    assert _row(f1, "vit_b16")["pathmnist"] == "not yet run"
    assert "doi:10.1038/s41597-022-01721-8" in board["md"] and "10.1038/s41598-024-63094-9" in board["md"]
    # the ultrasound tutorial row is only shown where its model or dataset occurs
    assert "vit_l16" not in board["md"]


def test_published_rows_never_bold_or_ranked(tmp_path):
    # a weak model: the published 0.863 beats it; the only measured row is compared with nothing, so unmarked
    recs = [make_record(suite="weak", dataset="breastmnist", model="resnet18_28", seed=s, skill=-0.5)
            for s in (0, 1)]
    write_records(recs, tmp_path / "runs")
    md = leaderboard.write_leaderboard(tmp_path / "runs", tmp_path / "out", suite="weak",
                              suites_dir=tmp_path)[0].read_text(encoding="utf-8")
    rows = _md_table(md, "Suite weak: test ACC")
    measured = _row(rows, "resnet18_28")
    assert float(measured["breastmnist"].strip("*").split()[0]) < 0.863
    assert measured["breastmnist"] == "0.367 ± 0.071 (n=2)" and measured["Avg. rank"] == "1.00"
    assert all("**" not in r["breastmnist"] and "✓" not in r["breastmnist"] and "≈" not in r["breastmnist"]
               for r in rows if "published" in r["Source"])


def test_average_and_rank_columns(board, grid):
    rows = _md_table(board["md"], f"Suite {SUITE}: test ACC")
    for model in ("resnet18_28", "vit_b16"):
        avg = np.mean([np.mean(_values(grid, d, model)) for d in ("breastmnist", "retinamnist")])
        assert _row(rows, model)["Average"].strip("*") == f"{avg:.3f}"
    ranks = {m: [] for m in ("resnet18_28", "vit_b16")}
    for d in ("breastmnist", "retinamnist"):
        means = {m: np.mean(_values(grid, d, m)) for m in ranks}
        for m in ranks:
            ranks[m].append(1.0 if means[m] == max(means.values()) else 2.0)
    for m, r in ranks.items():
        assert _row(rows, m)["Avg. rank"].strip("*") == f"{np.mean(r):.2f}"


def test_per_class_table(board, grid):
    rows = _md_table(board["md"], f"Suite {SUITE}: per-class metrics on breastmnist")
    hit = [r for r in rows if r["Model"] == "resnet18_28" and r["Class"] == "normal, benign"]
    assert len(hit) == 1
    recs = [r for r in grid if r["status"] == "completed" and r["dataset"]["name"] == "breastmnist"
            and r["model"]["name"] == "resnet18_28"]
    for col, key in (("Recall", "recall"), ("Precision", "precision"), ("F1", "f1")):
        assert hit[0][col] == f"{np.mean([r['test']['per_class'][key][1] for r in recs]):.3f}"
    retina = _md_table(board["md"], f"Suite {SUITE}: per-class metrics on retinamnist")
    assert {r["Seeds"] for r in retina} == {"2/3†"}


def test_compare_models_numbers(grid):
    df = aggregate.compare_models(records_frame(grid), "resnet18_28", "vit_b16", metric="acc")
    by = {r.dataset: r for r in df.itertuples()}
    a = np.array(_values(grid, "breastmnist", "resnet18_28"))
    b = np.array(_values(grid, "breastmnist", "vit_b16"))
    r = by["breastmnist"]
    assert r.n == 3 and r.seeds == "0,1,2"
    assert r.mean_diff == pytest.approx(np.mean(a - b))
    assert r.std_diff == pytest.approx(np.std(a - b, ddof=1))
    assert r.t_pvalue == pytest.approx(stats.ttest_rel(a, b).pvalue)
    assert r.wilcoxon_pvalue == pytest.approx(stats.wilcoxon(a, b).pvalue)
    assert "smallest possible" in r.note
    # retinamnist: resnet has seeds {0, 2} (1 failed), vit {0, 1} (2 missing): only seed 0 pairs
    rr = by["retinamnist"]
    assert rr.n == 1 and rr.seeds == "0" and math.isnan(rr.t_pvalue) and math.isnan(rr.wilcoxon_pvalue)
    allrow = by[aggregate.ALL_DATASETS]
    ma = np.array([by["breastmnist"].mean_a, rr.mean_a])
    mb = np.array([by["breastmnist"].mean_b, rr.mean_b])
    assert allrow.n == 2
    assert allrow.mean_diff == pytest.approx(np.mean(ma - mb))
    assert allrow.wilcoxon_pvalue == pytest.approx(stats.wilcoxon(ma, mb).pvalue)
    assert list(df.columns)[:3] == ["suite", "dataset", "size"]


def test_compare_models_unknown_model_and_single_dataset(grid):
    with pytest.raises(UserError, match="no completed runs of model 'nope'"):
        aggregate.compare_models(records_frame(grid), "resnet18_28", "nope")
    one = [r for r in grid if r["dataset"]["name"] == "breastmnist"]
    df = aggregate.compare_models(records_frame(one), "vit_b16", "resnet18_28", metric="auc")
    assert list(df["dataset"]) == ["breastmnist"]  # no "all datasets" row for a single dataset
    assert df["mean_diff"].iloc[0] > 0


def test_pairwise_section_in_markdown(board):
    rows = _md_table(board["md"], f"Suite {SUITE}: paired comparisons on test ACC")
    assert {r["A − B"] for r in rows} == {"resnet18_28 − vit_b16"}
    assert any(r["Dataset"].startswith("**all datasets (") for r in rows)
    assert "paired comparisons on test AUC" in board["md"]


def test_tex_is_booktabs_and_marks_published(board):
    tex = board["tex"]
    for token in (r"\toprule", r"\midrule", r"\bottomrule", r"\textbf{", r"\textit{published: MedMNIST v2 Tab. 2}",
                  r"resnet18\_28", r"$\pm$", r"$^\dagger$"):
        assert token in tex, token
    assert tex.count(r"\begin{tabular}") == tex.count(r"\end{tabular}") >= 4
    assert tex.count("{") == tex.count("}")
    assert all(ord(ch) < 128 for ch in tex)
    assert {ch for ch in board["md"] if ord(ch) > 127} <= set(render._TEX_UNICODE)  # none becomes "?" in LaTeX
    assert render.tex_escape("✓ ≈ Δ") == r"$\checkmark$ $\approx$ $\Delta$"


def test_byte_identical_regeneration(board):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        paths = leaderboard.write_leaderboard(board["runs"], board["root"] / "again", suites_dir=board["root"] / "no-suites")
    for first, second in zip(board["paths"], paths):
        assert first.read_bytes() == second.read_bytes(), first.name
    assert "2026-11" not in board["md"]  # no timestamps from the records


def test_without_suite_file_falls_back_and_says_so(board):
    assert "No suite file `unit.yaml` was found" in board["md"]
    assert "Expected seeds per group: 3 (0, 1, 2)." in board["md"]
    assert "the expected seeds are the distinct seeds among the suite's records" in board["md"]
    assert "3 expected = the distinct seeds among the suite's records" in board["tex"]
    csv = pd.read_csv(io.StringIO(board["csv"]), keep_default_na=False)
    assert "not_planned" not in set(csv["status"])  # without a plan every empty cell counts as planned


# ----------------------------------------------------------------------------------------------------------
# The suite file's planned grid
# ----------------------------------------------------------------------------------------------------------
PLANNED = "planned"
PLAN_DATASETS = ("breastmnist", "retinamnist", "bloodmnist", ("breast_ultrasound", 64))
PLAN_MODELS = ("resnet18_28", "vit_b16", "resnet50_28")


@pytest.fixture(scope="module")
def planned(tmp_path_factory):
    """The unit grid plus resnet18_28 on breast_ultrasound at 64 px (4 seeds) and one unplanned vit_b16 run on
    dermamnist; the suite file plans 3 models x 4 datasets x seeds 0-3 (pathmnist and dermamnist unplanned)."""
    root = tmp_path_factory.mktemp("planned")
    recs = (make_grid(suite=PLANNED)
            + [make_record(suite=PLANNED, dataset="breast_ultrasound", size=64, seed=s) for s in range(4)]
            + [make_record(suite=PLANNED, dataset="dermamnist", model="vit_b16", seed=0)])
    write_records(recs, root / "runs")
    write_suite_file(root / "suites", PLANNED, datasets=PLAN_DATASETS, models=PLAN_MODELS, seeds=(0, 1, 2, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        paths = leaderboard.write_leaderboard(root / "runs", root / "out", suites_dir=root / "suites")
    md, csv_text, _ = (p.read_text(encoding="utf-8") for p in paths)
    csv = pd.read_csv(io.StringIO(csv_text), keep_default_na=False)
    return {"root": root, "paths": paths, "md": md, "csv": csv[(csv.table == "headline") & (csv.metric == "acc")],
            "acc": _md_table(md, f"Suite {PLANNED}: test ACC")}


def _status(csv, model, size, dataset):
    hit = csv[(csv.kind == "measured") & (csv.model == model) & (csv["size"] == size) & (csv.dataset == dataset)]
    assert len(hit) == 1, (model, size, dataset)
    return hit["status"].iloc[0]


def test_load_plan_reads_names_mappings_and_default_sizes(tmp_path):
    (tmp_path / "mini.yaml").write_text("datasets: [breast_ultrasound, retinamnist, {name: breastmnist, size: 64}]\n"
                                        "models: [resnet18_28, {name: vit_b16, recipe: r}]\n", encoding="utf-8")
    plan = load_plan("mini", tmp_path)
    assert plan == SuitePlan("mini.yaml", ("resnet18_28", "vit_b16"),
                                (("breast_ultrasound", 224), ("retinamnist", 28), ("breastmnist", 64)), (0,))
    assert load_plan("absent", tmp_path) is None


def test_planned_but_unrecorded_dataset_reads_not_yet_run(planned):
    for model in ("resnet18_28", "vit_b16"):
        assert _row(planned["acc"], model, size=28)["bloodmnist"] == "not yet run"
        assert _status(planned["csv"], model, 28, "bloodmnist") == "not_run"


def test_unplanned_cells_read_dash(planned):
    rows = planned["acc"]
    small, large = _row(rows, "resnet18_28", size=28), _row(rows, "resnet18_28", size=64)
    assert small["breast_ultrasound"] == "—"  # planned at 64 px only
    assert large["breastmnist"] == large["retinamnist"] == large["bloodmnist"] == "—"
    assert large["breast_ultrasound"].strip("*").endswith("(n=4)")
    assert _status(planned["csv"], "resnet18_28", 64, "breastmnist") == "not_planned"
    # a measured but unplanned dataset is still a column; only the row that has runs there shows numbers
    assert small["dermamnist"] == "—"
    assert _row(rows, "vit_b16", size=28)["dermamnist"] == "0.800 (1/4 seeds)†"


def test_planned_model_without_records_gets_rows(planned):
    rows = planned["acc"]
    for d in ("breastmnist", "retinamnist", "bloodmnist"):
        assert _row(rows, "resnet50_28", size=28)[d] == "not yet run"
    r50 = _row(rows, "resnet50_28", size=64)
    assert r50["breast_ultrasound"] == "not yet run" and r50["breastmnist"] == "—"
    assert r50["Scheme"] == r50["Average"] == r50["Avg. rank"] == "—"
    assert _row(rows, "vit_b16", size=64)["breast_ultrasound"] == "not yet run"


def test_unplanned_published_only_dataset_has_no_column(planned):
    header = set(planned["acc"][0])
    assert {"bloodmnist", "breastmnist", "retinamnist", "breast_ultrasound", "dermamnist"} <= header
    assert "pathmnist" not in planned["md"]
    pub = _row(planned["acc"], "resnet18_28", source="published: MedMNIST v2")
    assert pub["bloodmnist"] == "0.958" and pub["breastmnist"] == "0.863"
    assert _row(planned["acc"], "resnet18_28", size=28)["bloodmnist"] == "not yet run"  # published never fills


def test_expected_seeds_from_suite_file(planned):
    md = planned["md"]
    assert "Expected seeds per group: 4 (0, 1, 2, 3), the seeds listed in planned.yaml." in md
    assert "Planned grid (`planned.yaml`): 3 model(s)" in md
    # the records hold seeds 0-2 on the 28-px datasets only, yet 4 seeds are expected
    assert _row(planned["acc"], "resnet18_28", size=28)["breastmnist"].endswith("(3/4 seeds)†")
    cells = planned["csv"][(planned["csv"].kind == "measured") & ~planned["csv"].dataset.isin(["AVERAGE", "AVG_RANK"])]
    assert set(cells["n_expected"].astype(int)) == {4}
    inc = {(r["Dataset"], r["Model"]): r for r in _md_table(md, f"Suite {PLANNED}: incomplete groups")}
    assert inc[("breastmnist", "resnet18_28")]["Missing"] == "3"
    assert ("breast_ultrasound", "resnet18_28") not in inc
    per_class = _md_table(md, f"Suite {PLANNED}: per-class metrics on breastmnist")
    assert {r["Seeds"] for r in per_class} == {"3/4†"}


def test_planned_regeneration_is_byte_identical(planned):
    root = planned["root"]
    again = leaderboard.write_leaderboard(root / "runs", root / "again", suites_dir=root / "suites")
    for first, second in zip(planned["paths"], again):
        assert first.read_bytes() == second.read_bytes(), first.name


@pytest.mark.parametrize("text", ["datasets: [breastmnist\n", "datasets: [{size: 28}]\nmodels: [resnet18_28]\n",
                                  "datasets: []\nmodels: [resnet18_28]\n", "- a list\n"])
def test_unusable_suite_file_warns_and_falls_back(tmp_path, caplog, text):
    write_records([make_record(suite="broken", seed=s) for s in (0, 1)], tmp_path / "runs")
    (tmp_path / "broken.yaml").write_text(text, encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="benchmark"):
        md = leaderboard.write_leaderboard(tmp_path / "runs", tmp_path / "out",
                                  suites_dir=tmp_path)[0].read_text(encoding="utf-8")
    assert any(re.match(r"ignoring suite file .*broken\.yaml", r.getMessage()) for r in caplog.records)
    assert "No suite file `broken.yaml` was found" in md and "Expected seeds per group: 2 (0, 1)." in md


def _real_suite_board(tmp_path, monkeypatch, suite, records) -> str:
    """Markdown for `records` of `suite`, its plan found in the project's suites/ folder (not the cwd's)."""
    monkeypatch.chdir(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        md, _, _ = leaderboard.build_leaderboard(records)
    return md


def test_real_medmnist_v2_suite_lists_unavailable_datasets_as_not_yet_run(tmp_path, monkeypatch):
    recs = make_grid(suite="medmnist-v2", models=("resnet18_28",), missing=(), failed=())
    md = _real_suite_board(tmp_path, monkeypatch, "medmnist-v2", recs)
    assert "the seeds listed in medmnist-v2.yaml" in md
    for metric in ("ACC", "AUC"):
        rows = _md_table(md, f"Suite medmnist-v2: test {metric}")
        assert {"bloodmnist", "breastmnist", "pathmnist", "retinamnist"} <= set(rows[0])
        assert "breast_ultrasound" not in rows[0]
        r18 = _row(rows, "resnet18_28")
        assert r18["bloodmnist"] == r18["pathmnist"] == "not yet run"
        assert r18["breastmnist"].endswith("(n=3)")
        r50 = _row(rows, "resnet50_28")
        assert all(r50[d] == "not yet run" for d in ("bloodmnist", "breastmnist", "pathmnist", "retinamnist"))


def test_real_smoke_suite_has_only_its_planned_columns(tmp_path, monkeypatch):
    recs = [make_record(suite="smoke", dataset=d, size=size, seed=0)
            for d, size in (("breastmnist", 28), ("retinamnist", 28), ("breast_ultrasound", 64))]
    md = _real_suite_board(tmp_path, monkeypatch, "smoke", recs)
    rows = _md_table(md, "Suite smoke: test ACC")
    assert [c for c in rows[0] if "mnist" in c or "ultrasound" in c] == ["breast_ultrasound", "breastmnist",
                                                                          "retinamnist"]
    large = _row(rows, "resnet18_28", size=64)
    assert large["breastmnist"] == large["retinamnist"] == "—"
    assert _row(rows, "resnet18_28", size=28)["breast_ultrasound"] == "—"
    assert _row(rows, "vit_tiny", size=64)["breast_ultrasound"] == "not yet run"
    assert "Expected seeds per group: 1 (0), the seeds listed in smoke.yaml." in md


def test_missing_runs_dir_is_user_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        leaderboard.write_leaderboard(tmp_path / "nope", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no run records"):
        leaderboard.write_leaderboard(tmp_path / "empty", tmp_path / "out")


def test_no_heavy_imports():
    code = ("import sys, benchmark, benchmark.suites, benchmark.records, benchmark.report, benchmark.report.figures; "
            "benchmark.records_frame(benchmark.load_records('results')); "
            "bad = [m for m in sys.modules if m == 'torch' or m.startswith(('torch.', 'transformers', "
            "'benchmark.data', 'benchmark.models', 'benchmark.train'))]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])


@pytest.mark.parametrize("model", ["resnet18_28", "resnet18_28_ref"])  # the latter `published_as: resnet18_28`
def test_measured_vs_published_gap_in_seed_stds(tmp_path, monkeypatch, model):
    recs = make_grid(suite="medmnist-v2", models=("resnet18_28", "resnet18_28_ref"), missing=(), failed=())
    published = load_published()
    v2 = parse_protocol(published.loc[published["model"] == "resnet18_28", "protocol"].iloc[0])
    for rec in recs:
        rec["protocol"] = v2  # the published recipe, as stored by a record of that suite
    md = _real_suite_board(tmp_path, monkeypatch, "medmnist-v2", recs)
    rows = _md_table(md, "Suite medmnist-v2: measured vs published")
    for metric, label in (("acc", "ACC"), ("auc", "AUC")):
        values = np.array(_values(recs, "breastmnist", model, metric))
        reference = published[(published.model == "resnet18_28") & (published.dataset == "breastmnist")
                              & (published.metric == metric) & (published["size"] == 28)]["value"].item()
        [row] = [r for r in rows if (r["Model"], r["Dataset"], r["Metric"]) == (model, "breastmnist", label)]
        gap = values.mean() - reference
        assert row["Published"] == f"{reference:.3f}"
        assert row["Measured (mean ± std)"] == f"{values.mean():.3f} ± {values.std(ddof=1):.3f}"
        assert row["Seeds"] == "3/3"
        assert row["Δ"] == f"{gap:+.3f}"
        assert row["Δ / seed std"] == f"{gap / values.std(ddof=1):.1f}"
        assert row["Protocol (measured vs published)"] == "same"
        [blood] = [r for r in rows if (r["Model"], r["Dataset"], r["Metric"]) == (model, "bloodmnist", label)]
        assert blood["Measured (mean ± std)"] == "not yet run"
    assert not [r for r in rows if r["Model"] == "resnet18_224"]  # neither planned nor measured


def test_same_seed_with_another_config_is_never_counted_twice(tmp_path, caplog):
    trial = make_record(seed=0, created_at="2026-11-20T00:00:00+00:00")
    trial["config_hash"], trial["run_id"] = "trial" * 8, "breastmnist-28-resnet18_28-s0-trial"
    final = make_record(seed=0, created_at="2026-11-22T00:00:00+00:00")
    write_records([trial, final], tmp_path)
    recs = load_records(tmp_path)
    assert f"{final['run_id']} replaces breastmnist-28-resnet18_28-s0-trial" in caplog.text
    assert [r["run_id"] for r in recs] == [final["run_id"]]


def test_committed_leaderboard_is_what_the_committed_records_give():
    """Every number, mark, interval and note of the committed leaderboard.md, .csv and .tex."""
    project = Path(__file__).resolve().parents[1]
    records = load_records(committed_files("results/runs/*/*.json"))
    md, csv_text, tex = leaderboard.build_leaderboard(records, suites_dir=project / "suites")
    assert md == (project / "results" / "leaderboard.md").read_text(encoding="utf-8")
    assert csv_text == (project / "results" / "leaderboard.csv").read_text(encoding="utf-8")
    assert tex == (project / "results" / "leaderboard.tex").read_text(encoding="utf-8")
