"""Which training scheme a suite model entry uses, with its options: parsed and checked without torch.

```yaml
models:
  - {name: vit_b16, scheme: linear_probe}
  - {name: vit_b16, scheme: {name: knn, k: 11, distance: euclidean}}
  - {name: vit_b16, scheme: {name: lora, rank: 8, alpha: 16, dropout: 0.1, target_modules: [query, value]}}
  - {name: vit_b16, scheme: {name: gradual_unfreeze, epochs_per_stage: 2, blocks_per_stage: 1, lr_decay: 0.75}}
```

A spec holds every option resolved (defaults filled in), so a run's hash says exactly what ran.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field

from benchmark.errors import UserError

FINETUNE = "finetune"
DISTANCES = ("euclidean", "cosine")
# MedMNIST+: k = 11. The LoRA paper: the query and value projections (transformers 4 ViT names, then the
# q_proj/v_proj of transformers 5 ViTs and of CLIP).
SCHEME_DEFAULTS: dict[str, dict] = {
    FINETUNE: {},
    "linear_probe": {},
    "knn": {"k": 11, "distance": "euclidean"},
    "gradual_unfreeze": {"epochs_per_stage": 1, "blocks_per_stage": 1, "lr_decay": 0.75},
    "lora": {"rank": 8, "alpha": 16.0, "dropout": 0.1, "target_modules": ["query", "value", "q_proj", "v_proj"]},
}
SCHEMES = tuple(SCHEME_DEFAULTS)
FROZEN_BACKBONE = ("linear_probe", "knn")  # fitted on cached embeddings of a frozen backbone
NO_GRADIENT_STEPS = ("knn",)  # nothing trains: the recipe's batch_size only sets how many images are embedded at once


@dataclass(frozen=True)
class SchemeSpec:
    name: str = FINETUNE
    options: dict = field(default_factory=dict)

    @property
    def is_default(self) -> bool:
        return self.name == FINETUNE

    def option(self, key: str):
        return self.options[key]


def record_scheme(scheme: SchemeSpec, pretrained: bool) -> str:
    """The record's `scheme` field: the values older records carry for fine-tuning ("fine_tune" for pretrained
    weights, "from_scratch" for a random init), else the scheme's own name."""
    if scheme.is_default:
        return "fine_tune" if pretrained else "from_scratch"
    return scheme.name


def _check_type(value, default, where: str):
    if isinstance(value, bool) != isinstance(default, bool):
        raise UserError(f"{where}: {value!r} is not a valid {type(default).__name__}; fix it in the suite file")
    if isinstance(default, float) and isinstance(value, (int, float)):
        return float(value)
    if isinstance(default, list):
        if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
            raise UserError(f"{where}: expected a non-empty list of module names, got {value!r}; fix it in the "
                            f"suite file")
        return list(value)
    if type(value) is not type(default):
        raise UserError(f"{where}: {value!r} is not a valid {type(default).__name__}; fix it in the suite file")
    return value


def parse_scheme(raw, where: str) -> SchemeSpec:
    """A scheme from a suite entry: a name, or a mapping with `name:` and that scheme's options."""
    if raw is None:
        return SchemeSpec()
    values = {"name": raw} if isinstance(raw, str) else dict(raw) if isinstance(raw, dict) else None
    if values is None or not isinstance(values.get("name"), str):
        raise UserError(f"{where}: a scheme is a name or a mapping with `name:` (one of {', '.join(SCHEMES)})")
    name = values.pop("name")
    if name not in SCHEME_DEFAULTS:
        close = difflib.get_close_matches(name, SCHEMES, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise UserError(f"{where}: unknown scheme '{name}'; {hint}use one of {', '.join(SCHEMES)}")
    defaults = SCHEME_DEFAULTS[name]
    options = {}
    for key, value in values.items():
        if key not in defaults:
            allowed = ", ".join(defaults) or "none"
            raise UserError(f"{where}: scheme {name} has no option '{key}' (its options: {allowed}); fix the suite file")
        options[key] = _check_type(value, defaults[key], f"{where}.{key}")
    resolved = {**defaults, **options}
    _check_values(name, resolved, where)
    return SchemeSpec(name, resolved)


def _check_values(name: str, options: dict, where: str) -> None:
    positive = {"knn": ("k",), "gradual_unfreeze": ("epochs_per_stage", "blocks_per_stage"), "lora": ("rank",)}
    for key in positive.get(name, ()):
        if options[key] < 1:
            raise UserError(f"{where}.{key} must be >= 1 (got {options[key]}); fix it in the suite file")
    if name == "knn" and options["distance"] not in DISTANCES:
        raise UserError(f"{where}.distance: '{options['distance']}' is not one of {', '.join(DISTANCES)}")
    if name == "gradual_unfreeze" and not 0 < options["lr_decay"] <= 1:
        raise UserError(f"{where}.lr_decay must be in (0, 1] (got {options['lr_decay']}); fix it in the suite file")
    if name == "lora" and (options["alpha"] <= 0 or not 0 <= options["dropout"] < 1):
        raise UserError(f"{where}: lora alpha must be > 0 and dropout in [0, 1); fix it in the suite file")


def takes_gradient_steps(scheme: SchemeSpec) -> bool:
    """Whether the scheme trains in batches of the recipe's batch_size (so a batch must fit the train split)."""
    return scheme.name not in NO_GRADIENT_STEPS


def check_batch_fits(scheme: SchemeSpec, batch_size: int, n_train: int, where: str, fix: str = "") -> None:
    """A training batch larger than the train split (`where` names the split's dataset or suite entry; `fix`: a
    further remedy) is refused in one line naming --batch-size; schemes without gradient steps never are."""
    if takes_gradient_steps(scheme) and batch_size > n_train:
        raise UserError(f"{where}: batch_size {batch_size} is larger than the {n_train}-image train split; pass "
                        f"--batch-size {n_train}{fix} (or lower batch_size in the suite's recipe)")


def check_scheme_fits(scheme: SchemeSpec, family: str, *, limit: int, imbalance: bool, where: str) -> None:
    """Refuse at suite load the combinations that cannot work (one line each)."""
    if scheme.name == "lora" and family != "hf":
        raise UserError(f"{where}: scheme lora needs attention layers (a Hugging Face ViT); a {family} model has "
                        f"none — use finetune, gradual_unfreeze, linear_probe or knn for it")
    if scheme.name == "knn" and limit and scheme.option("k") > limit:
        raise UserError(f"{where}: knn k = {scheme.option('k')} is larger than the {limit}-image training split "
                        f"(limit {limit}); lower k or raise the limit")
    if scheme.name == "knn" and imbalance:
        raise UserError(f"{where}: class_weights and sampler do not apply to knn (nothing is trained); remove them "
                        f"from its recipe")
