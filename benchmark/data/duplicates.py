"""Near-duplicate images in any dataset: a perceptual hash proposes pairs, pixel correlation confirms them.

How two images are compared:
1. Both are converted to grayscale (ITU-R 601 luma) once, and that is resized with PIL's bilinear filter to
   `COMPARE_SIZE` × `COMPARE_SIZE` (64 px) and to 32 × 32 for the hash.
2. **Candidates**: a DCT perceptual hash (pHash: the 8 × 8 lowest frequencies of the 32-px image's 2-D DCT,
   one bit per coefficient, set when it is above their median). Pairs whose hashes differ in at most
   `MAX_HASH_DISTANCE` (20) of the 64 bits are candidates. On the 780 BUSI images this keeps 4,490 of the
   303,810 pairs and every one of the 209 pairs that step 3 confirms at 0.95 (the farthest is 20 bits apart).
3. **Confirmation**: the Pearson correlation of the two 64-px images (pixel-identical images count as 1.0,
   constant ones included). A pair is a near duplicate at correlation >= `threshold`, by default
   `NEAR_DUPLICATE` = 0.95; `ALMOST_IDENTICAL` = 0.99 is reported beside it. At 0.95 a BUSI pair is the same
   scan re-saved, cropped slightly differently, or annotated; distinct scans of one patient stay below it.

Near-duplicate pairs are joined into groups (connected components: a chain a~b~c is one group). A report
lists each group with its members' splits and labels, so it shows duplicates within a split, across splits
(leakage between train, val and test) and across classes (one image filed under two labels).

Everything is vectorised in row blocks: hashes are compared as 64-bit words (popcount of the XOR) and
correlations come from one matrix product per block, so a few thousand images take seconds.

Limits: a global pixel correlation is only discriminative when images do not share a fixed layout. Fundus
photographs (RetinaMNIST) all have the same dark border and bright disc: distinct images correlate 0.83 at
the median, so there the 0.95 groups are candidates to inspect, not proof of duplication.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.fft import dctn
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from benchmark.errors import UserError
from benchmark.records import atomic_write_bytes, check_output_file

COMPARE_SIZE = 64
HASH_SIZE = 32
HASH_FREQUENCIES = 8
MAX_HASH_DISTANCE = 20
NEAR_DUPLICATE = 0.95
ALMOST_IDENTICAL = 0.99
OUTPUT_SUFFIXES = (".json", ".csv")
BLOCK_ROWS = 1024

logger = logging.getLogger(__name__)


def _grayscale(image: np.ndarray) -> Image.Image:
    """(H, W, C) or (H, W) uint8 → a PIL "L" image (RGB through PIL's luma weights)."""
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    return Image.fromarray(image).convert("L")


def resized(images, *sizes: int) -> tuple[np.ndarray, ...]:
    """Grayscale float32 copies of `images` (a sequence of uint8 arrays) at each of `sizes` (size × size): one
    (N, size, size) array per size, every image converted to grayscale once and resized from that."""
    out: list[list[np.ndarray]] = [[] for _ in sizes]
    for image in images:
        gray = _grayscale(image)
        for stack, size in zip(out, sizes):
            stack.append(np.asarray(gray.resize((size, size), Image.Resampling.BILINEAR), dtype=np.float32))
    return tuple(np.stack(stack) for stack in out)


def perceptual_hashes(images32: np.ndarray) -> np.ndarray:
    """pHash of (N, 32, 32) grayscale images as (N,) uint64: bit k set when DCT coefficient k > the median."""
    low = dctn(images32.astype(np.float64), axes=(1, 2), norm="ortho")[:, :HASH_FREQUENCIES, :HASH_FREQUENCIES]
    low = low.reshape(len(images32), -1)
    bits = low > np.median(low, axis=1, keepdims=True)
    return np.packbits(bits, axis=1).view(">u8").astype(np.uint64).ravel()


def _unit_rows(images: np.ndarray) -> np.ndarray:
    """Each image flattened, centred and scaled to unit length (constant images: zeros)."""
    flat = images.reshape(len(images), -1).astype(np.float64)
    centred = flat - flat.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(centred, axis=1, keepdims=True)
    return np.divide(centred, norms, out=np.zeros_like(centred), where=norms > 0)


def similar_pairs(hashes: np.ndarray, images: np.ndarray, threshold: float,
                  max_distance: int = MAX_HASH_DISTANCE) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs (i < j) within `max_distance` hash bits whose Pearson correlation is >= threshold, with it.

    Pixel-identical images correlate 1.0 (constant ones included). Row blocks of `BLOCK_ROWS` keep memory
    bounded: one block's hash distances and correlations (a matrix product) at a time.
    """
    unit = _unit_rows(images)
    _, same = np.unique(images.reshape(len(images), -1), axis=0, return_inverse=True)
    rows, cols, corrs = [], [], []
    for start in range(0, len(hashes), BLOCK_ROWS):
        stop = min(start + BLOCK_ROWS, len(hashes))
        distance = np.bitwise_count(hashes[start:stop, None] ^ hashes[None, :])
        corr = np.where(same[start:stop, None] == same[None, :], 1.0, unit[start:stop] @ unit.T)
        i, j = np.nonzero((distance <= max_distance) & (corr >= threshold))
        keep = i + start < j
        rows.append(i[keep] + start)
        cols.append(j[keep])
        corrs.append(np.clip(corr[i[keep], j[keep]], -1.0, 1.0))
    return np.concatenate(rows), np.concatenate(cols), np.concatenate(corrs)


@dataclass
class DuplicatePairs:
    """Confirmed near-duplicate pairs (i < j) over N images with their correlations, and the groups they form."""

    n_images: int
    rows: np.ndarray
    cols: np.ndarray
    correlation: np.ndarray
    threshold: float

    def groups(self, threshold: float | None = None) -> np.ndarray:
        """(N,) group id per image: images joined by pairs at >= threshold share an id; singletons get their own."""
        keep = self.correlation >= (self.threshold if threshold is None else threshold)
        graph = coo_matrix((np.ones(int(keep.sum())), (self.rows[keep], self.cols[keep])),
                           shape=(self.n_images, self.n_images))
        _, labels = connected_components(graph, directed=False)
        return labels


def check_threshold(threshold: float) -> None:
    if not 0 < threshold <= 1:
        raise UserError(f"duplicate threshold must be in (0, 1] (got {threshold}); e.g. {NEAR_DUPLICATE}")


def find_near_duplicates(images, *, threshold: float = NEAR_DUPLICATE, compare_size: int = COMPARE_SIZE,
                         max_hash_distance: int = MAX_HASH_DISTANCE) -> DuplicatePairs:
    """Near-duplicate pairs among `images` (a sequence of uint8 (H, W[, C]) arrays of any sizes)."""
    check_threshold(threshold)
    for_hash, for_compare = resized(images, HASH_SIZE, compare_size)
    hashes = perceptual_hashes(for_hash)
    rows, cols, corr = similar_pairs(hashes, for_compare, threshold, max_hash_distance)
    logger.info("%d images: %d pairs at correlation >= %.2f", len(hashes), len(rows), threshold)
    return DuplicatePairs(len(hashes), rows, cols, corr, threshold)


# --- a whole dataset: groups within and across splits and classes -----------------------------------------

@dataclass
class DuplicateReport:
    """Near-duplicate groups of one dataset's train/val/test images (the result of `check_dataset`)."""

    dataset: str
    size: int
    threshold: float
    split_kind: str | None
    ids: list[str]
    splits: list[str]
    labels: list[int]
    class_names: list[str]
    pairs: DuplicatePairs
    groups: list[list[int]] = field(default_factory=list)  # member indices of each group of >= 2 images

    def __post_init__(self):
        ids = self.pairs.groups()
        members: dict[int, list[int]] = {}
        for index, group in enumerate(ids):
            members.setdefault(int(group), []).append(index)
        self.groups = sorted((m for m in members.values() if len(m) > 1), key=lambda m: (-len(m), m[0]))

    def _twins(self, split: str, other: str, threshold: float) -> int:
        """Images of `split` with a near-duplicate (pair at >= threshold) in `other`."""
        splits = np.array(self.splits)
        keep = self.pairs.correlation >= threshold
        rows, cols = self.pairs.rows[keep], self.pairs.cols[keep]
        hits = set(rows[(splits[rows] == split) & (splits[cols] == other)])
        hits |= set(cols[(splits[cols] == split) & (splits[rows] == other)])
        return len(hits)

    def summary(self) -> dict:
        splits = sorted(set(self.splits), key=["train", "val", "test"].index)
        group_splits = [{self.splits[i] for i in group} for group in self.groups]
        group_labels = [{self.labels[i] for i in group} for group in self.groups]
        counts = {split: self.splits.count(split) for split in splits}
        return {
            "dataset": self.dataset, "size": self.size, "split": self.split_kind, "threshold": self.threshold,
            "compare_size": COMPARE_SIZE, "images": counts, "pairs": len(self.pairs.rows),
            "pairs_almost_identical": int((self.pairs.correlation >= ALMOST_IDENTICAL).sum()),
            "groups": len(self.groups), "images_in_groups": sum(len(g) for g in self.groups),
            "largest_group": max((len(g) for g in self.groups), default=0),
            "groups_within_one_split": {split: sum(s == {split} for s in group_splits) for split in splits},
            "groups_across_splits": sum(len(s) > 1 for s in group_splits),
            "groups_across_classes": sum(len(labels) > 1 for labels in group_labels),
            "twins_in_train": {split: {"near": self._twins(split, "train", self.threshold),
                                       "almost_identical": self._twins(split, "train", ALMOST_IDENTICAL)}
                               for split in splits if split != "train"},
        }

    def to_dict(self) -> dict:
        pair_of = {}
        for i, j, corr in zip(self.pairs.rows, self.pairs.cols, self.pairs.correlation):
            pair_of[(int(i), int(j))] = round(float(corr), 4)
        groups = []
        for group in self.groups:
            inside = {f"{self.ids[i]}|{self.ids[j]}": corr for (i, j), corr in pair_of.items()
                      if i in group and j in group}
            groups.append({
                "members": [{"id": self.ids[i], "split": self.splits[i], "label": self.class_names[self.labels[i]]}
                            for i in group],
                "splits": sorted({self.splits[i] for i in group}),
                "classes": sorted({self.class_names[self.labels[i]] for i in group}),
                "min_correlation": min(inside.values()), "max_correlation": max(inside.values()),
            })
        return {"summary": self.summary(), "groups": groups}

    def write(self, path: Path) -> Path:
        """The groups as JSON (`.json`) or one CSV row per group member (`.csv`)."""
        path = check_output_file(path, OUTPUT_SUFFIXES)
        content = self.to_dict()
        if path.suffix.lower() == ".csv":
            import pandas as pd

            rows = [{"group": number, **member, "group_splits": "+".join(group["splits"]),
                     "group_classes": "+".join(group["classes"]), "min_correlation": group["min_correlation"]}
                    for number, group in enumerate(content["groups"]) for member in group["members"]]
            text = pd.DataFrame(rows, columns=["group", "id", "split", "label", "group_splits", "group_classes",
                                               "min_correlation"]).to_csv(index=False)
        else:
            text = json.dumps(content, indent=1) + "\n"
        atomic_write_bytes(path, text.encode("utf-8"))
        return path


def check_dataset(name: str, *, size: int | None = None, data_root: str | None = None, split: str | None = None,
                  threshold: float = NEAR_DUPLICATE, split_seed: int = 0) -> DuplicateReport:
    """Near-duplicate groups of a registered dataset's train, val and test images, as its loader splits them.

    `size=None`: the dataset's default size; a dataset that cuts its own split (image folders) is loaded at
    `COMPARE_SIZE` instead, straight from the originals as its grouped split compares them.
    """
    from benchmark.data import dataset_split_kinds, load_dataset

    check_threshold(threshold)
    if size is None and dataset_split_kinds(name):
        size = COMPARE_SIZE
    data = load_dataset(name, size=size, data_root=data_root, split=split, split_seed=split_seed)
    images, ids, splits, labels = [], [], [], []
    for split_name in ("train", "val", "test"):
        part = getattr(data, split_name)
        images.extend(part.images)
        ids.extend(part.ids or [f"{split_name}/{index}" for index in range(len(part))])
        splits.extend([split_name] * len(part))
        labels.extend(int(label) for label in part.labels)
    pairs = find_near_duplicates(images, threshold=threshold)
    kind = (data.split or {}).get("kind")
    return DuplicateReport(name, data.size, threshold, kind, ids, splits, labels, list(data.class_names), pairs)


def format_summary(summary: dict) -> str:
    """The summary as the lines `data-check` prints."""
    images = ", ".join(f"{split} {n}" for split, n in summary["images"].items())
    lines = [
        f"{summary['dataset']} ({summary['size']} px, split {summary['split'] or 'given'}): {images}",
        f"near-duplicate pairs (correlation >= {summary['threshold']} at {summary['compare_size']} px): "
        f"{summary['pairs']} ({summary['pairs_almost_identical']} at >= {ALMOST_IDENTICAL})",
        f"groups: {summary['groups']} holding {summary['images_in_groups']} images (largest {summary['largest_group']}); "
        + ", ".join(f"within {split} only: {n}" for split, n in summary["groups_within_one_split"].items())
        + f"; across splits: {summary['groups_across_splits']}; across classes: {summary['groups_across_classes']}",
    ]
    for split, twins in summary["twins_in_train"].items():
        lines.append(f"{split} images with a near twin in train: {twins['near']} of {summary['images'][split]} "
                     f"({twins['almost_identical']} at >= {ALMOST_IDENTICAL})")
    return "\n".join(lines)
