"""The one dataset registry: dataclasses handed to the rest of the pipeline, `load_dataset` dispatch,
data-root resolution and the validation every loader shares.

Adding a dataset is one registration::

    @register_dataset("my_set", check=check_my_set)
    def load_my_set(*, size, data_root, download, limit, split_seed, verify) -> DatasetSplits: ...

`check(*, size, data_root, download)` (optional) raises the loader's `UserError` when the files it would read
are missing, without reading them: a grid checks every run's data this way before its first run starts.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
from medmnist.info import DEFAULT_ROOT

from benchmark import suites
from benchmark.errors import UserError

SPLIT_NAMES = ("train", "val", "test")
MEDMNIST_SIZES = (28, 64, 128, 224)
BUNDLED = "bundled"
BUNDLED_DIR = Path(__file__).resolve().parents[1] / "bundled"
BUNDLED_MANIFEST = BUNDLED_DIR / "MD5SUMS"
DATA_ROOT_ENV = "MEDMNIST_BENCH_DATA"


@dataclass
class Split:
    images: np.ndarray  # uint8, (N, H, W, C), C in {1, 3}
    labels: np.ndarray  # int64, (N,), values in [0, n_classes)
    ids: list[str] | None = None  # per image, where the loader has names for them (image folders: relative paths)

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class DatasetSplits:
    name: str
    size: int
    task: str  # "binary-class" | "multi-class" | "ordinal-regression"
    class_names: list[str]
    train: Split
    val: Split
    test: Split
    source: str
    md5: str | None
    synthetic: bool = False
    split: dict | None = None  # how a loader cut its own splits: {"kind", "seed", "n_groups", "sha256"}
    train_subset: dict | None = None  # a label-efficiency subset of the training split (`benchmark.data.subsets`)

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    def summary(self) -> dict[str, Any]:
        """The run record's `dataset` block."""
        return {"name": self.name, "size": self.size, "task": self.task, "class_names": list(self.class_names),
                "n_train": len(self.train), "n_val": len(self.val), "n_test": len(self.test),
                "source": portable_path(self.source), "md5": self.md5, "synthetic": self.synthetic,
                "class_counts": {name: np.bincount(getattr(self, name).labels, minlength=self.n_classes).tolist()
                                 for name in SPLIT_NAMES},
                **({"split": self.split} if self.split else {}),
                **({"train_subset": self.train_subset} if self.train_subset else {})}


def portable_path(path: str | Path) -> str:
    """`path` as written into records and results, without this machine's layout: the shipped files as
    `bundled/...`, a path under the working directory relative to it, one under the home folder as `~/...`,
    any other absolute path by its name only. Relative paths and ids (`hub:...`, `bundled`) stay as given."""
    text = str(path)
    if not os.path.isabs(text):
        return text
    resolved = Path(text).resolve()
    for base, prefix in ((BUNDLED_DIR, BUNDLED), (Path.cwd().resolve(), ""), (Path.home().resolve(), "~")):
        if resolved.is_relative_to(base):
            relative = resolved.relative_to(base).as_posix()
            return f"{prefix}/{relative}" if prefix else relative
    return resolved.name


Loader = Callable[..., DatasetSplits]


@dataclass(frozen=True)
class _Entry:
    loader: Loader
    default_size: int
    sizes: tuple[int, ...]
    check: Callable[..., None] | None = None
    split_kinds: tuple[str, ...] = ()
    variant: Callable[[str | None, bool], str | None] | None = None


_REGISTRY: dict[str, _Entry] = {}


def register_dataset(name: str, *, default_size: int | None = None, sizes: tuple[int, ...] = MEDMNIST_SIZES,
                     check: Callable[..., None] | None = None, split_kinds: tuple[str, ...] = (),
                     variant: Callable[[str | None, bool], str | None] | None = None) -> Callable[[Loader], Loader]:
    """Register `loader(*, size, data_root, download, limit, split_seed, verify) -> DatasetSplits`.

    The default size lives in one table, `benchmark.suites.DEFAULT_SIZES` (the torch-free reporting layer reads
    it too); a `default_size` given here is entered there. A loader that cuts its own splits names the ways it
    can in `split_kinds` (the first is the default) and takes a `split` keyword too. A loader whose files are not
    checked against known checksums names, with `variant(data_root, download)`, data that is not the canonical
    set (`data_variant`)."""
    if default_size is not None:
        suites.DEFAULT_SIZES[name] = default_size

    def decorator(loader: Loader) -> Loader:
        if name in _REGISTRY:
            raise ValueError(f"dataset {name!r} is registered twice")
        _REGISTRY[name] = _Entry(loader, suites.default_size(name), tuple(sizes), check, tuple(split_kinds), variant)
        return loader

    return decorator


