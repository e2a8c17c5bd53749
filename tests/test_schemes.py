"""Training schemes on the shipped real subsets with tiny random-init models: what each one freezes, trains,
caches and computes, and how bad input, failures and resumes behave."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from accelerate import Accelerator
from checkpoint_spy import keep_checkpoints
from conftest import need
from scipy.stats import chisquare
from sklearn.neighbors import KNeighborsClassifier

from benchmark import cli, train
from benchmark.config import load_suite
from benchmark.data import load_dataset
from benchmark.errors import UserError
from benchmark.metrics import predicted_labels
from benchmark.models import build_model
from benchmark.models.hf import LogitsOnly
from benchmark.schemes.context import SchemeContext
from benchmark.schemes.embeddings import data_digest
from benchmark.schemes.gradual_unfreeze import GradualUnfreeze
from benchmark.schemes.imbalance import balanced_class_weights, balanced_sample_weights
from benchmark.schemes.lora import add_lora
from benchmark.schemes.run import run_scheme
from benchmark.train import DeviceSplit, train_batches

SHORT = {"optimizer": "adamw", "lr": 1.0e-3, "schedule": "cosine", "warmup_ratio": 0.0, "epochs": 2,
         "batch_size": 32, "augment": "none", "selection_metric": "loss"}


def write_suite(folder: Path, models: list, datasets=("breastmnist",), seeds=(0,), name="schemes-test",
                **extra) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "data_root": "bundled", "seeds": list(seeds),
                                    "datasets": list(datasets), "models": models, **extra}))
    return path


def context(tmp_path: Path, models: list, dataset="breastmnist", seed=0, limit=None) -> SchemeContext:
    """One run's SchemeContext, built as the runner builds it (seeded model, device-resident splits)."""
    spec = load_suite(str(write_suite(tmp_path, models, datasets=(dataset,), seeds=(seed,))), limit=limit).runs[0]
    data = load_dataset(spec.dataset, size=spec.size, data_root="bundled", limit=spec.limit or None)
    torch.manual_seed(seed)
    built = build_model(spec.model, data.class_names, data.train.images.shape[-1])
    splits = {name: DeviceSplit.from_split(getattr(data, name), torch.device("cpu")) for name in ("train", "val", "test")}
    return SchemeContext(spec, built, data, splits, Accelerator(cpu=True), None, tmp_path / "cache", quiet=True)


def records(output: Path, suite: str = "schemes-test") -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted((output / "runs" / suite).glob("*.json"))}


# --- linear probe ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("model", ["resnet18_28", "vit_tiny"])  # ResNet: BatchNorm buffers must not move either
def test_linear_probe_moves_only_the_head(tmp_path, model):
    ctx = context(tmp_path, [{"name": model, "recipe": SHORT, "scheme": "linear_probe"}], limit=64)
    before = {k: v.clone() for k, v in ctx.built.module.state_dict().items()}
    outcome = run_scheme(ctx)
    after = ctx.built.module.state_dict()
    head = ctx.built.head + "."
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith(head) for k in changed)  # the head trained, nothing else moved
    assert all(torch.equal(before[k], after[k]) for k in before if not k.startswith(head))
    assert outcome.details["trainable_params"] == sum(p.numel() for n, p in ctx.built.module.named_parameters()
                                                      if n.startswith(head))
    assert outcome.details["embedding_cache"] == "miss" and len(outcome.history) == 2


# --- kNN -------------------------------------------------------------------------------------------------------

