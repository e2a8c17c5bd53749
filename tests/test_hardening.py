"""Hardening (issue 22): each bad argument is one `error:` line, exit status 2 and nothing written; tiny runs
(`--limit N --batch-size N`) work; records with non-finite results are counted apart; class-specific ViT
explanations; honest int8 messages; --quiet shows only our messages."""

from __future__ import annotations

import importlib
import json
import logging
import os
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import need
from PIL import Image
from record_factory import make_record, write_records

from benchmark.cli import main
from benchmark.data.registry import BUNDLED_DIR

VIT, RESNET = "breastmnist-28-vit_tiny", "breastmnist-28-resnet18_28"


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err.rstrip("\n")[len("error: "):]


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


# --- run: overrides and tiny runs ------------------------------------------------------------------------------

@pytest.mark.parametrize("flags, message", [
    (["--seeds", "-1"], "--seeds: -1 is not a seed; use integers from 0 to 4294967295"),
    (["--limit", "0"], "--limit must be >= 1 (got 0); leave --limit out for the full splits"),
    (["--epochs", "0"], "--epochs must be >= 1 (got 0)"),
    (["--batch-size", "0"], "--batch-size must be >= 1 (got 0)"),
    (["--seeds", "1,1"], "--seeds lists a seed more than once (1,1); list each seed once"),
    (["--workers", "0"], "--workers must be >= 1 (got 0)"),  # it ran the grid in-process
    (["--checkpoint-every", "-1"], "--checkpoint-every must be >= 0 seconds (got -1.0); 0 checkpoints every epoch"),
    (["--limit", "16"], "smoke.yaml: models.resnet18_28 (limit 16): batch_size 32 is larger than the 16-image train "
                        "split; pass --batch-size 16 or a larger --limit (or lower batch_size in the suite's recipe)"),
])
def test_bad_run_overrides_are_one_line_before_anything_is_written(flags, message, tmp_path, capsys):
    output = tmp_path / "results"
    assert main(["run", "--suite", "smoke", "--output", str(output), "--quiet", *flags]) == 2
    assert one_error_line(capsys) == message
    assert not output.exists()


def test_batch_size_override_makes_a_tiny_run_and_is_part_of_the_run_id(tmp_path, capsys):
    grid = ["--suite", "smoke", "--datasets", "breastmnist", "--models", "resnet18_28", "--epochs", "1"]

    def run_id(*flags: str) -> str:
        assert main(["run", *grid, *flags, "--dry-run"]) == 0
        return capsys.readouterr().out.split()[7]  # the first run id, below the 7 column names

    assert run_id("--limit", "32", "--batch-size", "32") == run_id("--limit", "32")  # the recipe's own batch
    assert run_id("--limit", "32", "--batch-size", "16") != run_id("--limit", "32")
    tiny = run_id("--limit", "16", "--batch-size", "16")
    output = tmp_path / "results"
    assert main(["run", *grid, "--limit", "16", "--batch-size", "16", "--output", str(output), "--quiet"]) == 0
    [record] = [json.loads(p.read_text()) for p in (output / "runs" / "smoke").glob("*.json")]
    assert record["run_id"] == tiny and record["status"] == "completed"
    assert record["config"]["recipe"]["batch_size"] == 16 and record["dataset"]["n_train"] == 16


def test_knn_takes_no_gradient_steps_so_a_large_batch_does_not_stop_it(tmp_path, capsys):
    suite = tmp_path / "knn.yaml"
    suite.write_text(yaml.safe_dump({
        "name": "knn", "data_root": "bundled", "seeds": [0], "datasets": ["breastmnist"],
        "models": [{"name": "vit_tiny", "recipe": {"batch_size": 64, "augment": "none"},
                    "scheme": {"name": "knn", "k": 3}}]}))
    output = tmp_path / "results"
    assert main(["run", "--suite", str(suite), "--limit", "16", "--output", str(output), "--quiet"]) == 0
    [record] = [json.loads(p.read_text()) for p in (output / "runs" / "knn").glob("*.json")]
    assert record["status"] == "completed" and record["dataset"]["n_train"] == 16


