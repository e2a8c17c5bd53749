"""Suite files as plain data: find them, read their YAML, check its shape, fill the defaults. No torch.

`benchmark.config` turns a `SuiteFile` into validated run specs (registries, recipes, the run hash); the reporting
layer reads the planned grid (datasets at their sizes × models × seeds, `published_as`) from the same object.

```yaml
name: smoke                      # defaults to the file name
data_root: bundled               # optional; --data-root overrides
seeds: [0, 1, 2]                 # default [0]
recipes:                         # named training recipes (fields of `benchmark.config.Recipe`)
  v2: {optimizer: adam, lr: 1.0e-3, schedule: multistep, epochs: 100, batch_size: 128}
datasets:                        # a name (its default size: 28, breast_ultrasound 224) or {name, size, split}
  - breastmnist
  - {name: breast_ultrasound, size: 224}   # split: grouped (default, leakage-free) or random
models:                          # a preset name, or {name, recipe, source, pretrained, input_size, family, ...}
  - {name: resnet18_28, recipe: v2, published_as: resnet18_28}
train_fractions: [0.01, 0.1, 1.0] # optional label-efficiency axis: stratified, seeded, nested training subsets
shots_per_class: [1, 5, 10]      # optional, the same by images per class (both lists: both kinds of runs)
robustness: true                 # optional: evaluate every finished run on MedMNIST-C (`benchmark robustness`)
```
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from benchmark.errors import UserError

# The shipped suites: the checkout's top-level suites/ folder, which a wheel carries as `benchmark.shipped_suites`
# (see setup.py): one source of truth for both.
_PACKAGE = Path(__file__).resolve().parent
SUITES_DIR = next((d for d in (_PACKAGE / "shipped_suites", _PACKAGE.parent / "suites") if d.is_dir()),
                  _PACKAGE / "shipped_suites")
#: image size of a dataset named in a suite without `size:` (the dataset registry registers the same defaults)
DEFAULT_SIZE = 28
DEFAULT_SIZES: dict[str, int] = {"breast_ultrasound": 224}

SEED_RANGE = (0, 2**32 - 1)  # what numpy's and torch's seeding accept
SUITE_KEYS = {"name", "description", "data_root", "download", "seeds", "limit", "recipes", "datasets", "models",
              "launcher", "train_fractions", "shots_per_class", "robustness"}
# `launcher:` — job settings for `benchmark submit` (its options of the same names override them)
LAUNCHER_KEYS = {"executor", "partition", "time", "gpus_per_task", "cpus_per_task", "mem", "account", "qos",
                 "array_parallelism", "tasks", "processes_per_task", "sbatch"}
DATASET_ENTRY_KEYS = {"name", "size", "split"}  # split: image folders only (checked in config)


RANDOM_SPLIT_SUFFIX = " (random split)"


def test_set_name(dataset: str, split: str | None) -> str:
    """How the reports name a dataset's test set: the dataset, with " (random split)" where an image folder was
    cut at random instead of by its default leakage-free (grouped) split, so the two never share a cell."""
    return dataset + RANDOM_SPLIT_SUFFIX if split == "random" else dataset


def subset_label(train_fraction: float = 1.0, shots_per_class: int = 0) -> str:
    """What a subset adds to the record's `scheme` (so tables keep its runs in rows of their own): '' for the
    full split, ' (5% labels)' or ' (10 per class)'."""
    if shots_per_class:
        return f" ({shots_per_class} per class)"
    return "" if train_fraction == 1.0 else f" ({train_fraction * 100:g}% labels)"


def default_size(dataset: str) -> int:
    return DEFAULT_SIZES.get(dataset, DEFAULT_SIZE)


def suite_folders() -> list[Path]:
    """Where suites are looked up by name, in order: ./suites/ (the user's own), then the shipped ones (the one
    lookup: config, the CLI and the reports all go through it)."""
    return [Path("suites"), SUITES_DIR]


def list_suites() -> list[str]:
    return sorted({p.stem for folder in suite_folders() for p in folder.glob("*.yaml")})


def suite_file(name: str, folder: Path | str | None = None) -> Path | None:
    """`<name>.yaml` in `folder` (None: the `suite_folders()`), or None when there is none."""
    folders = [Path(folder)] if folder is not None else suite_folders()
    return next((path for path in (f / f"{name}.yaml" for f in folders) if path.is_file()), None)


def find_suite(name_or_path: str | Path) -> Path:
    """A suite by path, or by name from the `suite_folders()`; a UserError with suggestions otherwise."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    found = suite_file(str(name_or_path))
    if found is not None:
        return found
    known = list_suites()
    close = difflib.get_close_matches(str(name_or_path), known, n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    raise UserError(f"unknown suite '{name_or_path}'; {hint}available: {', '.join(known) or 'none'} "
                    f"(or give a YAML path)")


def check_keys(mapping: dict, allowed, where: str) -> None:
    for key in mapping:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), list(allowed), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f"; allowed: {', '.join(sorted(allowed))}"
            raise UserError(f"{where}: unknown key '{key}'{hint}")


