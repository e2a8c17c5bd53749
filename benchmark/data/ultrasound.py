"""Breast ultrasound classification (BUSI, Al-Dhabyani et al. 2020): benign / malignant / normal.

Where the images come from (`data_root`):
- `"bundled"`: the small real subset shipped in `benchmark/bundled/busi/`, checked against the bundled manifest.
- `"hub:<id>"`: a Hugging Face hub data set with an `image` column and a ClassLabel `label` column, e.g.
  `hub:emre570/breastcancer-ultrasound-images` (624 train / 156 test). Only the `hub:` prefix selects the hub.
- a local folder, `<dir>/<class>/*.png|jpg|jpeg`, or with `<dir>/train/<class>/...` and `<dir>/test/<class>/...`
  (and optionally `val/`). If `<dir>/busi/` exists it is used instead, so one data root can hold
  medmnist's `<flag>.npz` files and `busi/` side by side.
- None: `<root>/busi/` under env `MEDMNIST_BENCH_DATA`, else medmnist's default root. When that folder is
  missing, `download=True` loads the hub id `emre570/breastcancer-ultrasound-images`.
Class names are the sorted class-folder names (hub: the ClassLabel names): benign, malignant, normal for BUSI.
Segmentation masks (`*_mask*`, stored beside the images in the Kaggle BUSI download) are skipped.

Both sources become the same intermediate (per split, a list of (path or PIL image, label)) and go through
one conversion: each image is converted to 8-bit grayscale ("L": BUSI is grayscale ultrasound; its few RGB
files are converted with the usual luma weights) and resized straight to size x size with PIL's bilinear
filter, which antialiases when downscaling. Images come out (N, size, size, 1) uint8.

Splits: without a test split, a 20 % test cut; without a validation split, a cut from train sized like
test relative to train (val_fraction = n_test / n_train, as the Hugging Face fine-tuning tutorial does).
Both cuts use `split_seed` (default 0), not the run seed, so every model sees the same split. Two kinds:
- `grouped` (the default): leakage-free. Near-duplicate images (`benchmark.data.duplicates`: correlation
  >= 0.95 at 64 px, computed from the originals, so independent of `size`) form groups, and each cut is
  scikit-learn's `StratifiedGroupKFold` (shuffled with `split_seed`; the first of round(1 / fraction)
  folds is cut off), so a group never straddles train, val and test and class proportions stay close.
- `random`: a stratified random cut (`train_test_split`), the protocol of the cookbook and of records
  written before splits had kinds.
The record's dataset block gets `split`: the kind, the seed, the number of groups (grouped) and `sha256`,
a digest over each split's sorted image ids (relative paths; hub: `<hub split>/<index>`).
`md5` is a digest over the sorted relative paths and file bytes (hub: over split, index, label and decoded
pixels).
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Iterable, Union

import numpy as np
from PIL import Image
from sklearn.model_selection import StratifiedGroupKFold, train_test_split

from benchmark.data.duplicates import COMPARE_SIZE, find_near_duplicates
from benchmark.data.images import open_image, stored_pixels
from benchmark.data.registry import (
    BUNDLED,
    BUNDLED_DIR,
    DatasetSplits,
    Split,
    check_bundled_complete,
    check_bundled_file,
    checked_split,
    one_line,
    register_dataset,
    resolve_data_root,
)
from benchmark.errors import UserError

DEFAULT_HUB_ID = "emre570/breastcancer-ultrasound-images"
HUB_PREFIX = "hub:"
FOLDER_NAME = "busi"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
MASK_MARKER = "_mask"
TEST_FRACTION = 0.2
SPLIT_FOLDERS = ("train", "val", "test")
HUB_SPLITS = {"train": "train", "validation": "val", "val": "val", "test": "test"}
SPLIT_KINDS = ("grouped", "random")
FOLDER_HINT = "point --data-root at a folder of <class>/ image subfolders, or use --data-root hub:<id>"
#: `_variant`'s digest of the 780 BUSI images' relative paths and byte sizes (Al-Dhabyani et al.'s Kaggle release,
#: masks left out; the copy SOURCES.md lists): runs on it keep the run ids they always had
CANONICAL_LISTING = "7cab68f92f891274d6bf61ce91f9d575"

ImageSource = Union[Path, Image.Image]
Sample = tuple[ImageSource, int, str]  # (image, label, id)


@dataclass
class _RawDataset:
    """What a source provides before splitting and conversion: the splits it has (at least train)."""

    splits: dict[str, list[Sample]]
    class_names: list[str]
    source: str
    md5: str


def _check_source(*, size: int, data_root: str | None, download: bool) -> None:
    """The folder (or hub id) is there and a folder has class subfolders; the images are checked when read."""
    source = _resolve_source(data_root, download)
    if isinstance(source, Path):
        _class_names(_split_dirs(source)["train"])


def _variant(data_root: str | None, download: bool) -> str | None:
    """A folder other than the canonical BUSI (its images' names and sizes differ from `CANONICAL_LISTING`), or
    the hub copy a missing folder falls back to: part of the run hash (`registry.data_variant`). The folder's
    files are not read: that is the loader's work, and a run id must be cheap."""
    try:
        source = _resolve_source(data_root, download)
    except UserError:
        return None  # no data: the run stops when it loads it, and says why
    if isinstance(source, str):
        return HUB_PREFIX + source
    try:
        paths = [path for samples in _folder_splits(source)[0].values() for path, _, _ in samples]
    except UserError:
        return None
    listing = _digest((path.relative_to(source).as_posix(), str(path.stat().st_size).encode()) for path in
                      sorted(paths, key=lambda path: path.relative_to(source).as_posix()))
    return None if listing == CANONICAL_LISTING else f"folder:{listing[:12]}"


@register_dataset("breast_ultrasound", check=_check_source, split_kinds=SPLIT_KINDS, variant=_variant)
def load_breast_ultrasound(*, size: int, data_root: str | None, download: bool, limit: int | None,
                           split_seed: int, verify: bool, split: str) -> DatasetSplits:
    source = _resolve_source(data_root, download)
    if isinstance(source, str):
        raw = _read_hub(source)
    else:
        raw = _read_folder(source, check_bundled=verify and data_root == BUNDLED)
    samples, split_info = _complete_splits(raw.splits, split_seed, raw.source, split)
    splits = {name: _to_split(_subset(samples[name], limit, split_seed), size, len(raw.class_names),
                              f"{raw.source} ({name})")
              for name in SPLIT_FOLDERS}
    return DatasetSplits(name="breast_ultrasound", size=size, task="multi-class", class_names=raw.class_names,
                         **splits, source=raw.source, md5=raw.md5, split=split_info)


def _subset(samples: list[Sample], limit: int | None, seed: int) -> list[Sample]:
    """`limit` samples drawn with a fixed seed, in their original order (folder splits are sorted by class,
    so their first N would all be one class)."""
    if limit is None or limit >= len(samples):
        return samples
    keep = np.sort(np.random.default_rng(seed).permutation(len(samples))[:limit])
    return [samples[i] for i in keep]


def _resolve_source(data_root: str | None, download: bool) -> Path | str:
    """An image folder (Path) or a hub id (str); the rules are in the module docstring."""
    if data_root == BUNDLED:
        return BUNDLED_DIR / FOLDER_NAME
    if data_root is not None and data_root.startswith(HUB_PREFIX):
        return data_root[len(HUB_PREFIX):]
    root = resolve_data_root(data_root)
    if (root / FOLDER_NAME).is_dir():
        return root / FOLDER_NAME
    if data_root is not None:
        if not root.is_dir():
            raise UserError(f"{root} not found; {FOLDER_HINT}")
        return root
    if download:
        return DEFAULT_HUB_ID
    raise UserError(f"{root / FOLDER_NAME} not found; pass --download to load {DEFAULT_HUB_ID} from the "
                    f"Hugging Face hub, or {FOLDER_HINT}")


# --- local folders ---------------------------------------------------------------------------------------

def _split_dirs(folder: Path) -> dict[str, Path]:
    """The folder's split subfolders when it has train/ and test/, else the folder itself as the train split."""
    split_dirs = {name: folder / name for name in SPLIT_FOLDERS if (folder / name).is_dir()}
    return split_dirs if {"train", "test"} <= split_dirs.keys() else {"train": folder}


def _folder_splits(folder: Path) -> tuple[dict[str, list[Sample]], list[str]]:
    """The folder's samples per split it has, and the class names (the training split's class folders)."""
    split_dirs = _split_dirs(folder)
    class_names = _class_names(split_dirs["train"])
    return {name: _folder_samples(split_dir, class_names, folder) for name, split_dir in split_dirs.items()}, class_names


def _read_folder(folder: Path, check_bundled: bool) -> _RawDataset:
    splits, class_names = _folder_splits(folder)
    paths = [path for samples in splits.values() for path, _, _ in samples]
    return _RawDataset(splits, class_names, str(folder), _folder_digest(folder, paths, check_bundled))


def _class_names(split_dir: Path) -> list[str]:
    names = sorted(entry.name for entry in split_dir.iterdir() if entry.is_dir() and not entry.name.startswith("."))
    if not names:
        raise UserError(f"{split_dir}: no class folders; expected <class>/ subfolders of images "
                        f"(benign/, malignant/, normal/ for BUSI)")
    if len(names) < 2:
        raise UserError(f"{split_dir}: one class folder ({names[0]}/); a classifier needs at least 2 classes, "
                        f"one <class>/ subfolder of images each")
    return names


def _folder_samples(split_dir: Path, class_names: list[str], folder: Path) -> list[Sample]:
    found = _class_names(split_dir)
    if found != class_names:
        raise UserError(f"{split_dir}: class folders {found} differ from the training split's {class_names}")
    return [(path, label, path.relative_to(folder).as_posix())
            for label, name in enumerate(class_names) for path in _image_files(split_dir / name)]


def _image_files(class_dir: Path) -> list[Path]:
    files = sorted(path for path in class_dir.iterdir()
                   if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and MASK_MARKER not in path.stem)
    if not files:
        raise UserError(f"{class_dir}: class folder has no images ({', '.join(IMAGE_SUFFIXES)}); add images "
                        f"or remove the folder")
    return files


def _folder_digest(folder: Path, paths: list[Path], check_bundled: bool) -> str:
    """MD5 over the sorted relative paths and file bytes; rejects empty files, checks bundled files."""
    entries = []
    for path in sorted(paths, key=lambda p: p.relative_to(folder).as_posix()):
        data = path.read_bytes()
        if not data:
            raise UserError(f"{path}: image file is empty (0 bytes); replace or remove it")
        if check_bundled:
            check_bundled_file(path, hashlib.md5(data).hexdigest())
        entries.append((path.relative_to(folder).as_posix(), data))
    if check_bundled:
        check_bundled_complete(folder, paths)
    return _digest(entries)


def _digest(entries: Iterable[tuple[str, bytes]]) -> str:
    digest = hashlib.md5()
    for name, payload in entries:
        digest.update(name.encode() + b"\0")
        digest.update(payload)
    return digest.hexdigest()


# --- Hugging Face hub -----------------------------------------------------------------------------------

def _read_hub(hub_id: str) -> _RawDataset:
    import datasets  # slow to import, and only needed here

    try:
        dataset = datasets.load_dataset(hub_id)
    except (OSError, ValueError) as error:  # connection failures, unknown ids, unusable configs
        raise UserError(f"cannot load {hub_id!r} from the Hugging Face hub ({one_line(error)}); check the id "
                        f"and your connection, or {FOLDER_HINT}") from error
    class_names = _hub_class_names(dataset, hub_id)
    splits = {HUB_SPLITS[name]: [(row["image"], int(row["label"]), f"{name}/{index}")
                                 for index, row in enumerate(split)]
              for name, split in dataset.items() if name in HUB_SPLITS}
    md5 = _digest((f"{split}/{index}/{label}", image.tobytes())
                  for split, samples in sorted(splits.items()) for index, (image, label, _) in enumerate(samples))
    return _RawDataset(splits, class_names, f"{HUB_PREFIX}{hub_id}", md5)


def _hub_class_names(dataset: Any, hub_id: str) -> list[str]:
    """The ClassLabel names of the train split's `label` column; the data set must have `image` too."""
    features = dataset["train"].features if "train" in dataset else {}
    names = getattr(features.get("label"), "names", None)
    if "image" not in features or not names:
        raise UserError(f"hub data set {hub_id!r} needs a train split with an `image` column and a ClassLabel "
                        f"`label` column; it has splits {list(dataset)}")
    return list(names)


# --- shared: splitting and conversion -------------------------------------------------------------------

def _complete_splits(splits: dict[str, list[Sample]], split_seed: int, where: str,
                     kind: str) -> tuple[dict[str, list[Sample]], dict]:
    """Cut the missing test and validation splits with the fixed `split_seed`; returns them and the record's
    `split` block. `kind` is "grouped" (near-duplicate groups kept whole) or "random" (stratified random)."""
    splits = dict(splits)
    info: dict = {"kind": kind if {"test", "val"} - splits.keys() else "given", "seed": split_seed}
    if info["kind"] == "grouped":
        groups = _duplicate_groups(splits["train"])
        info["n_groups"] = len(set(groups.values()))
        cut = partial(_grouped_cut, groups=groups)
    else:
        cut = _stratified_cut
    if "test" not in splits:
        splits["train"], splits["test"] = cut(splits["train"], TEST_FRACTION, split_seed, where)
    if "val" not in splits:
        val_fraction = len(splits["test"]) / len(splits["train"])
        splits["train"], splits["val"] = cut(splits["train"], val_fraction, split_seed, where)
    ids = {name: sorted(sample_id for _, _, sample_id in splits[name]) for name in SPLIT_FOLDERS}
    info["sha256"] = hashlib.sha256(json.dumps(ids, sort_keys=True).encode()).hexdigest()
    return splits, info


def _stratified_cut(samples: list[Sample], fraction: float, seed: int,
                    where: str) -> tuple[list[Sample], list[Sample]]:
    labels = [label for _, label, _ in samples]
    try:
        kept, cut = train_test_split(np.arange(len(samples)), test_size=fraction, stratify=labels,
                                     random_state=seed)
    except ValueError as error:
        raise UserError(f"{where}: cannot cut a stratified {fraction:.0%} split from {len(samples)} images "
                        f"({one_line(error)}); add images") from error
    return [samples[i] for i in kept], [samples[i] for i in cut]


def _duplicate_groups(samples: list[Sample]) -> dict[str, int]:
    """Sample id -> near-duplicate group (correlation >= 0.95 at 64 px, from the original images)."""
    thumbnails = _decode_all([source for source, _, _ in samples], COMPARE_SIZE)
    groups = find_near_duplicates(thumbnails).groups()
    return {sample_id: int(group) for (_, _, sample_id), group in zip(samples, groups)}


def _grouped_cut(samples: list[Sample], fraction: float, seed: int, where: str,
                 groups: dict[str, int]) -> tuple[list[Sample], list[Sample]]:
    """The first fold of a shuffled StratifiedGroupKFold with round(1 / fraction) folds: no group is split."""
    n_folds = max(2, round(1 / fraction))
    labels = [label for _, label, _ in samples]
    group_ids = [groups[sample_id] for _, _, sample_id in samples]
    if len(set(group_ids)) < n_folds:
        raise UserError(f"{where}: cannot cut a grouped {fraction:.0%} split from {len(samples)} images in "
                        f"{len(set(group_ids))} near-duplicate groups; add images or use `split: random`")
    folds = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    kept, cut = next(folds.split(np.zeros(len(samples)), labels, group_ids))
    return [samples[i] for i in kept], [samples[i] for i in cut]


def _decode_all(sources: list[ImageSource], size: int) -> np.ndarray:
    workers = min(8, os.cpu_count() or 1)  # PIL releases the GIL while decoding and resizing
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return np.stack(list(pool.map(partial(_grayscale_pixels, size=size), sources)))


def _to_split(samples: list[Sample], size: int, n_classes: int, where: str) -> Split:
    images = _decode_all([source for source, _, _ in samples], size)
    labels = np.array([label for _, label, _ in samples], dtype=np.int64)
    split = checked_split(images, labels, size=size, n_channels=1, n_classes=n_classes, where=where)
    split.ids = [sample_id for _, _, sample_id in samples]
    return split


def _grayscale_pixels(source: ImageSource, size: int) -> np.ndarray:
    if isinstance(source, Path):
        return stored_pixels(open_image(source), size, channels=1, name=str(source))
    return stored_pixels(source, size, channels=1)
