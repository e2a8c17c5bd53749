"""A suite (`benchmark.suites.SuiteFile`) → validated, fully resolved run specs (one per dataset × model × seed),
each with a hash. The suite file format is described in `benchmark.suites`; here the registries check dataset and
model names, recipes become `Recipe`s and the CLI's filters and overrides apply."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field, fields, replace
from functools import cached_property
from pathlib import Path

from benchmark.data import data_variant, dataset_sizes, dataset_split_kinds
from benchmark.data.subsets import check_subset, subset_tag
from benchmark.data.transforms import RESIZES, UPSAMPLES
from benchmark.errors import UserError
from benchmark.metrics import CALIBRATIONS
from benchmark.models import ModelSpec, list_models, resolve_model
from benchmark.schemes import SchemeSpec, check_scheme_fits, parse_scheme
from benchmark.schemes.spec import check_batch_fits
from benchmark.suites import SEED_RANGE, check_keys, find_suite, read_suite

RESNET_ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("cosine", "multistep", "constant")
AUGMENTATIONS = ("none", "tutorial")
MIXED_PRECISION = ("auto", "no", "bf16", "fp16")
SELECTION_METRICS = ("auc", "acc", "balanced_acc", "f1_macro", "loss")
IMBALANCE = ("none", "balanced")


@dataclass(frozen=True)
class Recipe:
    """How one model is trained. Defaults follow the ViT fine-tuning tutorials."""

    optimizer: str = "adamw"
    lr: float = 2e-5
    weight_decay: float = 0.01
    momentum: float = 0.9  # sgd only
    schedule: str = "cosine"
    warmup_ratio: float = 0.1  # cosine: fraction of optimizer steps spent warming up linearly
    milestones: tuple[float, ...] = (0.5, 0.75)  # multistep: fractions of the epochs
    gamma: float = 0.1  # multistep: lr factor at each milestone
    epochs: int = 10
    batch_size: int = 32
    eval_batch_size: int = 0  # 0 = 2 × batch_size
    grad_accum_steps: int = 1
    max_grad_norm: float = 0.0  # 0 = no clipping
    augment: str = "tutorial"
    mixed_precision: str = "auto"  # auto = bf16 on a GPU that supports it, else full precision
    selection_metric: str = "auc"  # validation metric that picks the best epoch (MedMNIST v2: AUC)
    early_stopping_patience: int = 0  # 0 = off; else stop after this many epochs without improvement
    compile: bool = False  # torch.compile the model
    # Class imbalance: "balanced" = cross-entropy weights n / (n_classes × count) from the training labels
    # (scikit-learn's formula); sampler "balanced" = each batch drawn with replacement, every class equally likely.
    class_weights: str = "none"
    sampler: str = "none"
    calibrate: str = "none"  # "temperature": fit a temperature on validation, record test calibration before/after
    # Several processes training a model with BatchNorm: normalise with the statistics of the whole batch across
    # processes (as one process would), not each process's shard (benchmark.distributed.SyncBatchNorm).
    sync_batchnorm: bool = True

    def validate(self, where: str) -> None:
        _check_choice(self.optimizer, OPTIMIZERS, f"{where}.optimizer")
        _check_choice(self.schedule, SCHEDULES, f"{where}.schedule")
        _check_choice(self.augment, AUGMENTATIONS, f"{where}.augment")
        _check_choice(self.mixed_precision, MIXED_PRECISION, f"{where}.mixed_precision")
        _check_choice(self.selection_metric, SELECTION_METRICS, f"{where}.selection_metric")
        _check_choice(self.class_weights, IMBALANCE, f"{where}.class_weights")
        _check_choice(self.sampler, IMBALANCE, f"{where}.sampler")
        _check_choice(self.calibrate, CALIBRATIONS, f"{where}.calibrate")
        for name in ("lr", "epochs", "batch_size", "grad_accum_steps"):
            if not 0 < getattr(self, name) < math.inf:
                raise UserError(f"{where}.{name} must be > 0 and finite (got {getattr(self, name)}); fix it in the "
                                f"suite file")
        for name in ("weight_decay", "eval_batch_size", "max_grad_norm", "early_stopping_patience"):
            if getattr(self, name) < 0:
                raise UserError(f"{where}.{name} must be >= 0 (got {getattr(self, name)}); fix it in the suite file")
        if not 0 <= self.warmup_ratio < 1:
            raise UserError(f"{where}.warmup_ratio must be in [0, 1) (got {self.warmup_ratio}); fix it in the suite file")
        if not all(0 < m < 1 for m in self.milestones) or list(self.milestones) != sorted(set(self.milestones)):
            raise UserError(f"{where}.milestones must be increasing fractions of the epochs in (0, 1) "
                            f"(got {list(self.milestones)}); fix it in the suite file")
        if not 0 < self.gamma <= 1 or not 0 <= self.momentum < 1:
            raise UserError(f"{where}: gamma must be in (0, 1] and momentum in [0, 1); fix it in the suite file")


@dataclass(frozen=True)
class RunSpec:
    """One training run, fully resolved. Its hash (config_hash) identifies the run across restarts."""

    suite: str
    dataset: str
    size: int
    model: ModelSpec
    recipe: Recipe
    seed: int
    limit: int = 0  # 0 = full splits; N = first N images of each split
    split: str | None = None  # how the loader cuts splits it has to make (image folders); None: the files fix them
    data_root: str | None = field(default=None, compare=False)
    download: bool = field(default=False, compare=False)
    scheme: SchemeSpec = field(default_factory=SchemeSpec)
    train_fraction: float = 1.0  # label efficiency: this stratified, seeded, nested fraction of the training split
    shots_per_class: int = 0  # ... or this many training images per class (0 = off)

    def to_dict(self) -> dict:
        return asdict(self)

    @cached_property  # once per spec: an unchecked data folder is listed to name it (`data_variant`)
    def config_hash(self) -> str:
        """SHA-256 of what determines the result: not where the data lives, nor the suite's name."""
        identity = {k: v for k, v in self.to_dict().items() if k not in ("suite", "data_root", "download")}
        identity["model"].pop("description", None)
        for key, default in HASH_NEUTRAL_MODEL_DEFAULTS.items():
            if identity["model"].get(key) == default:
                identity["model"].pop(key)
        for key, default in HASH_NEUTRAL_RECIPE_DEFAULTS.items():
            if identity["recipe"].get(key) == default:
                identity["recipe"].pop(key)
        if self.scheme.is_default:
            identity.pop("scheme")
        for key, default in (("train_fraction", 1.0), ("shots_per_class", 0)):  # the full split: hash as before
            if identity[key] == default:
                identity.pop(key)
        if identity["split"] in (None, "random"):  # records from before split kinds cut randomly
            identity.pop("split")
        if variant := data_variant(self.dataset, self.data_root, self.download):
            identity["data"] = variant
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()

    @property
    def run_id(self) -> str:
        scheme = "" if self.scheme.is_default else f"-{self.scheme.name}"
        subset = subset_tag(self.train_fraction, self.shots_per_class)
        return (f"{self.dataset}-{self.size}-{self.model.name}{scheme}{'-' + subset if subset else ''}-s{self.seed}-"
                f"{self.config_hash[:8]}")


