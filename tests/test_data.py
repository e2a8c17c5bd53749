"""Data layer: the registry, MedMNIST npz files, breast-ultrasound images, bundled subsets, and bad input."""

from __future__ import annotations

import re
import shutil
import zipfile
from collections import Counter
from pathlib import Path

import medmnist
import numpy as np
import pytest
from medmnist import INFO
from PIL import Image
from synthetic import write_synthetic_medmnist

from benchmark.data import DatasetSplits, Split, list_datasets, load_dataset, register_dataset, registry
from benchmark.errors import UserError

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_shared_data = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="real data in ../shared/data is absent")
BUNDLED_BUSI = registry.BUNDLED_DIR / "busi"
BUSI_CLASSES = ["benign", "malignant", "normal"]
SPLITS = ("train", "val", "test")


def split_sizes(data: DatasetSplits) -> tuple[int, int, int]:
    return len(data.train), len(data.val), len(data.test)


def class_counts(split: Split, n_classes: int) -> list[int]:
    return np.bincount(split.labels, minlength=n_classes).tolist()


def assert_contract(data: DatasetSplits, channels: int) -> None:
    for name in SPLITS:
        split = getattr(data, name)
        assert split.images.dtype == np.uint8 and split.labels.dtype == np.int64
        assert split.images.shape == (len(split.labels), data.size, data.size, channels)
        assert 0 <= split.labels.min() and split.labels.max() < data.n_classes


@pytest.fixture(autouse=True)
def no_data_root_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(registry.DATA_ROOT_ENV, raising=False)


@pytest.fixture(scope="module")
def bundled_ultrasound() -> DatasetSplits:
    return load_dataset("breast_ultrasound", size=64, data_root="bundled")


# --- registry ------------------------------------------------------------------------------------------

def test_registry_lists_every_2d_single_label_medmnist_flag_and_ultrasound() -> None:
    names = list_datasets()
    assert {"bloodmnist", "breastmnist", "pathmnist", "retinamnist", "breast_ultrasound"} <= set(names)
    assert not [name for name in names if name.endswith("3d")]
    assert "chestmnist" not in names  # multi-label: does not fit Split.labels (N,)


def test_unknown_dataset_suggests_close_names() -> None:
    with pytest.raises(UserError, match=r"unknown dataset 'bloodmnst'; did you mean 'bloodmnist'\? \(see"):
        load_dataset("bloodmnst")
    with pytest.raises(UserError, match=r"unknown dataset 'zzz' \(see `python -m benchmark list`\)"):
        load_dataset("zzz")


def test_bad_size_and_limit_are_user_errors() -> None:
    with pytest.raises(UserError, match="breastmnist has no size 100; valid sizes: 28, 64, 128, 224"):
        load_dataset("breastmnist", size=100, data_root="bundled")
    with pytest.raises(UserError, match="breast_ultrasound has no size 32"):
        load_dataset("breast_ultrasound", size=32, data_root="bundled")
    with pytest.raises(UserError, match="limit must be a positive integer"):
        load_dataset("breastmnist", data_root="bundled", limit=0)