def test_knn_is_deterministic_and_equals_sklearn_on_the_same_embeddings(tmp_path):
    # RetinaMNIST (5 classes) with an even k: vote ties happen, and both sides must break them the same way
    models = [{"name": "vit_tiny", "recipe": SHORT, "scheme": {"name": "knn", "k": 4}}]
    ctx = context(tmp_path, models, dataset="retinamnist")
    first = run_scheme(ctx)
    again = run_scheme(context(tmp_path, models, dataset="retinamnist"))
    assert first.test_probs == again.test_probs and again.details["embedding_cache"] == "hit"

    vit = ctx.built.module.model.vit.eval()  # the CLS token after the final norm, computed independently
    from benchmark.data.transforms import BatchTransform
    transform = BatchTransform.for_model(ctx.built)
    with torch.no_grad():
        embed = {s: vit(transform(ctx.device_splits[s].images)).last_hidden_state[:, 0].numpy() for s in ("train", "test")}
    reference = KNeighborsClassifier(n_neighbors=4).fit(embed["train"], ctx.data.train.labels)
    probs = np.array(first.test_probs)
    assert np.array_equal(predicted_labels(probs, ctx.data.task), reference.predict(embed["test"]))
    np.testing.assert_allclose(probs, reference.predict_proba(embed["test"]))
    votes = probs * 4
    assert np.allclose(votes, votes.round()) and (np.sort(votes, 1)[:, -1] == np.sort(votes, 1)[:, -2]).any()


# --- LoRA ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("targets, reason", [(["layernorm"], "is not supported"),  # a LayerNorm: it exists
                                              (["no_such_layer"], "No modules were targeted")])
def test_lora_says_why_it_cannot_adapt_the_layers_named(tmp_path, targets, reason):
    """The error said "none of the target_modules is a layer of it" also for a layer that exists but is of a kind
    peft cannot adapt; it now gives peft's reason, on one line."""
    need("peft", extra="lora")
    options = {"name": "lora", "rank": 4, "alpha": 8, "dropout": 0.1, "target_modules": targets}
    ctx = context(tmp_path, [{"name": "vit_tiny", "recipe": SHORT, "scheme": options}])
    with pytest.raises(UserError) as info:
        add_lora(ctx.built, ctx.spec.scheme.options)
    message = str(info.value)
    assert f"lora cannot adapt target_modules {targets} (" in message and reason in message and "\n" not in message


def test_lora_trains_adapters_and_head_only_and_merging_keeps_the_outputs(tmp_path):
    need("peft", extra="lora")
    options = {"name": "lora", "rank": 4, "alpha": 8, "dropout": 0.1, "target_modules": ["q_proj", "v_proj"]}
    ctx = context(tmp_path, [{"name": "vit_tiny", "recipe": SHORT, "scheme": options}])
    add_lora(ctx.built, ctx.spec.scheme.options)
    trainable = {n: p.numel() for n, p in ctx.built.module.named_parameters() if p.requires_grad}
    config = ctx.built.module.model.base_model.model.config
    d, r, layers, classes = config.hidden_size, 4, config.num_hidden_layers, ctx.data.n_classes
    assert sum(trainable.values()) == layers * 2 * (r * d + d * r) + d * classes + classes
    assert all(("lora_A" in n or "lora_B" in n or "modules_to_save" in n) for n in trainable)

    for name, param in ctx.built.module.named_parameters():  # B starts at zero: give the adapters something to add
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.5)
    pixels = torch.randn(6, 3, ctx.built.input_size, ctx.built.input_size)
    model = ctx.built.module.eval()
    with torch.no_grad():
        unmerged = model(pixels)
        base = model.model.get_base_model()
        with model.model.disable_adapter():
            plain = model(pixels)
        model.model = model.model.merge_and_unload()
        merged = model(pixels)
    assert not torch.allclose(unmerged, plain, atol=1e-3)  # the adapters change the outputs …
    torch.testing.assert_close(merged, unmerged, atol=1e-5, rtol=0)  # … and merging keeps them
    assert model.model is base and not any("lora" in n for n, _ in model.named_parameters())


# --- gradual unfreezing ----------------------------------------------------------------------------------------