@dataclass(frozen=True)
class Suite:
    name: str
    path: Path
    runs: list[RunSpec]
    launcher: dict = field(default_factory=dict)  # `benchmark submit` defaults (suites.LAUNCHER_KEYS)
    robustness: bool = False  # evaluate each finished run on MedMNIST-C (benchmark.use.robustness.after_run)


def _check_choice(value, choices, where: str) -> None:
    if value not in choices:
        raise UserError(f"{where}: '{value}' is not one of {', '.join(map(str, choices))}")


def _typed(cls, values: dict, where: str):
    """Build dataclass `cls` from `values`, checking key names and value types against the defaults."""
    if not isinstance(values, dict):
        raise UserError(f"{where}: expected a mapping of {cls.__name__.lower()} fields, got {values!r}; "
                        f"fix it in the suite file")
    check_keys(values, {f.name for f in fields(cls)}, where)
    defaults = cls()
    converted = {}
    for key, value in values.items():
        default = getattr(defaults, key)
        try:
            if isinstance(value, bool) != isinstance(default, bool):
                raise TypeError
            if isinstance(default, tuple):
                value = tuple(float(v) for v in value)
            elif isinstance(default, float):
                value = float(value)  # YAML 1.1 reads `1e-3` (no dot) as a string
            elif isinstance(default, int) and not isinstance(value, int):
                raise TypeError
            elif isinstance(default, str) and not isinstance(value, str):
                raise TypeError
        except (TypeError, ValueError):
            raise UserError(f"{where}.{key}: {value!r} is not a valid {type(default).__name__}") from None
        converted[key] = value
    return replace(defaults, **converted)


MODEL_ENTRY_KEYS = {"name", "recipe", "source", "family", "pretrained", "input_size", "upsample", "in_channels",
                    "init", "published_as", "resize", "scheme"}
MODEL_ENTRY_TYPES = {"source": str, "family": str, "pretrained": bool, "input_size": int, "upsample": str,
                     "in_channels": int, "init": str, "published_as": str, "resize": str}
