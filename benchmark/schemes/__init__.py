"""Training schemes: how a built model becomes a trained classifier.

- `finetune`: every parameter trains (the accelerate loop in `benchmark.train`).
- `linear_probe`: the backbone is frozen; the model's own linear head trains on cached pre-logit embeddings.
- `knn`: nothing trains; k-nearest-neighbour votes over the cached training embeddings.
- `gradual_unfreeze`: head first, then blocks from the top, each group with its own learning rate.
- `lora`: low-rank adapters (peft) on the attention projections of a Hugging Face ViT, the head in full.

`spec` (which scheme, its options) is torch-free; `run_scheme` (in `benchmark.schemes.run`) trains one, and
`restore_scheme` rebuilds a completed one's model for use (`benchmark.use.load_run`).
"""

from benchmark.schemes.spec import (
    SCHEMES,
    SchemeSpec,
    check_scheme_fits,
    parse_scheme,
    record_scheme,
)

__all__ = ["SCHEMES", "SchemeSpec", "check_scheme_fits", "parse_scheme", "record_scheme"]
