"""MedMNIST-C corruption robustness (`benchmark robustness`) on the shipped subsets: the corruptions themselves,
the cache, the numbers of the robustness block and the record rewrite around them, on one real tiny run."""

import importlib.util
import json
import shutil

import numpy as np
import pytest

from benchmark import records
from benchmark.cli import main
from benchmark.data import load_dataset
from benchmark.metrics import classification_metrics
from benchmark.use import robustness as rb

pytest.importorskip("medmnistc", reason="the robustness extra (medmnistc) is not installed")

SUITE = """
name: robust-tiny
data_root: bundled
seeds: [0]
recipes:
  v2: {optimizer: adam, lr: 1.0e-3, schedule: multistep, epochs: 1, batch_size: 16, augment: none}
datasets: [breastmnist]
models:
  - {name: resnet18_28, recipe: v2}
"""
# At 28 px, two corruptions whose parameters MedMNIST-C set for 224 px do not change pixels more at every step:
# BreastMNIST's motion blur from severity 4 to 5 (the blur already spans the image; the angle is random) and
# RetinaMNIST's pixelate from 2 to 3 (0.6 and 0.5 of 28 px: 16 and 14 px blocks fall on the grid differently).
NOT_MONOTONE_AT_28 = {("breastmnist", "motion_blur"), ("retinamnist", "pixelate")}