RESNET_INITS = ("torchvision", "pytorch_default")
# ModelSpec and Recipe fields added after the first records were written: left out of the hash at their
# defaults, so those records keep their run ids (the scheme likewise, when it is finetune).
HASH_NEUTRAL_MODEL_DEFAULTS = {f.name: f.default for f in fields(ModelSpec) if f.name in ("upsample", "in_channels",
                                                                                       "init", "resize")}
HASH_NEUTRAL_RECIPE_DEFAULTS = {f.name: f.default for f in fields(Recipe) if f.name in ("class_weights", "sampler",
                                                                                          "calibrate", "sync_batchnorm")}
RESNET_ONLY_FIELDS = ("in_channels", "init")


def _check_model_entry(entry: dict, where: str) -> None:
    """Types of a model entry's optional fields, and its family (a preset's family cannot be made up)."""
    for key, kind in MODEL_ENTRY_TYPES.items():
        value = entry.get(key)
        if value is not None and (not isinstance(value, kind) or (kind is int and isinstance(value, bool))):
            raise UserError(f"{where}.{key}: {value!r} is not a valid {kind.__name__}; fix it in the suite file")
    if "family" in entry:
        _check_choice(entry["family"], sorted({spec.family for spec in list_models().values()}), f"{where}.family")


def load_suite(
    name_or_path: str,
    *,
    datasets: list[str] | None = None,
    models: list[str] | None = None,
    seeds: list[int] | None = None,
    epochs: int | None = None,
    batch_size: int | None = None,
    limit: int | None = None,
    data_root: str | None = None,
    download: bool | None = None,
) -> Suite:
    """Parse, validate and expand a suite; the keyword arguments are the CLI's filters and overrides (None: the
    suite's own value). `epochs` and `batch_size` replace every recipe's, so they change the run hash."""
    check_overrides(seeds=seeds, epochs=epochs, batch_size=batch_size, limit=limit)
    parsed = read_suite(find_suite(name_or_path))
    path = parsed.path
    overrides = {key: value for key, value in (("epochs", epochs), ("batch_size", batch_size)) if value is not None}

    recipes = {}
    for recipe_name, values in parsed.recipes.items():
        recipe = replace(_typed(Recipe, values or {}, f"{path.name}: recipes.{recipe_name}"), **overrides)
        recipe.validate(f"{path.name}: recipes.{recipe_name}")
        recipes[recipe_name] = recipe

    dataset_entries = []
    for entry in parsed.datasets:
        name, size = entry["name"], entry["size"]
        try:
            _, sizes = dataset_sizes(name)
        except UserError as err:
            raise UserError(f"{path.name}: {err}") from None
        _check_choice(size, sizes, f"{path.name}: datasets.{name}.size")
        kinds = dataset_split_kinds(name)
        if "split" in entry and not kinds:
            raise UserError(f"{path.name}: datasets.{name}.split: {name} comes with its own splits; remove `split:`")
        split = entry.get("split", kinds[0] if kinds else None)
        if kinds:
            _check_choice(split, kinds, f"{path.name}: datasets.{name}.split")
        dataset_entries.append((name, size, split))

    run_limit = limit if limit is not None else parsed.limit
    if not isinstance(run_limit, int) or isinstance(run_limit, bool) or run_limit < 0:
        raise UserError(f"limit must be an integer >= 0 (got {run_limit!r}); fix --limit or the suite's `limit:`")

    model_entries = []
    for entry in map(dict, parsed.models):
        where = f"{path.name}: models.{entry['name']}"
        check_keys(entry, MODEL_ENTRY_KEYS, where)
        _check_model_entry(entry, where)
        recipe_ref = entry.pop("recipe", None)
        scheme = parse_scheme(entry.pop("scheme", None), f"{where}.scheme")
        entry.pop("published_as", None)  # read by the reporting layer only: which published rows it reproduces
        if isinstance(recipe_ref, dict):
            recipe = replace(_typed(Recipe, recipe_ref, f"{where}.recipe"), **overrides)
            recipe.validate(f"{where}.recipe")
        elif recipe_ref is None:  # the default recipe, with the CLI's overrides as a named one gets them
            recipe = replace(Recipe(), **overrides)
            recipe.validate(f"{where}.recipe")
        elif recipe_ref in recipes:
            recipe = recipes[recipe_ref]
        else:
            raise UserError(f"{where}: recipe '{recipe_ref}' is not defined under `recipes:` ({', '.join(recipes) or 'none'})")
        spec = resolve_model(entry.pop("name"), **entry)
        if spec.input_size is not None and (type(spec.input_size) is not int or spec.input_size <= 0):
            raise UserError(f"{where}.input_size must be a positive integer (got {spec.input_size!r})")
        if spec.family == "resnet" and (spec.input_size is None or spec.source not in RESNET_ARCHS):
            raise UserError(f"{where}: a resnet entry needs `input_size:` and `source:` one of {', '.join(RESNET_ARCHS)}")
        _check_choice(spec.upsample, UPSAMPLES, f"{where}.upsample")
        _check_choice(spec.resize, RESIZES, f"{where}.resize")
        if spec.resize == "pad" and recipe.augment != "none":
            raise UserError(f"{where}: resize: pad works with augment: none only; set augment: none in its recipe")
        check_scheme_fits(scheme, spec.family, limit=run_limit,
                          imbalance=(recipe.class_weights, recipe.sampler) != ("none", "none"), where=where)
        if spec.family == "resnet":
            _check_choice(spec.init, RESNET_INITS, f"{where}.init")
            if spec.in_channels not in (None, 1, 3):
                raise UserError(f"{where}.in_channels: {spec.in_channels!r} is not 1 or 3; or leave it out "
                                "to use the dataset's own channels")
        elif any(getattr(spec, key) != HASH_NEUTRAL_MODEL_DEFAULTS[key] for key in RESNET_ONLY_FIELDS):
            raise UserError(f"{where}: `in_channels:` and `init:` apply to resnet models only; remove them")
        model_entries.append((spec, recipe, scheme))
    suite_name = parsed.name

    selected_datasets = _select(dataset_entries, datasets, lambda e: e[0], "dataset", path.name)
    selected_models = _select(model_entries, models, lambda e: e[0].name, "model", path.name)
    selected_seeds = list(seeds) if seeds is not None else list(parsed.seeds)
    for spec, recipe, scheme in selected_models if run_limit else ():  # the limit bounds every train split
        check_batch_fits(scheme, recipe.batch_size, run_limit, f"{path.name}: models.{spec.name} (limit {run_limit})",
                         " or a larger --limit")

    root = data_root if data_root is not None else parsed.data_root
    fetch = download if download is not None else parsed.download
    for fraction in parsed.train_fractions:
        check_subset(fraction, 0, f"{path.name}: train_fractions")
    for shots in parsed.shots_per_class:
        check_subset(1.0, shots, f"{path.name}: shots_per_class")
        if shots == 0:  # 0 means "off" to a run, which would quietly be the full split
            raise UserError(f"{path.name}: shots_per_class must be an integer >= 1 (got 0); fix it in the suite file")
    subsets = [(float(f), 0) for f in parsed.train_fractions] + [(1.0, k) for k in parsed.shots_per_class]
    runs = [
        RunSpec(suite_name, ds, size, spec, recipe, seed, run_limit, split, root, fetch, scheme=scheme,
                train_fraction=fraction, shots_per_class=shots)
        for ds, size, split in selected_datasets
        for spec, recipe, scheme in selected_models
        for fraction, shots in dict.fromkeys(subsets or [(1.0, 0)])
        for seed in selected_seeds
    ]
    if not runs:
        raise UserError(f"{path.name}: the grid is empty; check the suite's datasets, models and seeds and the filters")
    return Suite(suite_name, path, runs, dict(parsed.launcher), robustness=parsed.robustness)