def _section(raw: dict, key: str, kind: type, where: str):
    """`raw[key]` (empty when absent), checked to be a YAML list or mapping."""
    value = raw.get(key) or kind()
    if not isinstance(value, kind):
        shape = "a list" if kind is list else "a mapping"
        raise UserError(f"{where}: `{key}:` must be {shape}, got {type(value).__name__}; fix it in the suite file")
    return value


def _entry(item, where: str) -> dict:
    """A dataset or model entry as a mapping with a string `name`."""
    if isinstance(item, str):
        return {"name": item}
    if isinstance(item, dict) and isinstance(item.get("name"), str):
        return dict(item)
    raise UserError(f"{where}: each entry is a name or a mapping with a `name:`")


@dataclass(frozen=True)
class SuiteFile:
    """A suite file's content, checked for shape, defaults filled (entries are plain mappings)."""

    path: Path
    name: str
    seeds: tuple[int, ...]
    datasets: tuple[dict, ...]  # {"name", "size"}; size filled with the dataset's default
    models: tuple[dict, ...]  # {"name", ...}: the entry as written
    recipes: dict[str, dict] = field(default_factory=dict)
    description: str | None = None
    data_root: str | None = None
    download: bool = False
    limit: int = 0
    launcher: dict = field(default_factory=dict)  # LAUNCHER_KEYS; checked for values by benchmark.launch
    train_fractions: tuple = ()  # label-efficiency axis (values checked in config)
    shots_per_class: tuple = ()
    robustness: bool = False

    @property
    def dataset_sizes(self) -> tuple[tuple[str, int], ...]:
        return tuple((test_set_name(d["name"], d.get("split")), d["size"]) for d in self.datasets)

    @property
    def model_names(self) -> tuple[str, ...]:
        return tuple(m["name"] for m in self.models)

    @property
    def published_as(self) -> tuple[tuple[str, str], ...]:
        """(model, published model whose reference rows it reproduces), for each entry that says so."""
        return tuple((m["name"], m["published_as"]) for m in self.models if isinstance(m.get("published_as"), str))


def read_suite(path: Path | str) -> SuiteFile:
    """Parse one suite file; a one-line UserError names what is wrong with its shape."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise UserError(f"{path}: malformed YAML{at}; fix the syntax") from None
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"cannot read suite file {path}: {err}") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: a suite must be a YAML mapping with datasets, models and seeds")
    check_keys(raw, SUITE_KEYS, str(path))

    datasets = []
    for item in _section(raw, "datasets", list, path.name):
        entry = _entry(item, f"{path.name}: datasets")
        check_keys(entry, DATASET_ENTRY_KEYS, f"{path.name}: datasets.{entry['name']}")
        size = entry.setdefault("size", default_size(entry["name"]))
        if type(size) is not int:
            raise UserError(f"{path.name}: datasets.{entry['name']}.size: {size!r} is not an integer")
        datasets.append(entry)
    models = tuple(_entry(item, f"{path.name}: models") for item in _section(raw, "models", list, path.name))
    recipes = _section(raw, "recipes", dict, path.name)

    seeds = raw.get("seeds", [0])
    if not isinstance(seeds, list) or not all(type(s) is int and SEED_RANGE[0] <= s <= SEED_RANGE[1] for s in seeds):
        raise UserError(f"{path.name}: seeds must be a list of integers from {SEED_RANGE[0]} to {SEED_RANGE[1]}, "
                        f"e.g. [0, 1, 2]")
    limit = raw.get("limit") or 0
    if type(limit) is not int or limit < 0:
        raise UserError(f"{path.name}: limit must be an integer >= 0 (got {limit!r}); fix the suite's `limit:`")
    axes = {key: tuple(_section(raw, key, list, path.name)) for key in ("train_fractions", "shots_per_class")}
    if len(set(seeds)) < len(seeds):
        raise UserError(f"{path.name}: seeds lists {sorted({s for s in seeds if seeds.count(s) > 1})} more than once; "
                        f"list each seed once")
    for key in ("robustness", "download"):
        if not isinstance(raw.get(key, False), bool):
            raise UserError(f"{path.name}: {key} must be true or false (got {raw[key]!r})")
    launcher = _section(raw, "launcher", dict, path.name)
    check_keys(launcher, LAUNCHER_KEYS, f"{path.name}: launcher")
    return SuiteFile(path=path, name=str(raw.get("name", path.stem)), seeds=tuple(seeds), datasets=tuple(datasets),
                     models=models, recipes=dict(recipes), description=raw.get("description"),
                     data_root=raw.get("data_root"), download=raw.get("download", False), limit=limit,
                     launcher=dict(launcher), **axes, robustness=raw.get("robustness", False))