def data_variant(name: str, data_root: str | None, download: bool = False) -> str | None:
    """Data that differs from the canonical set: the shipped subsets, a hub copy (its own split) or, for a loader
    that checks no checksums, any other folder (its `variant`). Part of the run hash, so a run on other data is
    never taken for (or resumed as) a run on the canonical data; None for the canonical data, wherever it lives."""
    if data_root == BUNDLED or (data_root or "").startswith("hub:"):
        return data_root
    entry = _REGISTRY.get(name)
    return entry.variant(data_root, download) if entry is not None and entry.variant is not None else None


def list_datasets() -> list[str]:
    return sorted(_REGISTRY)


def dataset_sizes(name: str) -> tuple[int, tuple[int, ...]]:
    """(default size, valid sizes) of a registered dataset; unknown names raise with suggestions."""
    entry = _lookup(name)
    return entry.default_size, entry.sizes


def dataset_split_kinds(name: str) -> tuple[str, ...]:
    """The split kinds a dataset's loader can cut (the first is its default); () when its files fix the split."""
    return _lookup(name).split_kinds


def load_dataset(name: str, size: int | None = None, data_root: str | None = None, download: bool = False,
                 limit: int | None = None, split_seed: int = 0, verify: bool = True,
                 split: str | None = None) -> DatasetSplits:
    """Load a registered dataset as uint8 NHWC splits.

    `size=None` is the dataset's default (28 for MedMNIST, 224 for breast_ultrasound). `data_root`:
    a folder, `"bundled"` (the subsets shipped in the package), or None (env `MEDMNIST_BENCH_DATA`, else
    medmnist's default root). `limit` keeps the first N of each split. `split_seed` fixes splits that a
    loader has to cut itself (it is a data setting, not the run seed). `verify=False` skips MD5 checks.
    `split` picks how such a loader cuts (`dataset_split_kinds`; None = its default); other datasets take None.
    """
    entry = _lookup(name)
    size = entry.default_size if size is None else size
    if size not in entry.sizes:
        raise UserError(f"{name} has no size {size}; valid sizes: {', '.join(map(str, entry.sizes))}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise UserError(f"limit must be a positive integer, got {limit!r}")
    if split is not None and split not in entry.split_kinds:
        kinds = f"one of {', '.join(entry.split_kinds)}" if entry.split_kinds else "none: its files fix the split"
        raise UserError(f"{name} has no split {split!r} ({kinds}); fix `split:` in the suite's dataset entry (or --split)")
    extra = {"split": split or entry.split_kinds[0]} if entry.split_kinds else {}
    return entry.loader(size=size, data_root=data_root, download=download, limit=limit,
                        split_seed=split_seed, verify=verify, **extra)


def missing_data(name: str, size: int, data_root: str | None = None, download: bool = False) -> str | None:
    """What is missing for loading this dataset (one line naming the fix), or None when its files are there."""
    entry = _lookup(name)
    if entry.check is None:
        return None
    try:
        entry.check(size=size, data_root=data_root, download=download)
    except UserError as err:
        return str(err)
    return None


def _lookup(name: str) -> _Entry:
    if name in _REGISTRY:
        return _REGISTRY[name]
    matches = difflib.get_close_matches(name, list(_REGISTRY), n=3)
    hint = f"; did you mean {' or '.join(repr(match) for match in matches)}?" if matches else ""
    raise UserError(f"unknown dataset {name!r}{hint} (see `python -m benchmark list`)")


def resolve_data_root(data_root: str | None) -> Path:
    """Explicit argument > env `MEDMNIST_BENCH_DATA` > medmnist's default root (~/.medmnist)."""
    if data_root is not None:
        return Path(data_root).expanduser()
    if os.environ.get(DATA_ROOT_ENV):
        return Path(os.environ[DATA_ROOT_ENV]).expanduser()
    return Path(DEFAULT_ROOT)


def file_md5(path: Path, chunk_bytes: int = 1 << 22) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as stream:
        while chunk := stream.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


@functools.cache
def _bundled_manifest() -> dict[str, str]:
    """Relative path -> MD5, from `benchmark/bundled/MD5SUMS` (md5sum format, `md5sum -c` checks it)."""
    lines = BUNDLED_MANIFEST.read_text(encoding="utf-8").splitlines()
    return {path: md5 for md5, _, path in (line.partition("  ") for line in lines if line)}


def check_md5(path: Path, actual: str, expected: str,
              fix: str = "delete it and re-download it with --download") -> None:
    if actual != expected:
        raise UserError(f"{path}: MD5 mismatch (expected {expected}, got {actual}); the file is damaged or a "
                        f"different version: {fix}")


def check_bundled_file(path: Path, actual_md5: str) -> None:
    """Check a file under `benchmark/bundled/` against the bundled manifest."""
    relative_path = path.relative_to(BUNDLED_DIR).as_posix()
    expected = _bundled_manifest().get(relative_path)
    if expected is None:
        raise UserError(f"{path} is not listed in {BUNDLED_MANIFEST}; reinstall the package")
    check_md5(path, actual_md5, expected, fix="reinstall the package")


def check_bundled_complete(folder: Path, paths: list[Path]) -> None:
    """Every file the bundled manifest lists under `folder` is among `paths`: a deleted file would change the
    shipped subset, and with it every number, under the same run id."""
    prefix = folder.relative_to(BUNDLED_DIR).as_posix() + "/"
    found = {path.relative_to(BUNDLED_DIR).as_posix() for path in paths}
    missing = sorted(name for name in _bundled_manifest() if name.startswith(prefix) and name not in found)
    if missing:
        raise UserError(f"{BUNDLED_DIR / missing[0]} is missing ({len(missing)} of the files {BUNDLED_MANIFEST.name} "
                        f"lists under {prefix}); reinstall the package")


def one_line(error: BaseException) -> str:
    """An exception's text collapsed onto one line, for embedding in a UserError message."""
    return " ".join(str(error).split()) or type(error).__name__


def checked_split(images: np.ndarray, labels: np.ndarray, *, size: int, n_channels: int, n_classes: int,
                  where: str) -> Split:
    """Validate one split's arrays and return them in the contract's form (NHWC uint8, int64 labels).

    Accepts images (N, H, W) for single-channel data or (N, H, W, C), labels (N,) or (N, 1).
    `where` names the file and split in error messages.
    """
    if len(images) == 0:
        raise UserError(f"{where}: split is empty; every split needs at least one image")
    if images.dtype != np.uint8:
        raise UserError(f"{where}: images have dtype {images.dtype}, expected uint8")
    stored_shape = images.shape
    if images.ndim == 3 and n_channels == 1:
        images = images[..., np.newaxis]
    if images.ndim != 4 or images.shape[1:] != (size, size, n_channels):
        expected = f"(N, {size}, {size})" if n_channels == 1 else f"(N, {size}, {size}, {n_channels})"
        raise UserError(f"{where}: images have shape {stored_shape}, expected {expected} "
                        f"(size {size}, {n_channels} channel(s))")
    if labels.size != len(images) or labels.shape[0] != len(images):
        raise UserError(f"{where}: labels have shape {labels.shape}, expected ({len(images)},) or "
                        f"({len(images)}, 1) (one single-class label per image)")
    if not np.issubdtype(labels.dtype, np.integer):
        raise UserError(f"{where}: labels have dtype {labels.dtype}, expected integers")
    labels = labels.reshape(-1).astype(np.int64)
    if labels.min() < 0 or labels.max() >= n_classes:
        raise UserError(f"{where}: labels span [{labels.min()}, {labels.max()}], expected values in "
                        f"[0, {n_classes}) for {n_classes} classes")
    return Split(images=images, labels=labels)