def _imagemagick() -> bool:
    try:
        return importlib.util.find_spec("wand") is not None and bool(__import__("wand.image"))
    except ImportError:
        return False


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One finished tiny run (BreastMNIST subset, 32 images per split, one epoch) with its best.pt."""
    root = tmp_path_factory.mktemp("robust")
    (root / "robust-tiny.yaml").write_text(SUITE)
    assert main(["run", "--suite", str(root / "robust-tiny.yaml"), "--limit", "32", "--output",
                 str(root / "results"), "--quiet"]) == 0
    (path,) = (root / "results" / "runs" / "robust-tiny").glob("*.json")
    return root / "results", path


@pytest.mark.parametrize("dataset", ["breastmnist", "retinamnist"])
def test_severities_are_monotone_in_pixel_change_and_zero_is_identity(dataset):
    images = load_dataset(dataset, data_root="bundled").test.images[:16]
    for name, corruptor in rb.corruptions(dataset).items():
        if isinstance(corruptor, rb.NeedsImageMagick):  # the blurs, without ImageMagick (CI installs it)
            continue
        assert np.array_equal(rb.corrupt(images, dataset, name, 0), images)
        change = [np.abs(rb.corrupt(images, dataset, name, s).astype(int) - images).mean() for s in rb.SEVERITIES]
        assert change[0] > 0, name
        if (dataset, name) in NOT_MONOTONE_AT_28:
            assert change[-1] > change[0], name
        else:
            assert np.all(np.diff(change) >= 0), (name, change)
        assert rb.corrupt(images, dataset, name, 3).shape == images.shape


def test_corruption_is_seeded_and_leaves_the_callers_random_state():
    images = load_dataset("breastmnist", data_root="bundled").test.images[:8]
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    first = rb.corrupt(images, "breastmnist", "speckle_noise", 2, seed=0)
    assert np.array_equal(np.random.get_state()[1], before)
    assert np.array_equal(first, rb.corrupt(images, "breastmnist", "speckle_noise", 2, seed=0))
    assert not np.array_equal(first, rb.corrupt(images, "breastmnist", "speckle_noise", 2, seed=1))


def test_busi_takes_breastmnist_corruptions_and_unknown_datasets_are_refused():
    assert rb.corruption_set("breast_ultrasound") == "breastmnist"
    with pytest.raises(rb.UserError, match="no corruptions for mnist_digits"):
        rb.corruption_set("mnist_digits")


def test_cache_is_reused_and_keyed_by_content(tmp_path, monkeypatch):
    test_images = load_dataset("breastmnist", data_root="bundled").test.images
    images = test_images[:8]
    made = rb.corrupted_images(images, "breastmnist", "pixelate", 4, 0, tmp_path)
    assert len(list(tmp_path.rglob("*.npy"))) == 1

    def fail(*args, **kwargs):
        raise AssertionError("made again instead of read from the cache")

    monkeypatch.setattr(rb, "corrupt", fail)
    assert np.array_equal(rb.corrupted_images(images, "breastmnist", "pixelate", 4, 0, tmp_path), made)
    monkeypatch.undo()
    other = rb.corrupted_images(test_images[8:16], "breastmnist", "pixelate", 4, 0, tmp_path)  # same shape
    assert len(list(tmp_path.rglob("*.npy"))) == 2 and not np.array_equal(other, made)
    rb.corrupted_images(images, "breastmnist", "pixelate", 4, 1, tmp_path)  # another seed: another file
    assert len(list(tmp_path.rglob("*.npy"))) == 3


def test_summary_follows_medmnist_c_definition():
    cells = {"pixelate": [{"balanced_error": e} for e in (0.2, 0.3, 0.4, 0.5, 0.6)],
             "contrast_down": [{"balanced_error": 0.25}] * 5}
    out = rb.summarise(cells, 0.2, "breastmnist")
    alexnet = rb.baselines("breastmnist")
    be = [0.4 / alexnet["raw_scores"]["pixelate"], 0.25 / alexnet["raw_scores"]["contrast_down"]]
    rbe = [(0.4 - 0.2) / (alexnet["raw_scores"]["pixelate"] - alexnet["clean_score"]),
           (0.25 - 0.2) / (alexnet["raw_scores"]["contrast_down"] - alexnet["clean_score"])]
    assert out["corruptions"]["pixelate"]["balanced_error"] == pytest.approx(0.4)
    assert out["mce"] == pytest.approx(np.mean(be))
    assert out["relative_mce"] == pytest.approx(np.mean(rbe))
    assert out["mean_balanced_error"] == pytest.approx(0.325)


def test_robustness_block_in_the_record_and_nothing_else_changes(tiny_run, capsys):
    results, path = tiny_run
    before = json.loads(path.read_text())
    assert main(["robustness", str(path), "--results", str(results), "--corruptions",
                 "pixelate,brightness_down,motion_blur", "--quiet"]) == 0
    assert before["run_id"] in capsys.readouterr().out
    after = json.loads(path.read_text())
    block = after.pop("robustness")
    assert after == before  # the run id, hash, test block and every other key as they were
    # severity 0 (the clean test split) scores exactly what the record holds: same weights, same transform
    assert block["clean"]["acc"] == before["test"]["acc"] and block["clean"]["auc"] == before["test"]["auc"]
    assert block["clean"]["balanced_error"] == pytest.approx(1 - before["test"]["balanced_acc"], abs=1e-12)
    assert block["clean_matches_record"] is True
    ran = set(block["corruptions"])
    assert ran | set(block["skipped"]) == {"pixelate", "brightness_down", "motion_blur"}
    assert {"pixelate", "brightness_down"} <= ran
    if not _imagemagick():
        assert "ImageMagick" in block["skipped"]["motion_blur"] or "wand" in block["skipped"]["motion_blur"]
    # one cell recomputed by hand: the corrupted test images through the run's model
    loaded = rb.load_run(path, results)
    test = loaded.dataset_split("test")
    images = rb.corrupt(test.images, "breastmnist", "pixelate", 5, seed=0)
    expected = classification_metrics(test.labels, loaded.probabilities(images), "binary-class")
    cell = block["corruptions"]["pixelate"]["severities"][4]
    assert cell["severity"] == 5 and cell["acc"] == expected["acc"]
    assert cell["balanced_error"] == pytest.approx(1 - expected["balanced_acc"], abs=1e-12)
    assert list((results / "cache" / "corruptions" / "breastmnist").glob("pixelate-s5-*.npy"))
    assert block["n_test"] == 32 and block["corruption_set"] == "breastmnist"


def test_a_corruption_that_cannot_run_is_named_with_its_reason(tiny_run, monkeypatch):
    results, path = tiny_run
    real = rb._apply

    def broken(corruptor, image, severity):
        if type(corruptor).__name__ == "Contrast":
            raise RuntimeError("library missing")
        return real(corruptor, image, severity)

    monkeypatch.setattr(rb, "_apply", broken)
    block = rb.evaluate(rb.load_run(path, results), corruption_names=["contrast_down", "pixelate"], progress=False)
    assert block["skipped"] == {"contrast_down": "RuntimeError: library missing"}
    assert list(block["corruptions"]) == ["pixelate"]
    assert block["mce"] == pytest.approx(block["corruptions"]["pixelate"]["be"])


def test_a_finished_block_gains_corruptions_and_is_never_replaced_without_force(tiny_run, tmp_path, caplog):
    results = tmp_path / "results"
    shutil.copytree(tiny_run[0], results)  # its own record (the cache of corrupted images comes along)
    path = results / tiny_run[1].relative_to(tiny_run[0])
    record = records.read_record(path)
    record.pop("robustness", None)  # another test's block
    records.write_record(path, record)
    ((_, first),) = rb.robustness([path], results=results, corruption_names=["contrast_down"], progress=False)
    ((_, block),) = rb.robustness([path], results=results, corruption_names=["pixelate"], progress=False)
    assert records.read_record(path)["robustness"] == block
    assert list(block["corruptions"]) == ["pixelate", "contrast_down"]  # the set's order
    assert block["corruptions"]["contrast_down"] == first["corruptions"]["contrast_down"]
    assert block["mce"] == pytest.approx(np.mean([entry["be"] for entry in block["corruptions"].values()]))
    written = path.read_bytes()
    rb.robustness([path], results=results, corruption_names=["pixelate"], progress=False)  # has it: kept
    rb.robustness([path], results=results, seed=1, corruption_names=["pixelate"], progress=False)
    assert path.read_bytes() == written
    assert "this evaluation differs in seed; --force replaces it" in caplog.text


def test_add_block_refuses_identity_keys_and_keeps_the_file_whole(tiny_run):
    _, path = tiny_run
    record = records.read_record(path)
    with pytest.raises(ValueError):
        records.add_block(path, "run_id", "other", based_on=record)
    with pytest.raises(ValueError):
        records.add_block(path, "not_a_key", {}, based_on=record)
    assert records.read_record(path) is not None


def test_a_record_rewritten_while_its_block_was_computed_is_left_as_it_is(tiny_run, tmp_path, monkeypatch, capsys):
    """A --force rerun (or a second evaluation) that rewrites the record meanwhile is not overwritten by a block of
    the old weights merged into the old record: the verb stops with one line and the new record stays."""
    results = tmp_path / "results"
    shutil.copytree(tiny_run[0], results)
    path = results / tiny_run[1].relative_to(tiny_run[0])
    real = rb.evaluate

    def rerun_meanwhile(*args, **kwargs):
        block = real(*args, **kwargs)
        rewritten = records.read_record(path)
        rewritten["test"] = {**rewritten["test"], "acc": 0.125}
        records.write_record(path, rewritten)
        return block

    monkeypatch.setattr(rb, "evaluate", rerun_meanwhile)
    assert main(["robustness", str(path), "--results", str(results), "--corruptions", "pixelate", "--force",
                 "--quiet"]) == 2
    rewritten_bytes = path.read_bytes()
    assert json.loads(rewritten_bytes)["test"]["acc"] == 0.125
    assert "was rewritten while its robustness was computed" in capsys.readouterr().err


@pytest.mark.slow
def test_suite_option_evaluates_each_finished_run(tmp_path):
    suite = SUITE.replace("name: robust-tiny", "name: robust-hook") + "robustness: true\n"
    (tmp_path / "robust-hook.yaml").write_text(suite)
    # with --keep-checkpoints none too: the run is evaluated before its weights are pruned
    assert main(["run", "--suite", str(tmp_path / "robust-hook.yaml"), "--limit", "16", "--output",
                 str(tmp_path / "results"), "--keep-checkpoints", "none", "--quiet"]) == 0
    assert not (tmp_path / "results" / "checkpoints" / "robust-hook").exists() or not any(
        (tmp_path / "results" / "checkpoints" / "robust-hook").iterdir())
    (path,) = (tmp_path / "results" / "runs" / "robust-hook").glob("*.json")
    block = json.loads(path.read_text())["robustness"]
    assert set(block["corruptions"]) | set(block["skipped"]) == set(rb.corruptions("breastmnist"))
    assert block["n_test"] == 16 and block["clean_matches_record"] is True
