"""`gradual_unfreeze`: the ultrasound guide's recipe made a schedule — head first, then blocks from the top.

The parameters fall into groups by where they sit in the model (`BuiltModel.head`, `BuiltModel.blocks`, and
registration order): the **head** (classifier) together with the **neck** (what follows the last block: ViT's
final LayerNorm, CLIP's post-LayerNorm), the N **blocks** (transformer layers; ResNet stages layer1…layer4), and
the **stem** (what precedes the first block: patch/position embeddings, ResNet conv1/bn1).

Schedule, with E = `epochs_per_stage` and B = `blocks_per_stage`: epoch e is in stage s = (e − 1) // E.
Stage s trains the head and neck and the top min(s × B, N) blocks; the stem trains too once s × B ≥ N + B
(the stage after the last block). With N = 12, B = 1, E = 1: epoch 1 head only, epoch 2 + block 12, …, epoch 13
+ block 1, epoch 14 onwards everything. Frozen groups get no gradient (`requires_grad = False`), so the
optimizer leaves them untouched (no weight decay either); BatchNorm statistics of frozen ResNet stages still
update, as in the guide's Trainer.

Learning rates (layer-wise decay, d = `lr_decay`): head and neck lr; the block at depth i from the top
(i = 1 is the last block) lr × d^i; the stem lr × d^(N+1). The recipe's schedule (warm-up, cosine …) scales all
groups alike. One process only (DDP needs every parameter to get a gradient each step).
"""

from __future__ import annotations

from torch import nn

from benchmark.config import Recipe
from benchmark.errors import UserError
from benchmark.models import BuiltModel
from benchmark.train import Adaptation

HEAD, STEM = "head", "stem"


def parameter_layout(built: BuiltModel, model_name: str = "") -> dict[str, list[str]]:
    """Group name → parameter names, groups ordered head, block N (top) … block 1, stem."""
    if not built.head or not built.blocks:
        raise UserError(f"model '{model_name}': no head and blocks to unfreeze gradually were found; use finetune")
    names = [name for name, _ in built.module.named_parameters()]

    def under(prefix: str) -> list[str]:
        return [n for n in names if n.startswith(prefix + ".")]

    head = set(under(built.head))
    blocks = [under(b) for b in built.blocks]
    in_blocks = {n for block in blocks for n in block}
    positions = [i for i, n in enumerate(names) if n in in_blocks]
    first, last = positions[0], positions[-1]
    neck = [n for i, n in enumerate(names) if i > last and n not in head and n not in in_blocks]
    stem = [n for i, n in enumerate(names) if i < first and n not in head]
    stray = [n for i, n in enumerate(names) if first < i < last and n not in in_blocks and n not in head]
    layout = {HEAD: [n for n in names if n in head] + neck}
    for depth, block in enumerate(reversed(blocks), start=1):
        layout[f"block{len(blocks) - depth + 1}"] = block
    layout[STEM] = stem + stray  # parameters between blocks (none in ViTs or ResNets) move with the stem
    return layout


class GradualUnfreeze(Adaptation):
    def __init__(self, built: BuiltModel, options: dict, model_name: str = ""):
        self.layout = parameter_layout(built, model_name)
        self.epochs_per_stage = options["epochs_per_stage"]
        self.blocks_per_stage = options["blocks_per_stage"]
        self.lr_decay = options["lr_decay"]
        self.n_blocks = len(self.layout) - 2

    def trainable_groups(self, epoch: int) -> list[str]:
        """The groups that train in `epoch` (1-based), in layout order."""
        stage = (epoch - 1) // self.epochs_per_stage
        unfrozen = stage * self.blocks_per_stage
        groups = [HEAD] + [f"block{self.n_blocks - i}" for i in range(min(unfrozen, self.n_blocks))]
        if unfrozen >= self.n_blocks + self.blocks_per_stage:
            groups.append(STEM)
        return groups

    def learning_rates(self, lr: float) -> dict[str, float]:
        """Group → learning rate (before the recipe's schedule scales it)."""
        depths = {HEAD: 0, STEM: self.n_blocks + 1}
        depths.update({f"block{self.n_blocks - i + 1}": i for i in range(1, self.n_blocks + 1)})
        return {group: lr * self.lr_decay ** depths[group] for group in self.layout}

    def param_groups(self, model: nn.Module, recipe: Recipe) -> list[dict]:
        params = dict(model.named_parameters())
        groups = []
        for group, lr in self.learning_rates(recipe.lr).items():
            members = [params[n] for n in self.layout[group]]
            groups.append({"params": [p for p in members if p.ndim > 1], "weight_decay": recipe.weight_decay,
                           "lr": lr, "group": group})
            groups.append({"params": [p for p in members if p.ndim <= 1], "weight_decay": 0.0, "lr": lr,
                           "group": group})
        return [g for g in groups if g["params"]]

    def start_epoch(self, model: nn.Module, epoch: int) -> None:
        trainable = {n for group in self.trainable_groups(epoch) for n in self.layout[group]}
        for name, param in model.named_parameters():
            param.requires_grad_(name in trainable)