def test_a_train_split_smaller_than_the_batch_fails_the_run_naming_batch_size(tmp_path, capsys):
    """No --limit to see it by: an image folder of 18 images, split 60/20/20 when loaded."""
    folder = tmp_path / "images"
    for name in ("benign", "malignant", "normal"):
        (folder / name).mkdir(parents=True)
        for image in sorted((BUNDLED_DIR / "busi" / name).glob("*.png"))[:6]:
            shutil.copy(image, folder / name / image.name)
    suite = tmp_path / "suite.yaml"
    suite.write_text(yaml.safe_dump({
        "name": "small", "seeds": [0], "datasets": [{"name": "breast_ultrasound", "size": 28}],
        "models": [{"name": "vit_tiny", "recipe": {"batch_size": 16, "epochs": 1, "augment": "none"}}]}))
    output = tmp_path / "results"
    assert main(["run", "--suite", str(suite), "--data-root", str(folder), "--output", str(output), "--quiet"]) == 2
    message = one_error_line(capsys)
    [record] = [json.loads(p.read_text()) for p in (output / "runs" / "small").glob("*.json")]
    assert record["status"] == "failed" and record["error"]["message"] == message and record["history"] == []
    assert re.fullmatch(r"breast_ultrasound: batch_size 16 is larger than the (\d+)-image train split; pass "
                        r"--batch-size \1 \(or lower batch_size in the suite's recipe\)", message), message


# --- predict / export / explain / data-check: arguments and --output ---------------------------------------------

@pytest.mark.parametrize("batch", ["-1", "0"])
def test_predict_refuses_a_batch_below_one(batch, finished_runs, tmp_path, capsys):
    results, pngs = finished_runs
    output = tmp_path / "p.csv"
    assert main(["predict", RESNET, str(pngs / "000.png"), "--batch", batch, "--output", str(output),
                 "--results", str(results)]) == 2
    assert one_error_line(capsys) == f"--batch must be >= 1 (got {batch}): images per forward pass"
    assert not output.exists()


def lab_tiff(folder: Path) -> Path:
    """A TIFF in PIL's LAB mode: it decodes, but PIL cannot convert it to grayscale."""
    Image.new("LAB", (20, 20)).save(folder / "lab.tif")
    return folder / "lab.tif"


def test_an_image_pil_cannot_convert_is_a_user_error_naming_the_file(tmp_path):
    from benchmark.data.images import open_image, stored_pixels
    from benchmark.errors import UserError

    image = open_image(lab_tiff(tmp_path))
    with pytest.raises(UserError, match=r"^lab.tif: PIL cannot convert the image's mode LAB to grayscale; save it"):
        stored_pixels(image, 28, 1, "lab.tif")
    assert stored_pixels(image, 28, 3, "lab.tif").shape == (28, 28, 3)


def test_predict_serve_and_explain_name_an_image_pil_cannot_convert(finished_runs, tmp_path, capsys):
    need("fastapi", extra="serve")
    need("httpx", extra="test")
    need("pytorch_grad_cam", extra="explain")
    from fastapi.testclient import TestClient

    from benchmark.use import load_run
    from benchmark.use.explain import explain
    from benchmark.use.serve import create_app

    results, pngs = finished_runs
    lab = lab_tiff(tmp_path)
    explained, errors = explain(load_run(RESNET, results), [lab, pngs / "000.png"], output=tmp_path / "overlays")
    assert [e.image for e in explained] == [str(pngs / "000.png")]  # the readable image is still explained
    assert errors == [f"{lab}: PIL cannot convert the image's mode LAB to grayscale; save it as a grayscale or RGB image"]
    assert main(["predict", RESNET, str(lab), "--results", str(results)]) == 1
    assert f"error: {lab}: PIL cannot convert the image's mode LAB to grayscale" in capsys.readouterr().err
    with TestClient(create_app(load_run(RESNET, results))) as client:
        answer = client.post("/predict", files=[("files", ("lab.tif", lab.read_bytes(), "image/tiff"))])
    assert answer.status_code == 400
    assert answer.json()["error"].startswith("lab.tif: PIL cannot convert the image's mode LAB to grayscale")


def under_a_file(tmp_path: Path, name: str) -> Path:
    (tmp_path / "a_file").write_text("")
    return tmp_path / "a_file" / name


