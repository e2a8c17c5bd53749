"""Cut the small real subsets shipped in `benchmark/bundled/` from a full data root. Deterministic.

The source root holds `medmnist/breastmnist.npz`, `medmnist/retinamnist.npz` (the official 28 px files; their
MD5 is checked against medmnist.INFO) and `busi/<class>/*.png` (the BUSI images). Writes `<flag>.npz` in
medmnist's layout (stratified per split), `busi/<class>/<original name>.png` (a stratified subset,
grayscale, longest side at most --busi-max-side px), the `MD5SUMS` manifest the loaders verify, and SOURCES.md.

    python scripts/make_subsets.py /work/shared/data benchmark/bundled
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.model_selection import train_test_split

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmark.data import Split, load_dataset  # noqa: E402
from benchmark.data.medmnist_npz import save_npz  # noqa: E402
from benchmark.data.registry import SPLIT_NAMES  # noqa: E402

BUSI_CLASSES = ("benign", "malignant", "normal")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source_root", type=Path, help="folder holding medmnist/*.npz and busi/<class>/*.png")
    parser.add_argument("output_dir", type=Path, help="where to write the subsets (benchmark/bundled)")
    parser.add_argument("--breastmnist", type=int, nargs=3, default=[120, 40, 80], metavar=("TRAIN", "VAL", "TEST"))
    parser.add_argument("--retinamnist", type=int, nargs=3, default=[200, 60, 120], metavar=("TRAIN", "VAL", "TEST"))
    parser.add_argument("--busi-per-class", type=int, default=40)
    parser.add_argument("--busi-max-side", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def stratified_subset(split: Split, n: int, seed: int) -> Split:
    """n samples keeping the class proportions and the file's order; every class must stay present."""
    chosen, _ = train_test_split(np.arange(len(split)), train_size=n, stratify=split.labels, random_state=seed)
    chosen = np.sort(chosen)
    labels = split.labels[chosen]
    if len(np.unique(labels)) != len(np.unique(split.labels)):
        raise SystemExit(f"a subset of {n} loses a class; choose a larger size")
    return Split(images=split.images[chosen], labels=labels)


def cut_medmnist(flag: str, sizes: list[int], source_root: Path, output_dir: Path, seed: int) -> Path:
    full = load_dataset(flag, size=28, data_root=str(source_root / "medmnist"))  # verifies medmnist's MD5
    subsets = {name: stratified_subset(getattr(full, name), n, seed) for name, n in zip(SPLIT_NAMES, sizes)}
    return save_npz(output_dir / f"{flag}.npz", subsets)


def cut_busi(source_dir: Path, output_dir: Path, per_class: int, max_side: int, seed: int) -> list[Path]:
    rng = np.random.default_rng(seed)
    target_root = output_dir / "busi"
    shutil.rmtree(target_root, ignore_errors=True)
    written = []
    for class_name in BUSI_CLASSES:
        files = sorted((source_dir / class_name).glob("*.png"))
        chosen = sorted(rng.choice(len(files), size=per_class, replace=False))
        (target_root / class_name).mkdir(parents=True)
        for index in chosen:
            target = target_root / class_name / files[index].name
            downscaled(files[index], max_side).save(target, optimize=True)
            written.append(target)
    return written


def downscaled(path: Path, max_side: int) -> Image.Image:
    with Image.open(path) as image:
        image = image.convert("L")
    scale = min(1.0, max_side / max(image.size))
    new_size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(new_size, Image.Resampling.BILINEAR)


def write_manifest(output_dir: Path, files: list[Path]) -> dict[str, str]:
    md5s = {path.relative_to(output_dir).as_posix(): hashlib.md5(path.read_bytes()).hexdigest()
            for path in files}
    lines = [f"{md5}  {relative}" for relative, md5 in sorted(md5s.items())]
    (output_dir / "MD5SUMS").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return md5s


