"""Near-duplicate finder and the leakage-free (grouped) split, on the shipped real ultrasound images."""

from __future__ import annotations

import io
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmark.cli import main
from benchmark.config import load_suite
from benchmark.data import load_dataset, registry
from benchmark.data.duplicates import check_dataset, find_near_duplicates
from benchmark.errors import UserError

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_shared_data = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="real data in ../shared/data is absent")
BUNDLED_BUSI = registry.BUNDLED_DIR / "busi"
SPLITS = ("train", "val", "test")


def originals() -> list[np.ndarray]:
    """The shipped BUSI images at their own size, grayscale, sorted by path."""
    return [np.asarray(Image.open(path).convert("L")) for path in sorted(BUNDLED_BUSI.glob("*/*.png"))]


def pairs_of(found) -> set[tuple[int, int]]:
    return {(int(i), int(j)) for i, j in zip(found.rows, found.cols)}


def jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    return np.asarray(Image.open(buffer).convert("L"))


def test_finds_exact_resized_reencoded_and_shifted_copies_and_nothing_else() -> None:
    images = originals()
    known = find_near_duplicates(images)  # the shipped subset has a few genuine near-duplicate pairs
    distinct = [image for index, image in enumerate(images) if index not in set(known.cols.tolist())]
    assert len(images) == 120 and len(distinct) == 120 - len(known.rows) and len(known.rows) == 5
    assert len(find_near_duplicates(distinct).rows) == 0  # distinct real images are never paired

    base = len(distinct)
    height, width = distinct[3].shape
    copies = {
        0: distinct[0].copy(),  # exact
        10: np.asarray(Image.fromarray(distinct[10]).resize((width // 2, height // 2), Image.Resampling.LANCZOS)),
        20: jpeg(distinct[20], quality=60),  # re-encoded
        30: np.roll(distinct[30], shift=(height // 100, width // 100), axis=(0, 1)),  # shifted by 1 %
        40: jpeg(np.asarray(Image.fromarray(distinct[40]).resize((width * 3 // 4, height * 3 // 4))), quality=80),
    }
    found = find_near_duplicates(distinct + list(copies.values()))
    assert pairs_of(found) == {(original, base + k) for k, original in enumerate(copies)}
    assert found.correlation[found.rows == 0][0] == 1.0
    groups = found.groups()
    assert len(set(groups)) == base  # each copy joins its original's group


def test_near_duplicate_threshold_is_a_correlation() -> None:
    image = originals()[5].astype(np.float64)
    rng = np.random.default_rng(0)
    noisy = np.clip(image + rng.normal(0, 25, image.shape), 0, 255).astype(np.uint8)
    found = find_near_duplicates([image.astype(np.uint8), noisy], threshold=0.5)
    corr = float(found.correlation[0])
    assert 0.5 < corr < 1.0
    assert len(find_near_duplicates([image.astype(np.uint8), noisy], threshold=min(1.0, corr + 1e-3)).rows) == 0
    with pytest.raises(UserError, match="threshold must be in"):
        find_near_duplicates([noisy], threshold=1.5)


def assert_no_group_straddles(data) -> int:
    images = [image for name in SPLITS for image in getattr(data, name).images]
    where = [name for name in SPLITS for _ in range(len(getattr(data, name)))]
    found = find_near_duplicates(images)
    return sum(where[i] != where[j] for i, j in zip(found.rows, found.cols))


def test_grouped_split_keeps_near_duplicates_together_and_stratifies() -> None:
    grouped = load_dataset("breast_ultrasound", size=64, data_root="bundled")
    random = load_dataset("breast_ultrasound", size=64, data_root="bundled", split="random")
    assert random.split["kind"] == "random" and assert_no_group_straddles(random) == 4  # the leak it prevents
    assert grouped.split["kind"] == "grouped" and assert_no_group_straddles(grouped) == 0
    assert grouped.split["n_groups"] == 115  # 120 images, 5 pairs
    overall = np.bincount(np.concatenate([grouped.train.labels, grouped.val.labels, grouped.test.labels])) / 120
    for name in SPLITS:  # class proportions within 5 points of the whole set's
        split = getattr(grouped, name)
        assert np.abs(np.bincount(split.labels, minlength=3) / len(split) - overall).max() <= 0.05
    again = load_dataset("breast_ultrasound", size=28, data_root="bundled")
    assert again.split == grouped.split  # deterministic, and the same split at every image size
    assert again.train.ids == grouped.train.ids
    assert grouped.split["sha256"] != random.split["sha256"]
    other_seed = load_dataset("breast_ultrasound", size=28, data_root="bundled", split_seed=1)
    assert other_seed.split["sha256"] != grouped.split["sha256"]


def test_split_kind_enters_the_run_hash_only_when_not_random(tmp_path: Path) -> None:
    suite = tmp_path / "s.yaml"
    suite.write_text("datasets: [breastmnist, {name: breast_ultrasound, size: 64},\n"
                     "           {name: breast_ultrasound, size: 64, split: random}]\nmodels: [resnet18_28]\n")
    medmnist, grouped, random = load_suite(str(suite)).runs
    assert (medmnist.split, grouped.split, random.split) == (None, "grouped", "random")
    before_split_kinds = replace(random, split=None)  # what records written before split kinds hashed
    assert random.config_hash == before_split_kinds.config_hash != grouped.config_hash
    suite.write_text("datasets: [{name: breastmnist, split: random}]\nmodels: [resnet18_28]\n")
    with pytest.raises(UserError, match="breastmnist comes with its own splits; remove `split:`"):
        load_suite(str(suite))
    suite.write_text("datasets: [{name: breast_ultrasound, split: patient}]\nmodels: [resnet18_28]\n")
    with pytest.raises(UserError, match="'patient' is not one of grouped, random"):
        load_suite(str(suite))


def test_data_check_cli_reports_and_writes_groups(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    output = tmp_path / "groups.json"
    assert main(["data-check", "breast_ultrasound", "--data-root", "bundled", "--split", "random",
                 "--output", str(output)]) == 0
    printed = capsys.readouterr().out
    assert "near-duplicate pairs (correlation >= 0.95 at 64 px): 5" in printed
    assert "across splits: 4; across classes: 0" in printed
    content = json.loads(output.read_text())
    assert content["summary"]["groups_across_splits"] == 4 and len(content["groups"]) == 5
    assert {member["id"] for member in content["groups"][0]["members"]} <= {
        path.relative_to(BUNDLED_BUSI).as_posix() for path in BUNDLED_BUSI.glob("*/*.png")}
    csv = tmp_path / "groups.csv"
    assert main(["data-check", "breastmnist", "--data-root", "bundled", "--output", str(csv)]) == 0
    assert csv.read_text().startswith("group,id,split,label,group_splits,group_classes,min_correlation")
    assert main(["data-check", "breastmnist", "--data-root", "bundled", "--split", "random"]) == 2


@needs_shared_data
def test_full_busi_grouped_split_has_no_near_duplicate_across_splits() -> None:
    report = check_dataset("breast_ultrasound", data_root=str(SHARED_DATA))
    summary = report.summary()
    assert summary["pairs"] == 209 and summary["groups"] == 127  # the figures README and BUSI.md quote
    assert summary["groups_across_splits"] == 0
    assert summary["twins_in_train"] == {"val": {"near": 0, "almost_identical": 0},
                                         "test": {"near": 0, "almost_identical": 0}}
    labels = np.array(report.labels)
    splits = np.array(report.splits)
    overall = np.bincount(labels) / len(labels)
    for name in SPLITS:
        assert np.abs(np.bincount(labels[splits == name], minlength=3) / (splits == name).sum() - overall).max() <= 0.03
