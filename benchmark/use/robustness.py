"""Corruption robustness of a finished run (MedMNIST-C): its model on the corrupted test split of its dataset.

MedMNIST-C (Di Salvo, Doerrich, Ledig 2024; the `medmnistc` package) defines, per dataset, the corruptions that
its acquisition suffers (BreastMNIST: pixelate, JPEG, speckle noise, motion blur, brightness up / down, contrast
down; RetinaMNIST: 8 kinds), each at 5 severities. For every corruption × severity the run's model scores the
corrupted test images (through `LoadedRun`, i.e. the run's own evaluation transform) and the cell keeps ACC, AUC
and the balanced error (1 − balanced accuracy, threshold 0.5 for binary tasks, argmax otherwise: MedMNIST-C's
error). Then, as MedMNIST-C's `Evaluator` defines them (docs/design.md cites the formulas), per corruption c

    BE_c  = mean_s E_{s,c} / mean_s E^AlexNet_{s,c}
    rBE_c = (mean_s E_{s,c} − E_clean) / (mean_s E^AlexNet_{s,c} − E^AlexNet_clean)

with the AlexNet errors the package ships (`medmnistc.utils.baselines`); `mce` and `relative_mce` are their means
over the corruptions. The breast-ultrasound set (BUSI) gets BreastMNIST's corruption set (same modality) and
BreastMNIST's AlexNet baselines.

Corrupted images are made once per (clean images, corruption, severity, seed) and cached under
`<results>/cache/corruptions/` in a file named by a hash of all of them, so a grid of runs on one dataset makes
them once. The result is the run's record's `robustness` block (`records.add_block`: the rest of the record, its
run id included, stays as it was).
"""

from __future__ import annotations

import hashlib
import io
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np

from benchmark.claims import ClaimLost
from benchmark.errors import UserError
from benchmark.metrics import classification_metrics
from benchmark.records import add_block, atomic_write_bytes, now_iso, read_record
from benchmark.use.loaded import DEFAULT_RESULTS, LoadedRun, find_record, load_run

log = logging.getLogger(__name__)

SEVERITIES = (1, 2, 3, 4, 5)
CELL_METRICS = ("acc", "auc", "balanced_error")
# What a robustness block is made with: two blocks of one run whose cells may be merged agree on all of these.
SETTINGS = ("benchmark", "package", "corruption_set", "seed", "n_test", "image_size", "clean")
# Datasets without a MedMNIST-C set of their own that take another's (same imaging modality).
SAME_MODALITY = {"breast_ultrasound": "breastmnist"}
INSTALL_HINT = ("pip install 'medmnist-benchmark[robustness]' (motion blur also needs ImageMagick: "
                "apt-get install libmagickwand-dev)")


def corruption_set(dataset: str) -> str:
    """The MedMNIST-C corruption set (a MedMNIST dataset name) that `dataset`'s test split goes through."""
    name = SAME_MODALITY.get(dataset, dataset)
    if name not in _registry():
        raise UserError(f"MedMNIST-C defines no corruptions for {dataset}; robustness runs on "
                        f"{', '.join(sorted(set(_registry()) | set(SAME_MODALITY)))}")
    return name


def _registry() -> dict:
    """medmnistc's corruptions by dataset. Its registry imports every corruption module, motion blur's needs
    ImageMagick through `wand`; without it, a registry built from the other modules (motion blur then fails)."""
    try:
        from medmnistc.corruptions.registry import CORRUPTIONS_DS
    except ImportError as err:
        if "medmnistc" in str(err) or not _module_exists("medmnistc"):
            raise UserError(f"robustness needs the medmnistc package, which is not installed; {INSTALL_HINT}") from None
        return _registry_without_imagemagick(err)
    return CORRUPTIONS_DS


