"""The dispatch from a scheme to its code: what trains a run (`run_scheme`), and what rebuilds a completed run's
model for use from its record and best.pt (`restore_scheme`, called by `benchmark.use.load_run`)."""

from __future__ import annotations

from benchmark.errors import UserError
from benchmark.models import BuiltModel
from benchmark.schemes.context import RestoreContext, SchemeContext
from benchmark.schemes.gradual_unfreeze import GradualUnfreeze
from benchmark.schemes.knn import restore_knn, run_knn
from benchmark.schemes.linear_probe import restore_linear_probe, run_linear_probe
from benchmark.schemes.lora import MergedForTest, add_lora, restore_lora
from benchmark.train import Adaptation, TrainOutcome, fit, peak_memory, reset_peak_memory


def _fit(ctx: SchemeContext, adaptation: Adaptation) -> TrainOutcome:
    return fit(ctx.built, ctx.data, ctx.device_splits, ctx.spec.recipe, ctx.spec.seed, ctx.accelerator,
               ctx.checkpoints, quiet=ctx.quiet, description=ctx.spec.run_id,
               adaptation=adaptation)


def run_finetune(ctx: SchemeContext) -> TrainOutcome:
    return _fit(ctx, Adaptation())


def run_gradual_unfreeze(ctx: SchemeContext) -> TrainOutcome:
    if ctx.accelerator.num_processes > 1:
        raise UserError("scheme gradual_unfreeze runs in one process (DDP needs a gradient for every parameter); "
                        "run it without accelerate launch")
    return _fit(ctx, GradualUnfreeze(ctx.built, ctx.spec.scheme.options, ctx.spec.model.name))


def run_lora(ctx: SchemeContext) -> TrainOutcome:
    add_lora(ctx.built, ctx.spec.scheme.options, ctx.spec.model.name)
    return _fit(ctx, MergedForTest())


RUNNERS = {"finetune": run_finetune, "linear_probe": run_linear_probe, "knn": run_knn,
           "gradual_unfreeze": run_gradual_unfreeze, "lora": run_lora}


def run_scheme(ctx: SchemeContext) -> TrainOutcome:
    """Run the spec's scheme; its outcome's peak memory is this run's alone (from here, embedding passes too)."""
    restarted = reset_peak_memory(ctx.accelerator.device)
    outcome = RUNNERS[ctx.spec.scheme.name](ctx)
    outcome.peak_memory_mb, outcome.peak_memory_kind = peak_memory(ctx.accelerator.device, restarted)
    outcome.details = {"scheme": ctx.spec.scheme.name, "options": dict(ctx.spec.scheme.options), **outcome.details}
    return outcome


def restore_all(ctx: RestoreContext) -> BuiltModel:
    """finetune, gradual_unfreeze: best.pt holds every weight of the model."""
    built = ctx.build(False)
    built.module.load_state_dict(ctx.read_weights())
    return built


RESTORERS = {"finetune": restore_all, "linear_probe": restore_linear_probe, "knn": restore_knn,
             "gradual_unfreeze": restore_all, "lora": restore_lora}


def restore_scheme(ctx: RestoreContext) -> BuiltModel:
    """A completed run's model with its best weights, as it scored the test split (CPU; not yet in eval mode)."""
    return RESTORERS[ctx.scheme.name](ctx)
