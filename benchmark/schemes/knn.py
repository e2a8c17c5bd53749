"""`knn`: nothing trains. Each test image gets the labels of its k nearest training images in the frozen
backbone's embedding space (cached, see `embeddings`), by scikit-learn's `KNeighborsClassifier` (brute force,
uniform weights; `distance: euclidean` as MedMNIST+, or `cosine`).

Class probabilities are the neighbours' vote fractions (`predict_proba`), so AUC is defined (MedMNIST+ reports
none for kNN). Hard predictions follow the metrics' MedMNIST rules on those fractions: binary tasks threshold the
positive class at > 0.5, so an even split of an even k goes to the negative class; multi-class tasks take the
arg-max, so a tie goes to the lowest class index — the same as `KNeighborsClassifier.predict`. kNN is
deterministic: with a pretrained backbone every seed gives the same record (seed standard deviation 0); with a
random-init backbone the seed draws the weights. There is no loss (recorded as NaN) and no epoch history.
"""

from __future__ import annotations

import time

import numpy as np
from sklearn.neighbors import KNeighborsClassifier

from benchmark.errors import UserError
from benchmark.metrics import classification_metrics
from benchmark.schemes.context import RestoreContext, SchemeContext
from benchmark.schemes.embeddings import cached_embeddings
from benchmark.train import TrainOutcome, autocast_dtype


def knn_probabilities(train: np.ndarray, train_labels: np.ndarray, query: np.ndarray, n_classes: int, k: int,
                      distance: str) -> np.ndarray:
    """(N, n_classes) vote fractions of the k nearest training embeddings (0 for classes absent from training)."""
    classifier = KNeighborsClassifier(n_neighbors=k, metric=distance, algorithm="brute").fit(train, train_labels)
    probs = np.zeros((len(query), n_classes))
    probs[:, classifier.classes_] = classifier.predict_proba(query)
    return probs


def check_k(k: int, n_train: int, model: str) -> None:
    if k > n_train:
        raise UserError(f"model '{model}': knn k = {k} is larger than the {n_train}-image training split; lower k "
                        f"in the suite's scheme options")


def run_knn(ctx: SchemeContext) -> TrainOutcome:
    k, distance = ctx.spec.scheme.option("k"), ctx.spec.scheme.option("distance")
    check_k(k, len(ctx.data.train), ctx.spec.model.name)
    recipe, device = ctx.spec.recipe, ctx.accelerator.device
    embeddings, cache = cached_embeddings(
        ctx.built, ctx.data, ctx.device_splits, ("train", "test"),
        recipe.eval_batch_size or 2 * recipe.batch_size, ctx.accelerator, autocast_dtype(recipe, device),
        ctx.cache_dir)
    started = time.perf_counter()
    test_probs = knn_probabilities(embeddings["train"].cpu().numpy(), ctx.data.train.labels,
                                   embeddings["test"].cpu().numpy(), ctx.data.n_classes, k, distance)
    seconds = time.perf_counter() - started
    test = {"loss": float("nan"), **classification_metrics(ctx.data.test.labels, test_probs, ctx.data.task)}
    return TrainOutcome(history=[], best_epoch=0, test=test, test_labels=ctx.data.test.labels.tolist(),
                        test_probs=test_probs.tolist(), train_seconds=seconds, train_images=len(ctx.data.train),
                        details={"trainable_params": 0, "embedding_cache": cache["cache"],
                                 "embedding_seconds": cache["seconds"],
                                 "embedding_dim": int(embeddings["train"].shape[1]),
                                 "backbone_sha256": cache["backbone"]})


def restore_knn(ctx: RestoreContext):
    """Nothing to rebuild: a kNN run is its training split's embeddings, which no checkpoint holds."""
    raise UserError(f"scheme knn keeps no model: '{ctx.model_name}' votes among the training split's embeddings, "
                    f"which the run does not store; use a finetune, linear_probe, gradual_unfreeze or lora run "
                    f"of it for predict, export, explain and serve")