def test_gradual_unfreezing_follows_the_documented_schedule(tmp_path, monkeypatch):
    scheme = {"name": "gradual_unfreeze", "epochs_per_stage": 1, "blocks_per_stage": 1, "lr_decay": 0.5}
    ctx = context(tmp_path, [{"name": "vit_tiny", "recipe": {**SHORT, "epochs": 4}, "scheme": scheme}], limit=48)
    seen, snapshots = {}, {}
    real = GradualUnfreeze.start_epoch

    def record(self, model, epoch):
        real(self, model, epoch)
        seen[epoch] = {n for n, p in model.named_parameters() if p.requires_grad}
        snapshots[epoch] = {n: p.detach().clone() for n, p in model.named_parameters()}

    monkeypatch.setattr(GradualUnfreeze, "start_epoch", record)
    run_scheme(ctx)
    names = {n for n, _ in ctx.built.module.named_parameters()}

    def prefixed(*prefixes):
        return {n for n in names if n.startswith(prefixes)}

    head = prefixed("model.classifier.", "model.vit.layernorm.")  # the head and the norm after the last block
    expected = {1: head, 2: head | prefixed("model.vit.layers.1."),
                3: head | prefixed("model.vit.layers."), 4: names}
    assert seen == expected
    assert prefixed("model.vit.embeddings.") and not expected[3] & prefixed("model.vit.embeddings.")
    for epoch in (1, 2, 3):  # frozen means frozen: no weight decay, no momentum moves them
        frozen = names - expected[epoch]
        assert all(torch.equal(snapshots[epoch][n], snapshots[epoch + 1][n]) for n in frozen)
        assert all(not torch.equal(snapshots[epoch][n], snapshots[epoch + 1][n]) for n in expected[epoch]
                   if n.endswith("weight"))
    adaptation = GradualUnfreeze(ctx.built, ctx.spec.scheme.options)
    assert adaptation.learning_rates(1.0) == {"head": 1.0, "block2": 0.5, "block1": 0.25, "stem": 0.125}


def test_gradual_unfreezing_groups_of_a_resnet():
    spec = load_suite("schemes", models=["resnet18_28"]).runs[0].model
    built = build_model(spec, ["a", "b"], 1)
    adaptation = GradualUnfreeze(built, {"epochs_per_stage": 2, "blocks_per_stage": 2, "lr_decay": 0.75})
    assert [adaptation.trainable_groups(e) for e in (1, 2, 3, 5, 7)] == [
        ["head"], ["head"], ["head", "block4", "block3"], ["head", "block4", "block3", "block2", "block1"],
        ["head", "block4", "block3", "block2", "block1", "stem"]]
    assert adaptation.layout["head"] == ["fc.weight", "fc.bias"]
    assert adaptation.layout["stem"] == ["conv1.weight", "bn1.weight", "bn1.bias"]


# --- class imbalance -------------------------------------------------------------------------------------------

def test_balanced_class_weights_follow_the_inverse_frequency_formula_on_real_breastmnist(shared_data):
    data = load_dataset("breastmnist", data_root=str(shared_data / "medmnist"))
    counts = np.bincount(data.train.labels)
    assert counts.tolist() == [147, 399]  # malignant, normal/benign
    weights = balanced_class_weights(data.train.labels, 2)
    assert torch.allclose(weights, torch.tensor([546 / (2 * 147), 546 / (2 * 399)]))


def test_balanced_sampler_draws_classes_uniformly_and_is_seeded():
    labels = load_dataset("breastmnist", data_root="bundled").train.labels
    assert np.bincount(labels).tolist() == [32, 88]
    weights = balanced_sample_weights(labels, 2)

    def drawn(seed, sample_weights):
        batches = [train_batches(len(labels), 32, train.epoch_generator(seed, epoch, 0), 0, 1,
                                 sample_weights=sample_weights) for epoch in range(1, 21)]
        return torch.cat([b for epoch in batches for b in epoch])

    balanced = drawn(0, weights)
    counts = np.bincount(labels[balanced.numpy()], minlength=2)
    assert chisquare(counts).pvalue > 0.01  # consistent with uniform over the classes
    shuffled = np.bincount(labels[drawn(0, None).numpy()], minlength=2)
    assert chisquare(shuffled).pvalue < 1e-6  # the plain shuffle keeps the imbalance: the test can tell
    assert torch.equal(balanced, drawn(0, weights)) and not torch.equal(balanced, drawn(1, weights))