def _module_exists(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


class NeedsImageMagick:
    """Stands in for a medmnistc corruption whose module cannot load ImageMagick; applying it says why."""

    reason = ""

    def __init__(self, severity_params):
        self.severity_params = severity_params

    def apply(self, img, severity=-1, augmentation=False):
        raise RuntimeError(f"ImageMagick (wand) cannot be loaded ({self.reason}); apt-get install libmagickwand-dev")


def _registry_without_imagemagick(err: ImportError) -> dict:
    """The registry's table, read with a stand-in for the module that needs ImageMagick (`wand`): its corruptions
    raise the import error when applied, so the record names them as not run and why."""
    import sys
    import types

    NeedsImageMagick.reason = " ".join(str(err).split())[:200]
    stand_in = types.ModuleType("medmnistc.corruptions.filter")
    for name in ("MotionBlur", "DefocusBlur", "ZoomBlur", "GaussianBlur"):
        setattr(stand_in, name, type(name, (NeedsImageMagick,), {}))
    real = sys.modules.get("medmnistc.corruptions.filter")
    sys.modules["medmnistc.corruptions.filter"] = stand_in
    try:
        for module in ("medmnistc.corruptions.registry", "medmnistc.corruptions"):
            sys.modules.pop(module, None)
        from medmnistc.corruptions.registry import CORRUPTIONS_DS
    finally:
        for module in ("medmnistc.corruptions.registry", "medmnistc.corruptions"):
            sys.modules.pop(module, None)
        if real is None:
            sys.modules.pop("medmnistc.corruptions.filter", None)
        else:
            sys.modules["medmnistc.corruptions.filter"] = real
    return CORRUPTIONS_DS


def corruptions(set_name: str) -> dict:
    """Corruption name -> medmnistc corruptor, in the package's order."""
    return dict(_registry()[set_name])


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("medmnistc")
    except PackageNotFoundError:
        return "unknown"


def _apply(corruptor, image, severity: int) -> np.ndarray:
    """One PIL RGB image through one corruptor at MedMNIST-C severity index `severity - 1`.

    medmnistc 0.1.0's MotionBlur cannot run as shipped: it calls `np.fromstring`, removed in NumPy 2, and reads a
    grey image that ImageMagick writes back as one channel only at 224 px. Here the same ImageMagick motion blur
    (same radius, sigma and random angle) is decoded with `np.frombuffer` and a grey result made RGB at any size."""
    if type(corruptor).__name__ != "MotionBlur" or isinstance(corruptor, NeedsImageMagick):
        return np.asarray(corruptor.apply(image, severity - 1))
    import cv2
    from medmnistc.corruptions.filter import MotionImage

    radius, sigma = corruptor.severity_params[severity - 1]
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    blurred = MotionImage(blob=buffer.getvalue())
    blurred.motion_blur(radius=radius, sigma=sigma, angle=np.random.uniform(-45, 45))
    out = cv2.imdecode(np.frombuffer(blurred.make_blob(), np.uint8), cv2.IMREAD_UNCHANGED)
    out = np.repeat(out[..., None], 3, axis=2) if out.ndim == 2 else out[..., [2, 1, 0]]  # grey / BGR -> RGB
    return np.clip(out, 0, 255).astype(np.uint8)


def cell_seed(seed: int, corruption: str, severity: int) -> int:
    """The random state of one corruption × severity (noise, motion-blur angles): fixed by the seed alone."""
    digest = hashlib.sha256(f"{seed}/{corruption}/{severity}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def corrupt(images: np.ndarray, set_name: str, corruption: str, severity: int, seed: int = 0) -> np.ndarray:
    """Stored-format images (uint8 N×H×W×C, C 1 or 3) through one MedMNIST-C corruption at `severity` (1–5; 0
    returns them unchanged), as medmnistc's DatasetManager makes its test sets: each image as RGB through the
    corruptor, grey datasets back to one channel. The caller's NumPy random state is left as it was."""
    if severity == 0:
        return images.copy()
    if severity not in SEVERITIES:
        raise UserError(f"severity must be 0–{SEVERITIES[-1]} (got {severity})")
    from PIL import Image

    corruptor = corruptions(set_name)[corruption]
    state = np.random.get_state()
    np.random.seed(cell_seed(seed, corruption, severity))
    if hasattr(corruptor, "rng"):  # impulse noise draws from its own generator (skimage)
        corruptor.rng = np.random.default_rng(cell_seed(seed, corruption, severity))
    try:
        out = np.empty_like(images)
        for index, pixels in enumerate(images):
            rgb = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).convert("RGB")
            corrupted = _apply(corruptor, rgb, severity)
            if images.shape[-1] == 1:
                corrupted = np.asarray(Image.fromarray(corrupted).convert("L"))[..., None]
            out[index] = corrupted
    finally:
        np.random.set_state(state)
    return out


def corrupted_images(images: np.ndarray, set_name: str, corruption: str, severity: int, seed: int,
                     cache: Path | None) -> np.ndarray:
    """`corrupt(...)`, read from / written to `cache` under a name hashed from the clean images' bytes, the
    corruption, its severity, the seed and the medmnistc version (so another subset or version never hits)."""
    if cache is None or severity == 0:
        return corrupt(images, set_name, corruption, severity, seed)
    digest = hashlib.sha256()
    digest.update(f"{images.shape}|{set_name}|{corruption}|{severity}|{seed}|{package_version()}".encode())
    digest.update(np.ascontiguousarray(images).tobytes())
    path = Path(cache) / set_name / f"{corruption}-s{severity}-{digest.hexdigest()[:20]}.npy"
    if path.is_file():
        try:
            cached = np.load(path, allow_pickle=False)
            if cached.shape == images.shape and cached.dtype == np.uint8:
                return cached
        except (OSError, ValueError):
            pass
        log.warning("ignoring unreadable corruption cache file %s", path)
    out = corrupt(images, set_name, corruption, severity, seed)
    buffer = io.BytesIO()
    np.save(buffer, out, allow_pickle=False)
    atomic_write_bytes(path, buffer.getvalue())
    return out


def cell_metrics(labels: np.ndarray, probs: np.ndarray, task: str) -> dict:
    """ACC, AUC and balanced error (MedMNIST-C's error: 1 − balanced accuracy) of one set of predictions."""
    scores = classification_metrics(labels, probs, task)
    return {"acc": scores["acc"], "auc": scores["auc"], "balanced_error": 1.0 - scores["balanced_acc"]}


def baselines(set_name: str) -> dict | None:
    """MedMNIST-C's AlexNet errors for a corruption set: {"clean_score", "raw_scores": {corruption: mean error}}."""
    from medmnistc.utils.baselines import BASELINES

    return BASELINES.get(set_name)


def summarise(cells: dict[str, list[dict]], clean_error: float, set_name: str) -> dict:
    """Per corruption: mean balanced error over the severities, BE and rBE (normalised by the AlexNet baseline);
    overall: `mce` and `relative_mce` (their means over the corruptions that ran) and the mean raw error."""
    baseline = baselines(set_name) or {}
    per, be, rbe = {}, [], []
    for name, severities in cells.items():
        mean_error = float(np.mean([cell["balanced_error"] for cell in severities]))
        entry = {"severities": severities, "balanced_error": mean_error}
        alexnet = (baseline.get("raw_scores") or {}).get(name)
        if alexnet:
            entry["be"] = mean_error / alexnet
            entry["rbe"] = (mean_error - clean_error) / (alexnet - baseline["clean_score"])
            be.append(entry["be"])
            rbe.append(entry["rbe"])
        per[name] = entry
    return {"corruptions": per,
            "mean_balanced_error": float(np.mean([e["balanced_error"] for e in per.values()])) if per else None,
            "mce": float(np.mean(be)) if be else None, "relative_mce": float(np.mean(rbe)) if rbe else None,
            "baseline": {"model": "AlexNet (MedMNIST-C)", "dataset": set_name, **baseline} if baseline else None}


def block_settings(dataset: str, seed: int) -> dict:
    """The settings of a robustness block known before evaluating (the rest of `SETTINGS` need the test split)."""
    return {"benchmark": "MedMNIST-C", "package": f"medmnistc {package_version()}",
            "corruption_set": corruption_set(dataset), "seed": seed}


def differences(block: dict, settings: dict) -> list[str]:
    """The `SETTINGS` given in `settings` that `block` has otherwise."""
    return [key for key in SETTINGS if key in settings and block.get(key) != settings[key]]


def merged(existing: dict, new: dict) -> dict:
    """`new` (a block of the same settings) plus the corruptions of `existing` it did not evaluate, in the set's
    order; the summary (mCE, relative mCE, mean error) recomputed over all of them."""
    evaluated = set(new["corruptions"]) | set(new["skipped"])
    cells = {name: entry["severities"] for name, entry in existing["corruptions"].items() if name not in evaluated}
    cells.update((name, entry["severities"]) for name, entry in new["corruptions"].items())
    order = list(corruptions(new["corruption_set"]))
    cells = dict(sorted(cells.items(), key=lambda item: order.index(item[0])))
    skipped = {name: why for name, why in existing["skipped"].items() if name not in evaluated} | new["skipped"]
    return {**new, **summarise(cells, new["clean"]["balanced_error"], new["corruption_set"]), "skipped": skipped}


def evaluate(loaded: LoadedRun, *, seed: int = 0, data_root: str | None = None, cache: Path | None = None,
             corruption_names: list[str] | None = None, progress: bool = True) -> dict:
    """The `robustness` block of a loaded run: its clean and corrupted test scores (see the module docstring)."""
    from tqdm.auto import tqdm

    record = loaded.record
    settings = block_settings(record["dataset"]["name"], seed)
    set_name = settings["corruption_set"]
    available = corruptions(set_name)
    names = list(available) if corruption_names is None else corruption_names
    unknown = [name for name in names if name not in available]
    if unknown:
        raise UserError(f"{set_name} has no corruption {', '.join(unknown)}; it has {', '.join(available)}")
    task = record["dataset"].get("task", "multi-class")
    test = loaded.dataset_split("test", data_root=data_root)
    clean = cell_metrics(test.labels, loaded.probabilities(test.images), task)
    recorded = record.get("test") or {}
    matches = all(np.isclose(clean[m], recorded[m], rtol=0, atol=1e-9) for m in ("acc", "auc") if m in recorded)
    if not matches:
        log.warning("%s: the clean test scores now (acc %.4f) differ from its record's (acc %.4f): the weights or "
                    "the data are not the run's", loaded.run_id, clean["acc"], recorded.get("acc", float("nan")))
    cells, skipped = {}, {}
    bar = tqdm(total=len(names) * len(SEVERITIES), desc=f"{loaded.run_id[:40]} corruptions", disable=not progress,
               leave=False)
    for name in names:
        try:
            row = []
            for severity in SEVERITIES:
                images = corrupted_images(test.images, set_name, name, severity, seed, cache)
                row.append({"severity": severity, **cell_metrics(test.labels, loaded.probabilities(images), task)})
                bar.update()
            cells[name] = row
        except (RuntimeError, OSError, ValueError, ImportError, AttributeError, TypeError) as err:
            skipped[name] = f"{type(err).__name__}: {' '.join(str(err).split())[:300]}"
            log.warning("%s: corruption %s could not run: %s", loaded.run_id, name, skipped[name])
            bar.update(len(SEVERITIES) - len(row))
    bar.close()
    return {**settings, "n_test": len(test), "image_size": int(test.images.shape[1]), "clean": clean,
            "clean_matches_record": bool(matches), **summarise(cells, clean["balanced_error"], set_name),
            "skipped": skipped, "created_at": now_iso()}


def record_paths(runs: list[str | Path], results: str | Path = DEFAULT_RESULTS) -> list[Path]:
    """Record files named by run ids, record paths or folders of records."""
    paths: list[Path] = []
    for run in runs:
        folder = Path(run)
        paths += sorted(folder.glob("*.json")) if folder.is_dir() else [find_record(run, results)]
    if not paths:
        raise UserError(f"no run records in {', '.join(map(str, runs))}; give run ids or record paths")
    return paths


def robustness(runs: list[str | Path], *, results: str | Path = DEFAULT_RESULTS, data_root: str | None = None,
               seed: int = 0, force: bool = False, corruption_names: list[str] | None = None,
               progress: bool = True, fence: Callable[[], bool] | None = None) -> list[tuple[Path, dict]]:
    """Evaluate each run and write its record's `robustness` block. A finished block is never lost without `force`:
    corruptions it lacks are evaluated and merged into it (same settings), those it has are kept, and a block made
    with other settings (seed, test split, weights, medmnistc) is kept. With `force` the corruptions asked for are
    evaluated again, merged into a block of the same settings or replacing one of others. Returns (record path,
    block) per run. A record rewritten while its block was computed (a `--force` rerun, another evaluation) is
    left as it is (`records.RecordChanged`); `fence` as in `records.write_record`."""
    results = Path(results)
    done = []
    for path in record_paths(runs, results):
        record = read_record(path)
        if record is None or record["status"] != "completed":
            log.warning("skipping %s: not a completed run", path)
            continue
        existing = record.get("robustness")
        block = _new_block(path, record, results=results, data_root=data_root, seed=seed, force=force,
                           corruption_names=corruption_names, progress=progress)
        if block is None:
            done.append((path, existing))
            continue
        add_block(path, "robustness", block, based_on=record, fence=fence)
        log.info("%s: mCE %s, relative mCE %s → %s", record["run_id"], _fmt(block["mce"]),
                 _fmt(block["relative_mce"]), path)
        done.append((path, block))
    return done


def _new_block(path: Path, record: dict, *, results: Path, data_root: str | None, seed: int, force: bool,
               corruption_names: list[str] | None, progress: bool) -> dict | None:
    """The robustness block to write for one run, or None to keep the one it has (see `robustness`)."""
    existing = record.get("robustness")
    settings = block_settings(record["dataset"]["name"], seed)
    names = corruption_names or list(corruptions(settings["corruption_set"]))
    if existing and not force:
        if differ := differences(existing, settings):
            _warn_kept(path, existing, differ)
            return None
        names = [name for name in names if name not in existing["corruptions"] and name not in existing["skipped"]]
        if not names:
            log.info("%s: its robustness block (seed %s) has these corruptions already; --force evaluates them "
                     "again", path.name, seed)
            return None
    block = evaluate(load_run(path, results), seed=seed, data_root=data_root,
                     cache=path.parents[2] / "cache" / "corruptions", corruption_names=names, progress=progress)
    differ = differences(existing, block) if existing else []
    if differ and not force:
        _warn_kept(path, existing, differ)
        return None
    return merged(existing, block) if existing and not differ else block


def _warn_kept(path: Path, existing: dict, differ: list[str]) -> None:
    log.warning("%s: kept its robustness block (seed %s): this evaluation differs in %s; --force replaces it",
                path.name, existing.get("seed"), ", ".join(differ))


def after_run(record: Path, results: Path, data_root: str | None = None, fence: Callable[[], bool] | None = None
              ) -> None:
    """The suite option `robustness: true`: evaluate a run the grid just finished, under its claim (`fence`); a
    problem is a warning (the run itself is done and recorded)."""
    try:
        robustness([record], results=results, data_root=data_root, progress=False, fence=fence)
    except (UserError, ClaimLost) as err:
        log.warning("robustness of %s not evaluated: %s", Path(record).stem, err)


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def summary_table(done: list[tuple[Path, dict]]) -> str:
    """One line per run: clean balanced error, mean corrupted error, mCE, relative mCE, skipped corruptions."""
    lines = [f"{'run':<48} {'clean BE':>8} {'mean BE':>8} {'mCE':>6} {'rel mCE':>7}  skipped"]
    for path, block in done:
        lines.append(f"{path.stem:<48} {block['clean']['balanced_error']:>8.3f} "
                     f"{_fmt(block['mean_balanced_error']):>8} {_fmt(block['mce']):>6} "
                     f"{_fmt(block['relative_mce']):>7}  {', '.join(block.get('skipped') or {}) or '-'}")
    return "\n".join(lines)
