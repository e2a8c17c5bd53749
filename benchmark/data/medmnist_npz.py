"""MedMNIST 2D data sets read from medmnist's own npz files.

Layout (medmnist's): `<root>/<flag>.npz` for 28 px and `<root>/<flag>_<size>.npz` for 64/128/224, holding
`{train,val,test}_images` ((N, H, W) for one channel, (N, H, W, 3) for RGB; uint8) and
`{train,val,test}_labels` ((N, 1) integers). A file is checked against `medmnist.INFO`'s MD5 before use
(the subsets in `benchmark/bundled/` against the bundled manifest). Every 2D single-label flag of
`medmnist.INFO` is registered; the 3D sets and the multi-label chestmnist do not fit the `Split` contract.
MedMNIST ships official splits, so `split_seed` is not used here. An npz that also holds a `synthetic`
array was written by the test helper (`tests/synthetic.py`), and the result is marked synthetic.
"""

from __future__ import annotations

import functools
import zipfile
import zlib
from pathlib import Path
from typing import Mapping

import medmnist
import numpy as np
from medmnist import INFO

from benchmark.data.registry import (
    BUNDLED,
    BUNDLED_DIR,
    SPLIT_NAMES,
    DatasetSplits,
    Split,
    check_bundled_file,
    check_md5,
    checked_split,
    file_md5,
    one_line,
    register_dataset,
    resolve_data_root,
)
from benchmark.errors import UserError

SINGLE_LABEL_TASKS = ("binary-class", "multi-class", "ordinal-regression")
ARRAY_KEYS = tuple(f"{split}_{kind}" for kind in ("images", "labels") for split in SPLIT_NAMES)
SYNTHETIC_KEY = "synthetic"
_ZIP_TIMESTAMP = (1980, 1, 1, 0, 0, 0)  # fixed, so that writing the same arrays gives the same bytes
_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


def npz_filename(flag: str, size: int) -> str:
    return f"{flag}.npz" if size == 28 else f"{flag}_{size}.npz"


def _info_key(prefix: str, size: int) -> str:
    """INFO keys for a size: "MD5" / "url" at 28 px, "MD5_64" / "url_64" and so on above."""
    return prefix if size == 28 else f"{prefix}_{size}"


def load_medmnist(flag: str, *, size: int, data_root: str | None, download: bool, limit: int | None,
                  split_seed: int, verify: bool) -> DatasetSplits:
    info = INFO[flag]
    path = _locate(flag, size, data_root, download)
    arrays, synthetic = _read_npz(path, limit)  # before the MD5: a damaged file gets the specific message
    class_names = [info["label"][key] for key in sorted(info["label"], key=int)]
    splits = {
        split: checked_split(arrays[f"{split}_images"], arrays[f"{split}_labels"], size=size,
                             n_channels=info["n_channels"], n_classes=len(class_names), where=f"{path} ({split})")
        for split in SPLIT_NAMES
    }
    md5 = file_md5(path)
    if verify:
        if data_root == BUNDLED:
            check_bundled_file(path, md5)
        else:
            check_md5(path, md5, info[_info_key("MD5", size)])
    return DatasetSplits(name=flag, size=size, task=info["task"], class_names=class_names, **splits,
                         source=str(path), md5=md5, synthetic=synthetic)


def _locate(flag: str, size: int, data_root: str | None, download: bool) -> Path:
    filename = npz_filename(flag, size)
    if data_root == BUNDLED:
        path = BUNDLED_DIR / filename
        if not path.is_file():
            shipped = ", ".join(sorted(p.name for p in BUNDLED_DIR.glob("*.npz")))
            raise UserError(f"{filename} is not bundled (the package ships {shipped}); point --data-root at a "
                            f"folder holding it, or leave --data-root unset and pass --download")
        return path
    root = resolve_data_root(data_root)
    path = root / filename
    if not path.is_file():
        if not download:
            raise UserError(f"{path} not found; pass --download to fetch it, or point --data-root at a folder "
                            f"holding it")
        _download(flag, size, root)
    return path