def no_permission(tmp_path: Path, name: str, monkeypatch) -> Path:
    locked, real = tmp_path / "locked", os.access
    locked.mkdir()
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: locked not in [Path(path), *Path(path).parents]
                        and real(path, mode, **kw))
    return locked / name


VERBS = {  # verb -> (its arguments but --output, the --output name, (module, function) doing its work)
    "predict": (lambda results, pngs: ["predict", RESNET, str(pngs / "000.png"), "--results", str(results)],
                "out/p.csv", ("benchmark.use.predict", "predict")),
    "export": (lambda results, pngs: ["export", VIT, "--results", str(results)], "exported",
               ("benchmark.use.export", "write_onnx")),
    "explain": (lambda results, pngs: ["explain", VIT, str(pngs / "000.png"), "--results", str(results)], "maps",
                ("benchmark.use.explain", "saliency")),
    "data-check": (lambda results, pngs: ["data-check", "breastmnist", "--data-root", "bundled"], "out/groups.json",
                   ("benchmark.data.duplicates", "check_dataset")),
}


def never(*args, **kwargs):
    raise AssertionError("the work started before the arguments were checked")


@pytest.mark.parametrize("where", ["under a file", "no permission"])
@pytest.mark.parametrize("verb", list(VERBS))
def test_an_unwritable_output_is_one_line_before_the_work(verb, where, finished_runs, tmp_path, monkeypatch, capsys):
    arguments, name, (module, work) = VERBS[verb]
    monkeypatch.setattr(importlib.import_module(module), work, never)
    command = arguments(*finished_runs)
    output = under_a_file(tmp_path, name) if where == "under a file" else no_permission(tmp_path, name, monkeypatch)
    before = files_under(finished_runs[0])
    assert main([*command, "--output", str(output), "--quiet"]) == 2
    message = one_error_line(capsys)
    folder = output if verb in ("export", "explain") else output.parent
    if where == "under a file":
        assert message == f"cannot create output folder {folder}: Not a directory; choose another --output"
    else:
        assert message == f"output folder {folder} is not writable; fix its permissions or choose another --output"
    assert files_under(tmp_path) in ([tmp_path / "a_file"], []) and files_under(finished_runs[0]) == before


@pytest.mark.parametrize("command, message", [
    (["predict", RESNET, "{png}", "--results", "{results}", "--output", "{tmp}/p.txt"],
     "--output {tmp}/p.txt: use a .csv or .json file name"),
    (["data-check", "breastmnist", "--data-root", "bundled", "--output", "{tmp}/g.txt"],
     "--output {tmp}/g.txt: use a .json or .csv file name"),
    (["data-check", "breastmnist", "--data-root", "bundled", "--threshold", "1.5", "--output", "{tmp}/g.json"],
     "duplicate threshold must be in (0, 1] (got 1.5); e.g. 0.95"),
])
def test_a_bad_output_name_or_threshold_is_refused_before_the_work(command, message, finished_runs, tmp_path,
                                                                    monkeypatch, capsys):
    for module, work in (VERBS["predict"][2], VERBS["data-check"][2]):
        monkeypatch.setattr(importlib.import_module(module), work, never)  # benchmark.use.predict is also a function
    results, pngs = finished_runs
    fill = {"png": str(pngs / "000.png"), "tmp": str(tmp_path), "results": str(results)}
    assert main([part.format(**fill) for part in command]) == 2
    assert one_error_line(capsys) == message.format(**fill)
    assert files_under(tmp_path) == []


def test_data_check_refuses_a_folder_of_one_class(tmp_path, capsys):
    folder = tmp_path / "images" / "benign"
    folder.mkdir(parents=True)
    for image in sorted((BUNDLED_DIR / "busi" / "benign").glob("*.png"))[:4]:
        shutil.copy(image, folder / image.name)
    output = tmp_path / "groups.json"
    assert main(["data-check", "breast_ultrasound", "--data-root", str(tmp_path / "images"), "--output",
                 str(output)]) == 2
    assert one_error_line(capsys) == (f"{tmp_path / 'images'}: one class folder (benign/); a classifier needs at "
                                      f"least 2 classes, one <class>/ subfolder of images each")
    assert not output.exists()


# --- explain ------------------------------------------------------------------------------------------------------