def test_register_dataset_adds_one_loader(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(registry.suites, "DEFAULT_SIZES", dict(registry.suites.DEFAULT_SIZES))
    calls = []

    @register_dataset("tiny", default_size=64, sizes=(64,))
    def load_tiny(**kwargs: object) -> str:
        calls.append(kwargs)
        return "loaded"

    assert "tiny" in list_datasets()
    assert load_dataset("tiny", limit=3) == "loaded"
    assert calls == [{"size": 64, "data_root": None, "download": False, "limit": 3, "split_seed": 0, "verify": True}]
    with pytest.raises(ValueError, match="registered twice"):
        register_dataset("tiny")(load_tiny)


def test_data_root_resolution(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert registry.resolve_data_root(None) == Path(medmnist.info.DEFAULT_ROOT)
    monkeypatch.setenv(registry.DATA_ROOT_ENV, str(tmp_path / "env"))
    assert registry.resolve_data_root(None) == tmp_path / "env"
    assert registry.resolve_data_root(str(tmp_path / "arg")) == tmp_path / "arg"
    write_synthetic_medmnist(tmp_path / "env", "bloodmnist", 28)
    assert load_dataset("bloodmnist", verify=False).source == str(tmp_path / "env" / "bloodmnist.npz")


# --- bundled real subsets ------------------------------------------------------------------------------

def test_bundled_breastmnist() -> None:
    data = load_dataset("breastmnist", data_root="bundled")
    assert_contract(data, channels=1)
    assert split_sizes(data) == (120, 40, 80)
    assert data.class_names == ["malignant", "normal, benign"] and data.task == "binary-class"
    assert [class_counts(getattr(data, name), 2) for name in SPLITS] == [[32, 88], [11, 29], [22, 58]]
    assert data.md5 == registry._bundled_manifest()["breastmnist.npz"] and not data.synthetic


def test_bundled_retinamnist_keeps_every_class_in_every_split() -> None:
    data = load_dataset("retinamnist", data_root="bundled")
    assert_contract(data, channels=3)
    assert split_sizes(data) == (200, 60, 120)
    assert data.task == "ordinal-regression" and data.n_classes == 5
    assert all(min(class_counts(getattr(data, name), 5)) > 0 for name in SPLITS)


@needs_shared_data
@pytest.mark.parametrize("flag", ["breastmnist", "retinamnist"])
def test_bundled_rows_are_rows_of_the_real_file(flag: str) -> None:
    bundled = load_dataset(flag, data_root="bundled")
    real = load_dataset(flag, data_root=str(SHARED_DATA / "medmnist"))
    for name in SPLITS:
        real_split = getattr(real, name)
        real_rows = {(image.tobytes(), label) for image, label in zip(real_split.images, real_split.labels)}
        bundled_split = getattr(bundled, name)
        bundled_rows = zip(bundled_split.images, bundled_split.labels)
        assert all((image.tobytes(), label) in real_rows for image, label in bundled_rows)


def test_bundled_ultrasound_is_stratified_80_20_then_val(bundled_ultrasound: DatasetSplits) -> None:
    data = bundled_ultrasound
    assert_contract(data, channels=1)
    assert data.class_names == BUSI_CLASSES and data.task == "multi-class"
    assert split_sizes(data) == (72, 24, 24)
    assert [class_counts(getattr(data, name), 3) for name in SPLITS] == [[24, 24, 24], [8, 8, 8], [8, 8, 8]]
    assert data.source == str(BUNDLED_BUSI) and len(data.md5) == 32


def test_ultrasound_default_size_is_224() -> None:
    data = load_dataset("breast_ultrasound", data_root="bundled", limit=2)
    assert data.size == 224 and data.train.images.shape == (2, 224, 224, 1)


def test_ultrasound_split_is_fixed_and_independent_of_the_run_seed(bundled_ultrasound: DatasetSplits) -> None:
    np.random.seed(123)  # a run seed must not leak into the split
    again = load_dataset("breast_ultrasound", size=64, data_root="bundled")
    for name in SPLITS:
        np.testing.assert_array_equal(getattr(again, name).images, getattr(bundled_ultrasound, name).images)
    other = load_dataset("breast_ultrasound", size=64, data_root="bundled", split_seed=1)
    assert not np.array_equal(other.test.images, bundled_ultrasound.test.images)
    assert again.md5 == other.md5 == bundled_ultrasound.md5


def test_limit_keeps_the_first_n_of_each_medmnist_split() -> None:
    full = load_dataset("retinamnist", data_root="bundled")
    small = load_dataset("retinamnist", data_root="bundled", limit=5)
    for name in SPLITS:
        np.testing.assert_array_equal(getattr(small, name).images, getattr(full, name).images[:5])
        np.testing.assert_array_equal(getattr(small, name).labels, getattr(full, name).labels[:5])


def test_limit_on_an_image_folder_with_splits_is_a_fixed_mixed_subset(tmp_path: Path) -> None:
    for split in ("train", "test"):  # folder splits list their images class by class
        for label, name in enumerate(("benign", "malignant", "normal")):
            (tmp_path / split / name).mkdir(parents=True)
            for i in range(6 if split == "train" else 3):
                pixels = np.full((8, 8), 40 * label + i, dtype=np.uint8)
                Image.fromarray(pixels).save(tmp_path / split / name / f"{name} ({i}).png")
    full = load_dataset("breast_ultrasound", size=28, data_root=str(tmp_path))
    first = load_dataset("breast_ultrasound", size=28, data_root=str(tmp_path), limit=4)
    again = load_dataset("breast_ultrasound", size=28, data_root=str(tmp_path), limit=4)
    assert len(set(first.test.labels.tolist())) > 1  # not the first class alone
    np.testing.assert_array_equal(first.test.images, again.test.images)
    full_rows = {row.tobytes() for row in full.test.images}
    assert all(row.tobytes() in full_rows for row in first.test.images)


# --- synthetic files for sets and sizes not available offline ------------------------------------------

@pytest.mark.parametrize(("flag", "size", "channels"), [("bloodmnist", 28, 3), ("pathmnist", 28, 3),
                                                         ("breastmnist", 64, 1), ("pathmnist", 128, 3)])
def test_synthetic_medmnist_files_load(tmp_path: Path, flag: str, size: int, channels: int) -> None:
    path = write_synthetic_medmnist(tmp_path, flag, size, n_per_split=10)
    assert path.name == (f"{flag}.npz" if size == 28 else f"{flag}_{size}.npz")
    with np.load(path) as raw:  # medmnist's own layout
        assert raw["train_images"].shape == (10, size, size) + (() if channels == 1 else (3,))
        assert raw["train_labels"].shape == (10, 1) and raw["train_labels"].dtype == np.uint8
    data = load_dataset(flag, size=size, data_root=str(tmp_path), verify=False)
    assert_contract(data, channels)
    assert data.synthetic and split_sizes(data) == (10, 10, 10)
    assert data.class_names == [INFO[flag]["label"][str(i)] for i in range(len(INFO[flag]["label"]))]
    expected_md5 = INFO[flag]["MD5" if size == 28 else f"MD5_{size}"]
    with pytest.raises(UserError, match=f"MD5 mismatch \\(expected {expected_md5}, got .*delete it and re-download"):
        load_dataset(flag, size=size, data_root=str(tmp_path))


def test_download_goes_through_medmnists_dataset_class(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls = []

    class FakeBloodMNIST:  # stands in for the network: writes a synthetic file where medmnist would
        def __init__(self, split: str, root: str, download: bool, size: int) -> None:
            calls.append((split, root, download, size))
            write_synthetic_medmnist(root, "bloodmnist", size)

    monkeypatch.setattr(medmnist, "BloodMNIST", FakeBloodMNIST)
    data = load_dataset("bloodmnist", size=64, data_root=str(tmp_path / "new"), download=True, verify=False)
    assert calls == [("test", str(tmp_path / "new"), True, 64)] and data.synthetic


def test_failed_download_is_a_user_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def offline(**kwargs: object) -> None:
        raise RuntimeError("Automatic download failed!\n  details")

    monkeypatch.setattr(medmnist, "BloodMNIST", offline)
    with pytest.raises(UserError, match=r"downloading https://zenodo.org/\S+bloodmnist.npz\S* failed"):
        load_dataset("bloodmnist", data_root=str(tmp_path), download=True)


# --- bad MedMNIST files --------------------------------------------------------------------------------

def write_npz(path: Path, **overrides: np.ndarray) -> Path:
    """A breastmnist-like 28 px file (4 images per split) with some arrays replaced or removed (None)."""
    arrays = {}
    for name in SPLITS:
        arrays[f"{name}_images"] = np.zeros((4, 28, 28), np.uint8)
        arrays[f"{name}_labels"] = np.array([[0], [1], [0], [1]], np.uint8)
    arrays.update(overrides)
    np.savez(path, **{key: value for key, value in arrays.items() if value is not None})
    return path


@pytest.mark.parametrize(("overrides", "message"), [
    ({"val_images": np.zeros((4, 32, 32), np.uint8)},
     r"\(val\): images have shape \(4, 32, 32\), expected \(N, 28, 28\)"),
    ({"train_images": np.zeros((4, 28, 28, 3), np.uint8)}, r"images have shape \(4, 28, 28, 3\)"),
    ({"test_images": np.zeros((4, 28, 28), np.float32)}, r"\(test\): images have dtype float32, expected uint8"),
    ({"train_labels": np.array([[0], [1], [2], [1]], np.uint8)}, r"labels span \[0, 2\], expected values in \[0, 2\)"),
    ({"train_labels": np.array([[0.0], [1.0], [0.0], [1.0]])}, r"labels have dtype float64, expected integers"),
    ({"val_labels": np.array([[0], [1]], np.uint8)}, r"labels have shape \(2, 1\), expected \(4,\)"),
    ({"val_images": np.zeros((0, 28, 28), np.uint8), "val_labels": np.zeros((0, 1), np.uint8)},
     r"\(val\): split is empty"),
    ({"test_labels": None}, r"missing array\(s\) test_labels; expected medmnist's npz layout"),
])
def test_bad_npz_contents_are_user_errors(tmp_path: Path, overrides: dict, message: str) -> None:
    path = write_npz(tmp_path / "breastmnist.npz", **overrides)
    with pytest.raises(UserError, match=message) as caught:
        load_dataset("breastmnist", data_root=str(tmp_path), verify=False)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


def test_truncated_npz_is_a_user_error(tmp_path: Path) -> None:
    path = write_synthetic_medmnist(tmp_path, "bloodmnist", 28)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(UserError, match="bloodmnist.npz: cannot read it as an npz file .*truncated or corrupt"):
        load_dataset("bloodmnist", data_root=str(tmp_path), verify=False)


def test_corrupt_member_is_a_user_error(tmp_path: Path) -> None:
    path = tmp_path / "bloodmnist.npz"
    with zipfile.ZipFile(path, "w") as archive:
        for key in registry.SPLIT_NAMES:
            archive.writestr(f"{key}_images.npy", b"not an npy file")
            archive.writestr(f"{key}_labels.npy", b"not an npy file")
    with pytest.raises(UserError, match="cannot read it as an npz file"):
        load_dataset("bloodmnist", data_root=str(tmp_path), verify=False)


def test_missing_file_without_download_says_how_to_get_it(tmp_path: Path) -> None:
    expected = f"{tmp_path / 'bloodmnist.npz'} not found; pass --download to fetch it, or point --data-root"
    with pytest.raises(UserError, match=expected.replace("(", r"\(")):
        load_dataset("bloodmnist", data_root=str(tmp_path))
    with pytest.raises(UserError, match="bloodmnist.npz is not bundled"):
        load_dataset("bloodmnist", data_root="bundled")


# --- ultrasound folders and the hub path ---------------------------------------------------------------

def write_image_folder(root: Path, per_class: int = 5, classes: tuple[str, ...] = tuple(BUSI_CLASSES)) -> Path:
    """Small generated PNGs (varied sizes and modes) in `<root>/<class>/`."""
    rng = np.random.default_rng(0)
    for name in classes:
        (root / name).mkdir(parents=True)
        for index in range(per_class):
            pixels = rng.integers(0, 256, (30 + index, 40, 3), dtype=np.uint8)
            image = Image.fromarray(pixels) if index % 2 else Image.fromarray(pixels[..., 0])
            image.save(root / name / f"{name} ({index}).png")
    return root


def test_folder_with_train_test_layout_keeps_test_and_cuts_val(tmp_path: Path) -> None:
    write_image_folder(tmp_path / "train", per_class=8)
    write_image_folder(tmp_path / "test", per_class=2)
    (tmp_path / "train" / "benign" / "benign (0)_mask.png").write_bytes(b"a mask, skipped")
    data = load_dataset("breast_ultrasound", size=28, data_root=str(tmp_path))
    assert_contract(data, channels=1)
    assert split_sizes(data) == (18, 6, 6)  # val_fraction = 6 / 24
    assert class_counts(data.test, 3) == [2, 2, 2] and class_counts(data.val, 3) == [2, 2, 2]


def test_data_root_rules_for_ultrasound(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    write_image_folder(tmp_path / "root" / "busi")
    monkeypatch.setenv(registry.DATA_ROOT_ENV, str(tmp_path / "root"))
    assert load_dataset("breast_ultrasound", size=28).source == str(tmp_path / "root" / "busi")
    assert load_dataset("breast_ultrasound", size=28, data_root=str(tmp_path / "root")).source == str(
        tmp_path / "root" / "busi")
    monkeypatch.setenv(registry.DATA_ROOT_ENV, str(tmp_path / "empty"))
    with pytest.raises(UserError, match="busi not found; pass --download to load emre570/breastcancer-ultrasound"):
        load_dataset("breast_ultrasound")
    with pytest.raises(UserError, match="nowhere not found; point --data-root at a folder"):
        load_dataset("breast_ultrasound", data_root=str(tmp_path / "nowhere"))


def test_hub_source_takes_the_same_path_as_a_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    folder = write_image_folder(tmp_path / "busi", per_class=5)
    paths = sorted(folder.glob("*/*.png"), key=lambda p: (p.parent.name, p.name))
    table = {"image": [str(path) for path in paths], "label": [BUSI_CLASSES.index(p.parent.name) for p in paths]}
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=BUSI_CLASSES)})
    hub_copy = datasets.DatasetDict({"train": datasets.Dataset.from_dict(table, features=features)})
    requested = []
    monkeypatch.setattr(datasets, "load_dataset", lambda hub_id: requested.append(hub_id) or hub_copy)

    from_hub = load_dataset("breast_ultrasound", size=28, data_root="hub:someone/busi-copy")
    from_folder = load_dataset("breast_ultrasound", size=28, data_root=str(folder))
    assert requested == ["someone/busi-copy"] and from_hub.source == "hub:someone/busi-copy"
    assert from_hub.class_names == from_folder.class_names == BUSI_CLASSES
    for name in SPLITS:
        np.testing.assert_array_equal(getattr(from_hub, name).images, getattr(from_folder, name).images)
        np.testing.assert_array_equal(getattr(from_hub, name).labels, getattr(from_folder, name).labels)


def test_unreachable_hub_is_a_user_error(monkeypatch: pytest.MonkeyPatch) -> None:
    datasets = pytest.importorskip("datasets")

    def offline(hub_id: str) -> None:
        raise ConnectionError(f"Couldn't reach '{hub_id}' on the Hub")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(UserError, match=r"cannot load 'a/b' from the Hugging Face hub \(Couldn't reach"):
        load_dataset("breast_ultrasound", data_root="hub:a/b")


def test_hub_data_set_without_class_labels_is_a_user_error(monkeypatch: pytest.MonkeyPatch) -> None:
    datasets = pytest.importorskip("datasets")
    unlabelled = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"image": [], "label": []})})
    monkeypatch.setattr(datasets, "load_dataset", lambda hub_id: unlabelled)
    with pytest.raises(UserError, match="needs a train split with an `image` column and a ClassLabel `label`"):
        load_dataset("breast_ultrasound", data_root="hub:a/b")