def test_imbalance_options_enter_the_hash_only_when_set(tmp_path):
    plain = load_suite(str(write_suite(tmp_path, [{"name": "resnet18_28", "recipe": SHORT}]))).runs[0]
    for option in ({"class_weights": "balanced"}, {"sampler": "balanced"}):
        varied = replace(plain, recipe=replace(plain.recipe, **option))
        assert varied.config_hash != plain.config_hash
    assert replace(plain, recipe=replace(plain.recipe, class_weights="none")).config_hash == plain.config_hash


# --- the embedding cache ---------------------------------------------------------------------------------------

FLOP_COUNT_IMAGES = 2  # the batch `benchmark.compute.count_flops` runs the model on


def test_cached_embeddings_spare_the_backbone_and_a_new_preprocessing_misses(tmp_path, monkeypatch):
    # "pretrained" weights saved locally: every seed shares one backbone, so one forward pass serves them all
    ctx = context(tmp_path, [{"name": "vit_tiny", "recipe": SHORT}])
    ctx.built.module.model.save_pretrained(tmp_path / "weights")
    entry = {"name": "tiny_pretrained", "source": str(tmp_path / "weights"), "recipe": SHORT}
    models = [{**entry, "scheme": "linear_probe"}, {**entry, "scheme": {"name": "knn", "k": 3}}]
    calls = []
    real = LogitsOnly.forward
    monkeypatch.setattr(LogitsOnly, "forward", lambda self, pixels: (calls.append(len(pixels)), real(self, pixels))[1])
    output = tmp_path / "results"
    suite = write_suite(tmp_path, models, seeds=(0, 1))
    assert cli.main(["run", "--suite", str(suite), "--output", str(output), "--limit", "40", "--quiet"]) == 0
    # train, val and test embedded once, for 2 seeds × 2 schemes; and each run's compute block counts the model's
    # FLOPs on one forward of 2 random images (benchmark.compute)
    embedded = [n for n in calls if n != FLOP_COUNT_IMAGES]
    assert sum(embedded) == 3 * 40 and len(calls) - len(embedded) == 4
    cache = {r["run_id"].split("-s")[0] + f"-s{r['seed']}": r["scheme_details"]["embedding_cache"]
             for r in records(output).values()}
    assert sorted(cache.values()) == ["hit", "hit", "hit", "miss"]
    assert len(list((output / "cache" / "embeddings").glob("*.pt"))) == 3

    calls.clear()  # a second grid (other seeds): the backbone is not called at all (but to count FLOPs)
    assert cli.main(["run", "--suite", str(suite), "--output", str(output), "--limit", "40", "--quiet",
                     "--seeds", "5"]) == 0
    assert calls == [FLOP_COUNT_IMAGES] * 2
    calls.clear()  # other preprocessing (pad instead of resize): a miss, never the stale entry
    padded = write_suite(tmp_path, [{**entry, "resize": "pad", "scheme": "linear_probe"}])
    assert cli.main(["run", "--suite", str(padded), "--output", str(output), "--limit", "40", "--quiet"]) == 0
    assert sum(calls) == 3 * 40 + FLOP_COUNT_IMAGES
    assert len(list((output / "cache" / "embeddings").glob("*.pt"))) == 6

    calls.clear()  # each seed's half of the training split is its own entry (it took seed 0's embeddings before)
    halves = write_suite(tmp_path, models[:1], seeds=(0, 1), name="halves", train_fractions=[0.5])
    assert cli.main(["run", "--suite", str(halves), "--output", str(output), "--limit", "40", "--quiet"]) == 0
    assert sum(calls) == 2 * 20 + 2 * FLOP_COUNT_IMAGES  # two halves embedded; val and test from the cache
    assert {r["scheme_details"]["embedding_cache"] for r in records(output, "halves").values()} == {"partial"}
    # another cut of a loader's splits (same files, same split sizes) is another entry too
    grouped, shuffled = (load_dataset("breast_ultrasound", size=64, data_root="bundled", split=kind)
                         for kind in ("grouped", "random"))
    assert len(grouped.test) == len(shuffled.test) and grouped.md5 == shuffled.md5
    assert data_digest(grouped, "test") != data_digest(shuffled, "test")


