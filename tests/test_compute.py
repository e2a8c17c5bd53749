"""The record's compute block (`benchmark.compute`): parameters, FLOPs per image against counts by hand, images,
device-seconds; and the FLOP counter leaves the model and the RNG as they were."""

from __future__ import annotations

import json
import resource
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from torch import nn

from benchmark import cli
from benchmark.compute import count_flops
from benchmark.config import load_suite
from benchmark.data import load_dataset
from benchmark.models import build_model
from benchmark.records import load_records
from benchmark.report.figures import write_figures
from benchmark.report.figures.efficiency import efficiency_points, pareto_front
from benchmark.report.site import write_site

CPU = torch.device("cpu")


def test_flops_of_a_two_layer_mlp_match_the_count_by_hand():
    d, h, k = 3 * 4 * 4, 10, 3
    model = nn.Sequential(nn.Flatten(), nn.Linear(d, h), nn.ReLU(), nn.Linear(h, k))
    forward = 2 * d * h + 2 * h * k
    # backward: both weight gradients (2dh + 2hk) and the hidden activations' gradient (2hk); not the pixels'
    assert count_flops(model, 4, 3, CPU, None, train=False) == forward
    assert count_flops(model, 4, 3, CPU, None, train=True) == forward + 2 * d * h + 2 * h * k + 2 * h * k


def test_counting_leaves_no_trace():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Dropout(0.5), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    count_flops(model, 8, 3, CPU, None, train=True)
    assert not model.training and all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # BatchNorm statistics too
    assert torch.equal(rng, torch.get_rng_state())  # dropout drew from a forked RNG


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    """A ViT fine-tune (2 epochs) and a kNN run on 32 images per split, through the CLI."""
    root = tmp_path_factory.mktemp("compute")
    suite = {"name": "compute", "data_root": "bundled", "seeds": [0], "datasets": ["breastmnist"],
             "recipes": {"short": {"lr": 1.0e-3, "epochs": 2, "batch_size": 8, "augment": "none"}},
             "models": [{"name": "vit_tiny", "recipe": "short"},
                        {"name": "vit_tiny", "recipe": "short", "scheme": {"name": "knn", "k": 3}}]}
    (root / "compute.yaml").write_text(yaml.safe_dump(suite))
    ballast = np.ones(2**30, dtype=np.uint8)  # this process peaks 1 GiB higher before the runs than in them
    del ballast
    records = {"peak_before_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    assert cli.main(["run", "--suite", str(root / "compute.yaml"), "--limit", "32", "--output", str(root / "results"),
                     "--quiet"]) == 0
    records |= {json.loads(p.read_text())["scheme"]: json.loads(p.read_text())
                for p in (root / "results" / "runs" / "compute").glob("*.json")}
    return root, records


def test_each_run_records_its_own_peak_memory(tiny_runs):
    """Not the process's peak before the run (it carried over from earlier runs of the grid), and for kNN its
    embedding pass counts (it measured nothing of it)."""
    _, records = tiny_runs
    for scheme in ("from_scratch", "knn"):
        compute = records[scheme]["compute"]
        assert compute["peak_memory_mb"] > 0, scheme
        assert compute["peak_memory_kind"] in ("cuda_max_allocated", "process_run_peak_rss")
        if compute["peak_memory_kind"] == "process_run_peak_rss":
            assert compute["peak_memory_mb"] < records["peak_before_mb"] - 512, scheme


def test_a_finetune_record_holds_its_compute(tiny_runs):
    root, records = tiny_runs
    record = records["from_scratch"]
    compute = record["compute"]
    spec = load_suite(str(root / "compute.yaml"), limit=32).runs[0]
    data = load_dataset(spec.dataset, size=spec.size, data_root=spec.data_root, limit=32)
    built = build_model(spec.model, data.class_names, 1)
    assert compute["n_params"] == sum(p.numel() for p in built.module.parameters()) == record["model"]["n_params"]
    assert compute["trainable_params"] == compute["n_params"]
    flops = compute["flops_per_image"]
    assert flops["inference"] == count_flops(built.module, 32, 3, CPU, None, train=False) > 0
    assert flops["train"] == count_flops(built.module, 32, 3, CPU, None, train=True) > 2 * flops["inference"]
    assert compute["train_images"] == 2 * 32  # two epochs of 32 images (batches of 8: none dropped)
    assert compute["train_flops"] == flops["train"] * 64
    assert compute["devices"] == 1 and compute["device_seconds"] == record["timing"]["train_seconds"] > 0
    assert compute["train_images_per_second"] == pytest.approx(64 / record["timing"]["train_seconds"])
    assert compute["peak_memory_mb"] == record["timing"]["peak_memory_mb"] > 0
    assert compute["device"] == record["environment"]["device"] and compute["device_name"]