def test_bundled_files_are_checked_against_the_manifest(monkeypatch: pytest.MonkeyPatch) -> None:
    damaged = {path: "0" * 32 for path in registry._bundled_manifest()}
    monkeypatch.setattr(registry, "_bundled_manifest", lambda: damaged)
    for name in ("breastmnist", "breast_ultrasound"):
        with pytest.raises(UserError, match=f"MD5 mismatch \\(expected {'0' * 32}, .*reinstall the package"):
            load_dataset(name, size=28, data_root="bundled")
    assert load_dataset("breastmnist", data_root="bundled", verify=False).md5 != "0" * 32


@pytest.mark.parametrize(("damage", "message"), [
    ("zero_byte", r"malignant \(1\).png: image file is empty \(0 bytes\)"),
    ("corrupt", r"malignant \(1\).png: cannot read the image"),
    ("truncated", r"malignant \(1\).png: cannot read the image"),
    ("empty_class", r"normal: class folder has no images"),
    ("no_classes", r"no class folders; expected <class>/ subfolders"),
    ("too_few", r"cannot cut a grouped 20% split from 3 images"),
])
def test_bad_image_folders_are_user_errors(tmp_path: Path, damage: str, message: str) -> None:
    folder = write_image_folder(tmp_path / "busi", per_class=1 if damage == "too_few" else 5)
    victim = folder / "malignant" / "malignant (1).png"
    if damage == "zero_byte":
        victim.write_bytes(b"")
    elif damage == "corrupt":
        victim.write_bytes(b"\x89PNG but not really an image")
    elif damage == "truncated":
        victim.write_bytes(victim.read_bytes()[:60])
    elif damage == "empty_class":
        shutil.rmtree(folder / "normal")
        (folder / "normal").mkdir()
    elif damage == "no_classes":
        for class_dir in list(folder.iterdir()):
            shutil.rmtree(class_dir)
    with pytest.raises(UserError, match=message) as caught:
        load_dataset("breast_ultrasound", size=28, data_root=str(folder))
    assert "\n" not in str(caught.value)


