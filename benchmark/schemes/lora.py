"""`lora`: low-rank adapters (the `peft` library) on the attention projections of a Hugging Face ViT.

Options: `rank` (r), `alpha` (scale alpha / r), `dropout` (on the adapter input) and `target_modules` (module
names matched as suffixes; default the query and value projections under both namings: `q_proj`/`v_proj`
(ViT and CLIP in transformers 5) and `query`/`value` (ViT in transformers 4)). Every pretrained weight is frozen;
the adapters and the classifier head (peft
`modules_to_save`, trained in full) are the trainable parameters. Validation runs on the adapted model; the
best epoch's adapters are merged into the weights (`merge_and_unload`) and the test split is scored on the
merged model. `best.pt` holds the peft model's state dict (adapters and head beside the frozen weights), so for
use the model is built, wrapped with the record's adapters, loaded and merged the same way.
"""

from __future__ import annotations

from torch import nn

from benchmark.errors import UserError
from benchmark.models import BuiltModel
from benchmark.schemes.context import RestoreContext
from benchmark.train import Adaptation


def add_lora(built: BuiltModel, options: dict, model_name: str = "") -> BuiltModel:
    """Wrap the HF model inside `built` with LoRA adapters (in place) and return `built`."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise UserError("scheme lora needs the peft package: pip install 'medmnist-benchmark[lora]'") from None

    inner = getattr(built.module, "model", None)
    if built.family != "hf" or inner is None or not built.head.startswith("model."):
        raise UserError(f"model '{model_name}': scheme lora needs a Hugging Face model with attention layers; "
                        f"use finetune or gradual_unfreeze for it")
    config = LoraConfig(r=options["rank"], lora_alpha=options["alpha"], lora_dropout=options["dropout"],
                        target_modules=list(options["target_modules"]),
                        modules_to_save=[built.head.removeprefix("model.")])
    try:
        built.module.model = get_peft_model(inner, config)
    except ValueError as err:  # peft's reason: no layer of these names, or one of a kind it cannot adapt
        reason = " ".join(str(err).split()).split(". ")[0].rstrip(".")
        raise UserError(f"model '{model_name}': lora cannot adapt target_modules {list(options['target_modules'])} "
                        f"({reason}); name its attention projections (e.g. q_proj, v_proj) in the scheme options, "
                        f"or use finetune") from None
    return built


class MergedForTest(Adaptation):
    """Trains what requires grad (adapters and head); scores the test split on the merged model."""

    def for_test(self, model: nn.Module) -> nn.Module:
        model.model = model.model.merge_and_unload()
        return model


def restore_lora(ctx: RestoreContext) -> BuiltModel:
    """The model as it scored the test split: adapters of best.pt merged into its weights."""
    built = add_lora(ctx.build(False), ctx.scheme.options, ctx.model_name)
    built.module.load_state_dict(ctx.read_weights())
    built.module = MergedForTest().for_test(built.module)
    return built