def _check_files(flag: str, *, size: int, data_root: str | None, download: bool) -> None:
    """Raise `_locate`'s error when the file is missing and would not be downloaded."""
    if not download or data_root == BUNDLED:
        _locate(flag, size, data_root, download=False)


def _download(flag: str, size: int, root: Path) -> None:
    """Fetch the file through medmnist's own dataset class (which checks the MD5 as it downloads)."""
    root.mkdir(parents=True, exist_ok=True)
    dataset_class = getattr(medmnist, INFO[flag]["python_class"])
    try:
        dataset_class(split="test", root=str(root), download=True, size=size)
    except RuntimeError as error:  # medmnist turns every download failure into a RuntimeError
        url = INFO[flag][_info_key("url", size)]
        raise UserError(f"downloading {url} failed; check your connection, or download it by hand into "
                        f"{root}") from error


def _read_npz(path: Path, limit: int | None) -> tuple[dict[str, np.ndarray], bool]:
    """The six arrays (first `limit` rows of each) and whether the file is marked synthetic."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = set(archive.namelist())
            missing = [key for key in ARRAY_KEYS if f"{key}.npy" not in members]
            if missing:
                raise UserError(f"{path}: missing array(s) {', '.join(missing)}; expected medmnist's npz "
                                f"layout ({', '.join(ARRAY_KEYS)})")
            arrays = {key: _read_rows(archive, key, limit) for key in ARRAY_KEYS}
            return arrays, f"{SYNTHETIC_KEY}.npy" in members
    except (zipfile.BadZipFile, EOFError, ValueError, OSError, zlib.error) as error:
        raise UserError(f"{path}: cannot read it as an npz file ({one_line(error)}); it is truncated or corrupt: "
                        f"delete it and re-download it with --download") from error


def _read_rows(archive: zipfile.ZipFile, key: str, limit: int | None) -> np.ndarray:
    """Read the first `limit` rows of `<key>.npy`, inflating no more of the archive than that."""
    with archive.open(f"{key}.npy") as stream:
        version = np.lib.format.read_magic(stream)
        if version not in _HEADER_READERS:
            raise ValueError(f"{key}: unsupported .npy format version {version}")
        shape, fortran_order, dtype = _HEADER_READERS[version](stream)
        if fortran_order or dtype.hasobject or not shape:
            raise ValueError(f"{key}: expected a C-ordered numeric array with a sample axis")
        rows = shape[0] if limit is None else min(limit, shape[0])
        array = np.empty((rows, *shape[1:]), dtype=dtype)
        if array.nbytes and stream.readinto(memoryview(array).cast("B")) != array.nbytes:
            raise EOFError(f"{key} ends early")
        return array


def save_npz(path: Path, splits: Mapping[str, Split], *, synthetic: bool = False) -> Path:
    """Write splits in medmnist's npz layout: images (N, H, W) for one channel else (N, H, W, C), uint8;
    labels (N, 1) uint8. Byte-for-byte deterministic. `synthetic=True` adds the synthetic marker array."""
    arrays: dict[str, np.ndarray] = {}
    for split in SPLIT_NAMES:
        images = splits[split].images
        arrays[f"{split}_images"] = images[..., 0] if images.ndim == 4 and images.shape[-1] == 1 else images
    for split in SPLIT_NAMES:
        arrays[f"{split}_labels"] = np.asarray(splits[split].labels).astype(np.uint8).reshape(-1, 1)
    if synthetic:
        arrays[SYNTHETIC_KEY] = np.array(True)
    with zipfile.ZipFile(path, "w") as archive:
        for key, array in arrays.items():
            member = zipfile.ZipInfo(f"{key}.npy", date_time=_ZIP_TIMESTAMP)
            member.compress_type = zipfile.ZIP_DEFLATED
            with archive.open(member, "w", force_zip64=True) as stream:
                np.lib.format.write_array(stream, np.ascontiguousarray(array), allow_pickle=False)
    return path


def _register_medmnist_flags() -> None:
    for flag, info in INFO.items():
        if not flag.endswith("3d") and info["task"] in SINGLE_LABEL_TASKS:
            register_dataset(flag, check=functools.partial(_check_files, flag))(functools.partial(load_medmnist, flag))


_register_medmnist_flags()
