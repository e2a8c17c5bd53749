"""`linear_probe`: the backbone is frozen (never trained, always in eval mode, its embeddings cached once), and the
model's own linear classifier head is trained on the cached pre-logit embeddings with the run's recipe
(optimizer, lr, schedule, epochs, batch, early stopping, best-epoch selection, imbalance options) through the
same loop as fine-tuning; the head starts from its seed-dependent initialisation.

Unlike MedMNIST+, whose probe calls `model.train()` (BatchNorm statistics move, dropout is on), the backbone here
is in eval mode: cached embeddings cannot copy a train-mode backbone. `best.pt` holds the head's weights only;
the backbone is what the runner built (seeded random init, or the pretrained weights), so for use it is built
again the same way and checked against the SHA-256 of its weights the record keeps (`backbone_sha256`).
"""

from __future__ import annotations

import logging

from benchmark.errors import UserError
from benchmark.models import BuiltModel
from benchmark.schemes.context import RestoreContext, SchemeContext
from benchmark.schemes.embeddings import backbone_digest, cached_embeddings, head_linear
from benchmark.train import DeviceSplit, TrainOutcome, autocast_dtype, fit

log = logging.getLogger(__name__)


def run_linear_probe(ctx: SchemeContext) -> TrainOutcome:
    recipe, device = ctx.spec.recipe, ctx.accelerator.device
    embeddings, cache = cached_embeddings(
        ctx.built, ctx.data, ctx.device_splits, ("train", "val", "test"),
        recipe.eval_batch_size or 2 * recipe.batch_size, ctx.accelerator, autocast_dtype(recipe, device),
        ctx.cache_dir)
    _, head = head_linear(ctx.built, ctx.spec.model.name)
    head_model = BuiltModel(module=head, input_size=head.in_features, mean=[0.0], std=[1.0], in_channels=1,
                            family="head")
    splits = {name: DeviceSplit(embeddings[name], ctx.device_splits[name].labels) for name in embeddings}
    outcome = fit(head_model, ctx.data, splits, recipe, ctx.spec.seed, ctx.accelerator, ctx.checkpoints,
                  quiet=ctx.quiet, description=ctx.spec.run_id, inputs_ready=True)
    outcome.details.update(embedding_cache=cache["cache"], embedding_seconds=cache["seconds"],
                           embedding_dim=head.in_features, backbone_sha256=cache["backbone"])
    return outcome


def restore_linear_probe(ctx: RestoreContext) -> BuiltModel:
    """The backbone built again as the run built it, with the trained head from best.pt."""
    built = ctx.build(True)
    expected, got = ctx.details.get("backbone_sha256"), backbone_digest(built)
    if expected is None:
        log.warning("the record predates backbone_sha256: the rebuilt backbone of %s cannot be checked against "
                    "the one the head was trained on", ctx.model_name)
    elif got != expected:
        raise UserError(f"the backbone of '{ctx.model_name}' built again here differs from the run's (weights "
                        f"SHA-256 {got[:12]}… vs {expected[:12]}…: other torch/transformers versions or hub "
                        f"weights); use the versions the record names, or rerun it with --force")
    head_linear(built, ctx.model_name)[1].load_state_dict(ctx.read_weights())
    return built