# --- the full real data sets, when present --------------------------------------------------------------

@needs_shared_data
def test_full_real_medmnist_files_match_their_published_counts() -> None:
    breast = load_dataset("breastmnist", data_root=str(SHARED_DATA / "medmnist"))
    assert split_sizes(breast) == (546, 78, 156) and breast.md5 == INFO["breastmnist"]["MD5"]
    assert [class_counts(getattr(breast, name), 2) for name in SPLITS] == [[147, 399], [21, 57], [42, 114]]
    retina = load_dataset("retinamnist", data_root=str(SHARED_DATA / "medmnist"))
    assert split_sizes(retina) == (1080, 120, 400)
    assert class_counts(retina.train, 5) == [486, 128, 206, 194, 66]


@needs_shared_data
def test_full_busi_folder_splits_624_156() -> None:
    data = load_dataset("breast_ultrasound", size=28, data_root=str(SHARED_DATA))  # uses SHARED_DATA/busi
    assert data.source == str(SHARED_DATA / "busi")
    assert (len(data.train) + len(data.val), len(data.test)) == (624, 156)
    assert split_sizes(data) == (468, 156, 156)
    overall = Counter(np.concatenate([data.train.labels, data.val.labels, data.test.labels]).tolist())
    assert [overall[label] for label in range(3)] == [437, 210, 133]


def test_a_file_missing_from_the_shipped_ultrasound_subset_is_refused(tmp_path, monkeypatch):
    """A deleted bundled image changed the subset, and every number, under the same run id; 119 of 120 loaded."""
    from benchmark.data import registry, ultrasound

    copy = tmp_path / "bundled"
    shutil.copytree(registry.BUNDLED_DIR / "busi", copy / "busi")
    gone = sorted((copy / "busi" / "malignant").iterdir())[0]
    gone.unlink()
    for module in (registry, ultrasound):
        monkeypatch.setattr(module, "BUNDLED_DIR", copy)
    with pytest.raises(UserError, match=rf"{re.escape(str(gone))} is missing \(1 of the files MD5SUMS lists under "
                                        r"busi/\); reinstall the package"):
        load_dataset("breast_ultrasound", 28, data_root="bundled")