def check_overrides(*, seeds: list[int] | None, epochs: int | None, batch_size: int | None,
                    limit: int | None) -> None:
    """The CLI's overrides, each refused in one line naming its flag: seeds in SEED_RANGE, the rest >= 1 (leave
    one out, None, for the suite's own value)."""
    low, high = SEED_RANGE
    for seed in seeds or ():
        if not low <= seed <= high:
            raise UserError(f"--seeds: {seed} is not a seed; use integers from {low} to {high}")
    if seeds and len(set(seeds)) < len(seeds):
        raise UserError(f"--seeds lists a seed more than once ({','.join(map(str, seeds))}); list each seed once")
    for flag, value in (("--epochs", epochs), ("--batch-size", batch_size), ("--limit", limit)):
        if value is not None and value < 1:
            hint = "; leave --limit out for the full splits" if flag == "--limit" else ""
            raise UserError(f"{flag} must be >= 1 (got {value}){hint}")


def _select(entries: list, wanted: list | None, key, what: str, where: str) -> list:
    """Keep the entries whose key is in `wanted` (all when None); unknown wanted names are an error."""
    if wanted is None:
        return entries
    keys = [key(e) for e in entries]
    for name in wanted:
        if name not in keys:
            raise UserError(f"--{what}s: '{name}' is not in suite {where} (it has: {', '.join(map(str, dict.fromkeys(keys)))})")
    return [e for e in entries if key(e) in wanted]