def test_vit_explanations_depend_on_the_target_and_keep_one_file_per_target(finished_runs, tmp_path, capsys):
    from benchmark.use.explain import explain

    results, pngs = finished_runs
    images = [pngs / "000.png", pngs / "001.png"]
    first, _ = explain(VIT, images, results=results, output=tmp_path, target=0)
    second, _ = explain(VIT, images, results=results, output=tmp_path, target="normal, benign")
    for a, b in zip(first, second):
        assert (a.target, b.target) == ("malignant", "normal, benign")
        assert np.abs(a.heatmap - b.heatmap).mean() > 0.05  # class-specific maps
        assert a.path != b.path and a.path.exists() and b.path.exists()
        assert not np.array_equal(np.asarray(Image.open(a.path)), np.asarray(Image.open(b.path)))
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "000.attention-rollout.0-malignant.png", "000.attention-rollout.1-normal_benign.png",
        "001.attention-rollout.0-malignant.png", "001.attention-rollout.1-normal_benign.png"]

    capsys.readouterr()
    assert main(["explain", VIT, str(images[0]), "--target", "benign", "--results", str(results), "--output",
                 str(tmp_path / "other"), "--quiet"]) == 2
    assert one_error_line(capsys) == ("unknown target class 'benign'; use a class name or index "
                                      "(0 'malignant', 1 'normal, benign')")
    assert not (tmp_path / "other").exists()


# --- export -------------------------------------------------------------------------------------------------------

def test_torchscript_int8_says_which_layers_it_quantised(finished_runs, tmp_path, capsys):
    results, _ = finished_runs
    assert main(["export", RESNET, "--format", "torchscript", "--quantize", "int8", "--results", str(results),
                 "--output", str(tmp_path), "--quiet"]) == 0
    out = capsys.readouterr()
    assert out.err == ""
    expected = "1 Linear layer (torch.ao dynamic, Linear only); its 20 convolution layers stay fp32"
    assert f"int8 quantised: {expected}\n" in out.out
    assert json.loads((tmp_path / "model.int8.pt.json").read_text())["quantized"] == expected


def test_onnx_int8_counts_its_quantised_nodes_and_prints_nothing_else_under_quiet(finished_runs, tmp_path, capsys,
                                                                                   caplog):
    results, _ = finished_runs
    with caplog.at_level(logging.WARNING):
        assert main(["export", VIT, "--quantize", "int8", "--results", str(results), "--output", str(tmp_path),
                     "--quiet"]) == 0
    out = capsys.readouterr()
    assert out.err == ""
    # onnxruntime's advice to pre-process, through the root logger (which prints `WARNING:root:...` in a plain
    # process; pytest's handler on the root logger keeps it off stderr here)
    assert [r.getMessage() for r in caplog.records if r.name == "root"] == []
    # vit_tiny: 2 layers x (q, k, v, out, 2 MLP) + patch conv + classifier = 14 weight nodes; 2 x 2 attention MatMuls
    assert "int8 quantised: 14 of 18 MatMul/Gemm/Conv nodes" in out.out


def test_export_reads_only_its_own_runs_records(finished_runs, tmp_path, caplog):
    from benchmark.use.card import _same_config_other_seeds
    from benchmark.use.loaded import load_run

    results = tmp_path / "results"
    shutil.copytree(finished_runs[0] / "runs", results / "runs")
    shutil.copytree(finished_runs[0] / "checkpoints", results / "checkpoints",
                    ignore=lambda folder, names: [n for n in names if "resnet" in n])
    suite = results / "runs" / "use"
    (suite / "broken.json").write_text("{not json")
    own = json.loads(next(suite.glob(f"{VIT}*.json")).read_text())
    other_seed = {**own, "seed": 7, "run_id": own["run_id"].replace("-s0-", "-s7-"), "config": {**own["config"],
                                                                                             "seed": 7}}
    (suite / f"{other_seed['run_id']}.json").write_text(json.dumps(other_seed))
    with caplog.at_level(logging.DEBUG, logger="benchmark"):
        assert main(["export", own["run_id"], "--format", "torchscript", "--results", str(results), "--output",
                     str(tmp_path / "out"), "--quiet"]) == 0
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert [r["seed"] for r in _same_config_other_seeds(load_run(own["run_id"], results))] == [0, 7]  # seeds count