# --- bad input, failures, resume -------------------------------------------------------------------------------

@pytest.mark.parametrize("scheme, model, limit, message", [
    ("fine_tuning", "vit_tiny", None, "unknown scheme 'fine_tuning'; did you mean 'finetune'?"),
    ({"name": "knn", "k": 50}, "vit_tiny", 40, "knn k = 50 is larger than the 40-image training split"),
    ("lora", "resnet18_28", None, "scheme lora needs attention layers"),
    ({"name": "knn", "neighbours": 5}, "vit_tiny", None, "scheme knn has no option 'neighbours'"),
])
def test_bad_schemes_are_one_line_errors_at_suite_load(tmp_path, capsys, scheme, model, limit, message):
    suite = write_suite(tmp_path, [{"name": model, "recipe": SHORT, "scheme": scheme}], limit=limit)
    assert cli.main(["run", "--suite", str(suite), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and err.startswith("error: ")


def test_k_beyond_the_training_split_fails_that_run_only_and_exits_2(tmp_path, capsys):
    models = [{"name": "vit_tiny", "recipe": SHORT, "scheme": {"name": "knn", "k": 200}},  # 120 training images
              {"name": "vit_tiny", "recipe": SHORT, "scheme": {"name": "knn", "k": 5}}]
    suite = write_suite(tmp_path, models)
    output = tmp_path / "results"
    assert cli.main(["run", "--suite", str(suite), "--output", str(output), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "knn k = 200 is larger than the 120-image training split" in err and err.count("\n") == 1
    status = sorted((r["status"], r["scheme_details"]["options"]["k"] if "scheme_details" in r else None)
                    for r in records(output).values())
    assert status == [("completed", 5), ("failed", None)]
    assert cli.main(["run", "--suite", str(suite), "--output", str(output), "--quiet"]) == 2  # the good one stays
    assert sum(r["status"] == "completed" for r in records(output).values()) == 1


@pytest.mark.parametrize("scheme", ["gradual_unfreeze", "lora", "linear_probe"])
def test_an_interrupted_scheme_run_resumes_to_the_same_record(tmp_path, monkeypatch, scheme):
    if scheme == "lora":
        need("peft", extra="lora")
    suite = write_suite(tmp_path, [{"name": "vit_tiny", "recipe": {**SHORT, "epochs": 3}, "scheme": scheme}])
    saved = keep_checkpoints(monkeypatch)
    args = ["run", "--suite", str(suite), "--limit", "48", "--quiet"]
    assert cli.main(args + ["--output", str(tmp_path / "reference")]) == 0
    monkeypatch.undo()
    (reference,) = records(tmp_path / "reference").values()
    checkpoints = tmp_path / "resumed" / "checkpoints" / "schemes-test" / reference["run_id"]
    checkpoints.mkdir(parents=True)
    for name, content in saved[1].items():
        (checkpoints / name).write_bytes(content)
    assert cli.main(args + ["--output", str(tmp_path / "resumed")]) == 0
    (resumed,) = records(tmp_path / "resumed").values()
    assert resumed["resumed_from_epoch"] == 1
    for key in ("test", "test_predictions", "best_epoch"):
        assert json.dumps(resumed[key], sort_keys=True) == json.dumps(reference[key], sort_keys=True), key
    assert [h["train_loss"] for h in resumed["history"]] == [h["train_loss"] for h in reference["history"]]


# --- records and the shipped suites ----------------------------------------------------------------------------

def test_scheme_enters_the_hash_and_run_id_only_when_not_finetune(tmp_path):
    plain = load_suite(str(write_suite(tmp_path, [{"name": "vit_tiny", "recipe": SHORT}]))).runs[0]
    explicit = load_suite(str(write_suite(tmp_path, [{"name": "vit_tiny", "recipe": SHORT,
                                                      "scheme": "finetune"}]))).runs[0]
    probe = load_suite(str(write_suite(tmp_path, [{"name": "vit_tiny", "recipe": SHORT,
                                                   "scheme": "linear_probe"}]))).runs[0]
    assert plain.config_hash == explicit.config_hash and "-finetune" not in plain.run_id
    assert probe.config_hash != plain.config_hash and probe.run_id.startswith("breastmnist-28-vit_tiny-linear_probe-s0-")
    knn = load_suite(str(write_suite(tmp_path, [{"name": "vit_tiny", "recipe": SHORT, "scheme": "knn"}]))).runs[0]
    assert knn.scheme.options == {"k": 11, "distance": "euclidean"}  # MedMNIST+'s k, resolved into the hash


def test_the_medmnist_plus_grid_is_complete():
    suite = load_suite("medmnist-plus")
    assert len(suite.runs) == 4 * 4 * 4 * 3 * 3
    cells = {(r.dataset, r.size, r.model.name, r.scheme.name) for r in suite.runs}
    assert {c[3] for c in cells} == {"finetune", "linear_probe", "knn"} and len(cells) == 4 * 4 * 4 * 3
    first = suite.runs[0]
    assert (first.recipe.optimizer, first.recipe.lr, first.recipe.batch_size, first.recipe.epochs) == ("adamw", 1e-4,
                                                                                                       64, 100)
    assert (first.recipe.selection_metric, first.recipe.early_stopping_patience, first.recipe.augment) == ("loss", 5,
                                                                                                           "none")
    assert {r.model.resize for r in suite.runs} == {"pad"}
    assert {r.model.source for r in suite.runs} == {"google/vit-base-patch16-224", "facebook/dino-vitb16",
                                                     "openai/clip-vit-base-patch16", "microsoft/resnet-18"}


def test_the_schemes_suite_runs_end_to_end_with_one_leaderboard_row_per_model_and_scheme(tmp_path):
    need("peft", extra="lora")
    output = tmp_path / "results"
    assert cli.main(["run", "--suite", "schemes", "--datasets", "breastmnist", "--output", str(output),
                     "--limit", "64", "--epochs", "1", "--quiet"]) == 0
    found = records(output, "schemes")
    assert len(found) == 9 and all(r["status"] == "completed" for r in found.values())
    schemes = {(r["model"]["name"], r["scheme"]) for r in found.values()}
    assert schemes == {("vit_tiny", s) for s in ("from_scratch", "linear_probe", "knn", "gradual_unfreeze", "lora")} | {
        ("resnet18_28", s) for s in ("from_scratch", "linear_probe", "knn", "gradual_unfreeze")}
    assert cli.main(["leaderboard", "--runs", str(output / "runs"), "--output", str(output), "--suite", "schemes"]) == 0
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in (output / "leaderboard.md").read_text().splitlines()
            if line.startswith("|")]
    acc = {(r[0], r[2]) for r in rows if len(r) > 4 and r[1] == "28" and r[3] == "measured"}
    assert acc == schemes


def test_published_rows_with_a_scheme_are_compared_with_that_schemes_runs():
    from record_factory import make_record

    from benchmark.records import records_frame
    from benchmark.report.aggregate import published_gap
    from benchmark.report.load import load_published

    recs = [make_record(model="vit_b16", scheme=scheme, seed=seed, skill=skill)
            for scheme, skill in (("fine_tune", 3.0), ("knn", 0.5)) for seed in (0, 1, 2)]
    published = load_published()
    gap = published_gap(records_frame(recs), published[published["source"].str.startswith("MedMNIST+")], None)
    gap = gap[(gap["dataset"] == "breastmnist") & (gap["metric"] == "acc")].set_index("scheme")
    for scheme in ("fine_tune", "knn"):
        accs = [r["test"]["acc"] for r in recs if r["scheme"] == scheme]
        assert gap.loc[scheme, "mean"] == pytest.approx(np.mean(accs))
    assert gap.loc["fine_tune", "mean"] != gap.loc["knn", "mean"]
    assert "linear_probe" not in gap.index  # no linear-probe runs, no plan: not listed