def write_sources(output_dir: Path, args: argparse.Namespace, md5s: dict[str, str], sizes: dict[str, int]) -> None:
    table = "\n".join(f"| `{relative}` | {sizes[relative]:,} | `{md5}` |" for relative, md5 in sorted(md5s.items()))
    text = SOURCES_TEMPLATE.format(
        breast=" / ".join(map(str, args.breastmnist)), retina=" / ".join(map(str, args.retinamnist)),
        per_class=args.busi_per_class, max_side=args.busi_max_side, seed=args.seed,
        total=sum(sizes.values()), table=table,
        command=(f"python scripts/make_subsets.py <data root> benchmark/bundled "
                 f"--breastmnist {' '.join(map(str, args.breastmnist))} "
                 f"--retinamnist {' '.join(map(str, args.retinamnist))} --busi-per-class {args.busi_per_class} "
                 f"--busi-max-side {args.busi_max_side} --seed {args.seed}"))
    (output_dir / "SOURCES.md").write_text(text, encoding="utf-8")


SOURCES_TEMPLATE = """\
# Bundled data: small real subsets

Real images, cut from the public data sets below by `scripts/make_subsets.py` (deterministic; this file and
`MD5SUMS` are written by it). They let the test suite and smoke runs work offline; load them with
`load_dataset(name, data_root="bundled")` or `--data-root bundled`. The loaders check every file against `MD5SUMS`.
Results on these subsets are for smoke tests only: they are far too small to benchmark with.

## breastmnist.npz, retinamnist.npz (MedMNIST v2, 28 x 28)
- Source: the official MedMNIST v2 files `breastmnist.npz` (MD5 750601b1f35ba3300ea97c75c52ff8f6) and
  `retinamnist.npz` (MD5 bd4c0672f1bba3e3a89f0e4e876791e4), the MD5s in `medmnist.INFO`.
- Licence: CC BY 4.0. Cite Yang, J. et al. "MedMNIST v2 - A large-scale lightweight benchmark for 2D and 3D
  biomedical image classification", Scientific Data 10, 41 (2023), and the source data sets: BreastMNIST is
  built from BUSI (Al-Dhabyani et al. 2020, below); RetinaMNIST from DeepDRiD (Liu, R. et al., Patterns 3(6), 2022).
- Cut: per official split, a stratified random subset (sklearn `train_test_split(stratify=labels)`, seed {seed}),
  kept in the file's original order, same keys, shapes and dtypes as medmnist's files (images (N, 28, 28) or
  (N, 28, 28, 3) uint8, labels (N, 1) uint8). train / val / test: breastmnist {breast}, retinamnist {retina}.
  Every class is present in every split. The test suite checks that each image is an exact row of the full file.

## busi/ (breast ultrasound images, BUSI)
- Source: BUSI, Al-Dhabyani, W., Gomaa, M., Khaled, H., Fahmy, A. "Dataset of breast ultrasound images",
  Data in Brief 28, 104863 (2020); 780 images (benign 437, malignant 210, normal 133), the images the hub data
  set `emre570/breastcancer-ultrasound-images` holds. Openly published for research (its Kaggle distribution
  is reported to list CC0 1.0; not verified here); cite the paper.
- Cut: {per_class} images per class, drawn at random (numpy `default_rng({seed})`) from the sorted file names,
  keeping the original file names; converted to 8-bit grayscale (most BUSI files have three equal channels
  or one; a few RGB files go through PIL's luma conversion) and downscaled (PIL bilinear) so that the
  longest side is at most {max_side} px; stored as PNG. No train/test subfolders: the loader cuts its stratified
  80/20 test split and a validation split itself.

## Regenerate
`{command}` (the data root holds `medmnist/<flag>.npz` and `busi/<class>/*.png`).

## Files ({total:,} bytes in all)
| file | bytes | MD5 |
|---|---|---|
{table}
"""


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    files = [cut_medmnist(flag, getattr(args, flag), args.source_root, args.output_dir, args.seed)
             for flag in ("breastmnist", "retinamnist")]
    files += cut_busi(args.source_root / "busi", args.output_dir, args.busi_per_class, args.busi_max_side, args.seed)
    md5s = write_manifest(args.output_dir, files)
    sizes = {path.relative_to(args.output_dir).as_posix(): path.stat().st_size for path in files}
    write_sources(args.output_dir, args, md5s, sizes)
    print(f"wrote {len(files)} files, {sum(sizes.values()):,} bytes, to {args.output_dir}")


if __name__ == "__main__":
    main()
