"""Suite YAML → run specs: expansion, filters, overrides, hashing and validation messages."""

import json
import shutil
from dataclasses import replace

import pytest
from committed import committed_files

from benchmark.config import Recipe, load_suite
from benchmark.data.registry import BUNDLED_DIR
from benchmark.errors import UserError

SUITE = """
name: demo
data_root: bundled
seeds: [0, 1]
recipes:
  fast: {optimizer: adam, lr: 1e-3, epochs: 2, batch_size: 16, augment: none}
datasets:
  - breastmnist
  - {name: breast_ultrasound, size: 64}
models:
  - {name: resnet18_28, recipe: fast}
  - {name: vit_tiny, recipe: {lr: 5.0e-4, epochs: 1, batch_size: 8}}
"""


def write(tmp_path, text=SUITE, name="demo.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_grid_is_datasets_by_models_by_seeds(tmp_path):
    suite = load_suite(write(tmp_path))
    assert suite.name == "demo"
    assert len(suite.runs) == 2 * 2 * 2
    first = suite.runs[0]
    assert (first.dataset, first.size, first.model.name, first.seed) == ("breastmnist", 28, "resnet18_28", 0)
    assert first.recipe.lr == 1e-3 and first.recipe.optimizer == "adam"  # `1e-3` read as a float
    vit = next(r for r in suite.runs if r.model.name == "vit_tiny")
    assert vit.recipe == replace(Recipe(), lr=5e-4, epochs=1, batch_size=8)
    assert {r.size for r in suite.runs if r.dataset == "breast_ultrasound"} == {64}
    assert len({r.config_hash for r in suite.runs}) == len(suite.runs)


def test_filters_and_overrides(tmp_path):
    suite = load_suite(write(tmp_path), datasets=["breastmnist"], models=["vit_tiny"], seeds=[5], epochs=3, limit=10)
    assert [(r.dataset, r.model.name, r.seed, r.recipe.epochs, r.limit) for r in suite.runs] == [
        ("breastmnist", "vit_tiny", 5, 3, 10)
    ]


def test_overrides_reach_a_model_without_a_recipe(tmp_path):
    """`recipe:` is optional; --epochs and --batch-size apply to the default recipe as to a named one (they were
    dropped: the run kept 10 epochs at batch 32 under the same run id)."""
    suite = tmp_path / "plain.yaml"
    suite.write_text("datasets: [breastmnist]\nmodels: [resnet18_28]\n")
    (default,) = load_suite(str(suite)).runs
    (changed,) = load_suite(str(suite), epochs=1, batch_size=4).runs
    assert default.recipe == Recipe() and changed.recipe == replace(Recipe(), epochs=1, batch_size=4)
    assert changed.run_id != default.run_id


def test_hash_ignores_where_data_lives_but_not_what_is_trained(tmp_path):
    a = load_suite(write(tmp_path), data_root="/data/one").runs[0]
    b = load_suite(write(tmp_path), data_root="/data/two").runs[0]
    c = load_suite(write(tmp_path), data_root="/data/one", epochs=7).runs[0]
    subset = load_suite(write(tmp_path)).runs[0]  # data_root: bundled, the shipped subsets
    hub = load_suite(write(tmp_path), data_root="hub:emre570/breastcancer-ultrasound-images").runs[0]
    assert a.config_hash == b.config_hash  # canonical files, MD5-checked wherever they are
    assert len({a.config_hash, c.config_hash, subset.config_hash, hub.config_hash}) == 4
    assert a.run_id == f"breastmnist-28-resnet18_28-s0-{a.config_hash[:8]}"
    variants = [replace(a, model=replace(a.model, **change))
                for change in ({"upsample": "nearest"}, {"in_channels": 3}, {"init": "pytorch_default"})]
    assert len({a.config_hash, *(v.config_hash for v in variants)}) == 4  # spec fields left out only at defaults


def test_shipped_suites_expand(tmp_path):
    assert len(load_suite("medmnist").runs) == 5 * 4 * 3
    assert len(load_suite("medmnist-v2").runs) == 4 * 3 * 3
    assert len(load_suite("medmnist-v2-ablation").runs) == 1 * 2 * 3
    smoke = load_suite("smoke")
    assert {r.data_root for r in smoke.runs} == {"bundled"}


@pytest.mark.parametrize(
    "change, message",
    [
        (("lr: 1e-3", "lr: -1"), "lr must be > 0"),
        (("epochs: 2", "epochs: 0"), "epochs must be > 0"),
        (("optimizer: adam", "optimiser: adam"), "unknown key 'optimiser'; did you mean 'optimizer'?"),
        (("size: 64", "size: 100"), "'100' is not one of 28, 64, 128, 224"),
        (("- breastmnist", "- breastmnst"), "did you mean 'breastmnist'"),
        (("name: resnet18_28", "name: resnet19_28"), "unknown model 'resnet19_28'; did you mean 'resnet18_28'?"),
        (("recipe: fast", "recipe: slow"), "recipe 'slow' is not defined"),
        (("seeds: [0, 1]", "seeds: zero"), "seeds must be a list of integers"),
        (("seeds: [0, 1]", "seeds: [true]"), "seeds must be a list of integers"),
        (("seeds: [0, 1]", "seeds: [0, 1, 0]"), "seeds lists [0] more than once; list each seed once"),
        (("seeds: [0, 1]", "seeds: [0, 1]\ndownload: 'false'"), "download must be true or false (got 'false')"),
        (("epochs: 2,", "epochs: 2, milestones: [0.75, 0.5],"), "milestones must be increasing fractions"),
        (("epochs: 2,", "epochs: 2, gamma: 0,"), "gamma must be in (0, 1]"),
        (("name: resnet18_28, recipe: fast", "name: r34, family: resnet, source: resnet34, recipe: fast"),
         "a resnet entry needs `input_size:`"),
        (("batch_size: 16", "batch_size: sixteen"), "'sixteen' is not a valid int"),
        (("recipe: fast}", "recipe: fast, init: xavier}"), "init: 'xavier' is not one of torchvision, pytorch_default"),
        (("recipe: fast}", "recipe: fast, in_channels: 2}"), "in_channels: 2 is not 1 or 3"),
        (("recipe: fast}", "recipe: fast, upsample: cubic}"), "upsample: 'cubic' is not one of bilinear, nearest"),
        (("epochs: 1,", "epochs: 1, init: pytorch_default,"), "unknown key 'init'"),
        (("name: vit_tiny,", "name: vit_tiny, in_channels: 3,"), "apply to resnet models only"),
        (("datasets:", "datasets: ["), "malformed YAML at line"),
    ],
)
def test_invalid_suites_name_the_problem(tmp_path, change, message):
    with pytest.raises(UserError, match=None) as info:
        load_suite(write(tmp_path, SUITE.replace(*change)))
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_an_ultrasound_folder_other_than_busi_gets_its_own_run_id(tmp_path, monkeypatch):
    """The ultrasound images are checked against no checksum, so the run hash names any folder that is not the
    canonical BUSI (by its images' names and sizes) and the hub copy a missing folder falls back to: before, a
    folder of 120 images, the hub copy (its own 624/156 split) and the 780 BUSI images shared one run id, and a
    finished run on one was skipped as done on the others."""
    from conftest import SHARED_DATA

    def run_id(**data) -> str:
        return load_suite("busi-leakage", seeds=[0], **data).runs[0].run_id

    canonical, bundled = run_id(data_root="anywhere"), run_id(data_root="bundled")
    copy = tmp_path / "copy"
    shutil.copytree(BUNDLED_DIR / "busi", copy / "busi")
    other = run_id(data_root=str(copy))
    (copy / "busi" / "normal" / sorted(p.name for p in (copy / "busi" / "normal").iterdir())[0]).unlink()
    fewer = run_id(data_root=str(copy))
    monkeypatch.setenv("MEDMNIST_BENCH_DATA", str(tmp_path / "empty"))
    (tmp_path / "empty").mkdir()
    assert run_id(download=True) == run_id(data_root="hub:emre570/breastcancer-ultrasound-images")
    assert len({canonical, bundled, other, fewer, run_id(download=True)}) == 5
    if (SHARED_DATA / "busi").is_dir():  # the canonical images keep the committed records' ids
        assert run_id(data_root=str(SHARED_DATA)) == canonical


def test_committed_records_keep_their_run_ids():
    """Every committed record's run is still planned under the same id: a change to what enters the hash
    (e.g. a new ModelSpec field) must not silently orphan finished results or make them run again."""
    records = committed_files("results/runs/*/*.json")
    assert records
    planned = {name: {run.run_id for run in load_suite(name, data_root="anywhere").runs}
               for name in {p.parent.name for p in records}}
    for path in records:
        record = json.loads(path.read_text())
        assert record["run_id"] in planned[record["suite"]], path.name


def test_unknown_suite_suggests(tmp_path):
    with pytest.raises(UserError, match="did you mean 'smoke'"):
        load_suite("smok")


def test_the_torch_free_suite_parser_knows_every_registered_default_size():
    from benchmark.data import dataset_sizes, list_datasets
    from benchmark.suites import default_size

    assert {name: default_size(name) for name in list_datasets()} == {
        name: dataset_sizes(name)[0] for name in list_datasets()}
    assert default_size("breast_ultrasound") == 224 and default_size("bloodmnist") == 28


@pytest.mark.parametrize("epochs, expected", [
    (1, [1e-3]),  # both milestones inside epoch 1: no decay (it used to train at lr * 0.01 from step 0)
    (4, [1e-3, 1e-3, 1e-4, 1e-5]),
    (10, [1e-3] * 5 + [1e-4] * 2 + [1e-5] * 3),  # the label-efficiency recipe: epochs 5 and 7
])
def test_multistep_decays_at_its_milestone_epochs_and_never_before_the_first_step(epochs, expected):
    import torch

    from benchmark.train import make_scheduler

    recipe = replace(Recipe(), optimizer="adam", lr=1e-3, schedule="multistep", epochs=epochs)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=recipe.lr)
    scheduler, steps_per_epoch, lrs = make_scheduler(recipe, optimizer, 3), 3, []
    for step in range(epochs * steps_per_epoch):
        if step % steps_per_epoch == 0:
            lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs == pytest.approx(expected)