# --- records with non-finite results ------------------------------------------------------------------------------

def test_a_record_with_non_finite_results_is_named_once_and_counted_apart(tmp_path, caplog):
    from benchmark.records import nonfinite_result

    records = [make_record(seed=seed) for seed in (0, 1, 2, 3)]
    records[1]["test"].update(acc=float("nan"), auc=float("nan"))
    records[2]["test_predictions"]["probs"][5] = [float("nan"), float("nan")]
    paths = write_records(records, tmp_path / "runs")
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING, logger="benchmark"):
        warnings.simplefilter("always")
        assert main(["leaderboard", "--runs", str(tmp_path / "runs"), "--output", str(tmp_path / "out")]) == 0
    assert [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)] == []
    warned = [r.getMessage() for r in caplog.records if "not finite" in r.getMessage()]
    assert warned == [
        f"{paths[1]}: its test metrics (acc, auc) are not finite (NaN or infinite); counted as a failed run, not "
        f"scored — rerun it",
        f"{paths[2]}: its test probabilities are not finite (NaN or infinite); counted as a failed run, not "
        f"scored — rerun it"]
    board = (tmp_path / "out" / "leaderboard.md").read_text()
    assert "4 run records (2 completed, 0 failed, 2 with non-finite test results, not scored)" in board
    finite = [make_record(seed=0), make_record(seed=0, dataset="retinamnist")]
    finite[0]["test"]["loss"] = float("nan")  # knn has no loss
    finite[1]["test_predictions"]["labels"] = [2] * len(finite[1]["test_predictions"]["labels"])
    finite[1]["test"]["auc"] = float("nan")  # undefined on a test split of one class
    assert [nonfinite_result(r) for r in finite] == [None, None]


# --- --quiet ------------------------------------------------------------------------------------------------------

def test_quiet_drops_library_warnings(monkeypatch):
    """As transformers warns when peft trains a LoRA run (a cheap verb stands in for the run)."""
    import benchmark.data

    message = "`is_gradient_checkpointing` is deprecated and will be removed in v6."

    def listing():
        warnings.warn_explicit(message, FutureWarning, "transformers/modeling_utils.py", 3314,
                               module="transformers.modeling_utils")
        return ["breastmnist"]

    monkeypatch.setattr(benchmark.data, "list_datasets", listing)
    for flags, expected in ((["--quiet"], []), ([], [message])):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert main(["list", *flags]) == 0
        assert [str(w.message) for w in caught if issubclass(w.category, FutureWarning)] == expected


def test_a_run_id_two_suites_share_is_named_as_suite_slash_run_id(tmp_path, capsys):
    """A run's id does not depend on its suite, so two suites can hold the same run (medmnist-v2 and its
    robustness twin): the bare id is refused with the choices spelled as SUITE/RUN_ID, and either choice works."""
    from benchmark.errors import UserError
    from benchmark.use import find_record

    run_id = f"{RESNET}-s0-00849d17"
    runs = tmp_path / "runs"
    for suite in ("medmnist-v2", "medmnist-v2-robustness"):
        (runs / suite).mkdir(parents=True)
        (runs / suite / f"{run_id}.json").write_text("{}")
    assert main(["predict", run_id, "breastmnist:test", "--results", str(tmp_path)]) == 2
    message = one_error_line(capsys)
    assert f"(medmnist-v2/{run_id}, medmnist-v2-robustness/{run_id})" in message and "SUITE/RUN_ID" in message
    chosen = runs / "medmnist-v2-robustness" / f"{run_id}.json"
    assert find_record(f"medmnist-v2-robustness/{run_id}", tmp_path) == chosen
    assert find_record(f"medmnist-v2/{RESNET}-s0", tmp_path) == runs / "medmnist-v2" / f"{run_id}.json"  # a prefix
    with pytest.raises(UserError, match="no run 'medmnist-v2-gpu/"):
        find_record(f"medmnist-v2-gpu/{run_id}", tmp_path)
    for neither in ("medmnist-v2/", f"runs/medmnist-v2/{run_id}", str(runs / "medmnist-v2" / run_id)):
        with pytest.raises(UserError, match="neither a record file nor SUITE/RUN_ID"):
            find_record(neither, tmp_path)