def test_a_knn_record_counts_inference_only(tiny_runs):
    _, records = tiny_runs
    compute = records["knn"]["compute"]
    assert compute["flops_per_image"]["train"] is None and compute["train_flops"] is None
    assert compute["flops_per_image"]["inference"] > 0


# --- the compute table and the accuracy-vs-compute figure --------------------------------------------------------

def results_with_an_old_record(tiny_runs, tmp_path) -> tuple[Path, dict]:
    """The tiny runs plus a copy of the fine-tune record as seed 1 without a compute block (an older record)."""
    root, records = tiny_runs
    folder = tmp_path / "results" / "runs" / "compute"
    shutil.copytree(root / "results" / "runs" / "compute", folder)
    old = {k: v for k, v in records["from_scratch"].items() if k != "compute"}
    old.update(seed=1, run_id=old["run_id"].replace("-s0-", "-s1-"), config_hash="0" * 8)
    (folder / f"{old['run_id']}.json").write_text(json.dumps(old))
    return tmp_path / "results", records


def test_the_leaderboard_gains_a_compute_table_from_the_blocks_only(tiny_runs, tmp_path):
    results, records = results_with_an_old_record(tiny_runs, tmp_path)
    assert cli.main(["leaderboard", "--runs", str(results), "--output", str(tmp_path), "--suite", "compute"]) == 0
    md = (tmp_path / "leaderboard.md").read_text()
    section = md.split("### Compute\n")[1].split("## How to read")[0]
    rows = {r[3]: r for r in ([c.strip() for c in line.strip("|").split("|")] for line in section.splitlines()
                              if line.startswith("| breastmnist"))}
    compute = records["from_scratch"]["compute"]
    fine = rows["from_scratch"]
    assert fine[4] == f"{compute['n_params'] / 1e6:.2f}" and fine[6] == f"{compute['flops_per_image']['train'] / 1e9:.3f}"
    assert fine[8] == f"{compute['device_seconds']:.1f}" and fine[11] == "1"  # the old record is in no mean
    assert fine[7] == f"{compute['train_flops']:.3g}"
    assert rows["knn"][6] == rows["knn"][7] == "—"  # no training FLOPs: left empty
    csv = pd.read_csv(tmp_path / "leaderboard.csv")
    cost = csv[(csv["table"] == "compute") & (csv["scheme"] == "from_scratch")].set_index("metric")
    assert cost.loc["train_flops", "mean"] == pytest.approx(compute["train_flops"], rel=1e-6)
    assert cost.loc["n_params", "n_seeds"] == 1 and cost.loc["n_params", "source"] == compute["device_name"]


def test_the_pareto_front_keeps_the_points_nothing_beats():
    points = pd.DataFrame({"x": [1.0, 2.0, 3.0, 4.0, 2.5], "acc": [0.5, 0.7, 0.6, 0.8, 0.7]})
    front = pareto_front(points, "x", "acc")
    assert front["x"].tolist() == [1.0, 2.0, 4.0]  # 3.0 is beaten by 2.0; 2.5 ties 2.0 on ACC with more compute


def test_the_accuracy_vs_compute_figure_and_the_site_table(tiny_runs, tmp_path):
    results, records = results_with_an_old_record(tiny_runs, tmp_path)
    points, x = efficiency_points(load_records(results), "breastmnist")
    assert x == "device_seconds"  # the kNN run has no training FLOPs
    fine = points[points["scheme"] == "from_scratch"].iloc[0]
    assert fine["n"] == 1 and fine["x"] == records["from_scratch"]["compute"]["device_seconds"]
    assert fine["acc"] == records["from_scratch"]["test"]["acc"]
    paths = write_figures(results, tmp_path / "figures", suite="compute", formats=("png",), dpi=40)
    assert tmp_path / "figures" / "compute" / "efficiency_breastmnist.png" in paths
    write_site(results, tmp_path / "site", suite="compute", figures=tmp_path / "figures", dpi=40)
    index = (tmp_path / "site" / "index.html").read_text()
    assert "Compute — compute" in index and "GFLOP/img train" in index and "efficiency_breastmnist.png" in index
