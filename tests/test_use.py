"""Using finished runs: predict, export (ONNX / TorchScript / int8), explain, serve — on real tiny runs."""

import importlib.util
import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import need
from PIL import Image

from benchmark.cli import main
from benchmark.metrics import classification_metrics
from benchmark.use import load_run, predict

MODELS = ("resnet18_28", "vit_tiny")


@pytest.fixture(scope="module")
def results(finished_runs):
    """One tiny real run per model and PNGs of its test images (conftest's `finished_runs`, shared)."""
    return finished_runs


def run_id(results, model):
    return load_run(f"breastmnist-28-{model}", results).run_id


@pytest.mark.parametrize("model", MODELS)
def test_predict_on_png_files_reproduces_the_records_test_probabilities(results, model):
    results_dir, pngs = results
    loaded = load_run(f"breastmnist-28-{model}", results_dir)
    report = predict(loaded, [pngs])
    got = np.array([[p.probabilities[c] for c in loaded.class_names] for p in report.predictions])
    expected = np.array(loaded.record["test_predictions"]["probs"])
    assert [p.image.rsplit("/", 1)[-1] for p in report.predictions] == sorted(x.name for x in pngs.iterdir())
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    assert report.errors == []
    for p in report.predictions:
        assert p.confidence == max(p.probabilities.values()) and p.label in loaded.class_names


def test_any_image_mode_and_size_is_brought_to_the_stored_format(results, tmp_path):
    results_dir, pngs = results
    gray = np.asarray(Image.open(pngs / "000.png"))
    variants = {
        "gray.png": Image.fromarray(gray),
        "rgb.png": Image.fromarray(np.stack([gray] * 3, -1)),
        "rgba.png": Image.fromarray(np.dstack([gray, gray, gray, np.full_like(gray, 255)])),
        "gray16.png": Image.fromarray(gray.astype(np.uint16) * 257),
        "big.png": Image.fromarray(gray).resize((112, 112), Image.Resampling.NEAREST),
    }
    for name, image in variants.items():
        image.save(tmp_path / name)
    assert Image.open(tmp_path / "gray16.png").mode.startswith("I")
    report = predict(load_run("breastmnist-28-resnet18_28", results_dir), [tmp_path / n for n in variants])
    probs = {p.image.rsplit("/", 1)[-1]: list(p.probabilities.values()) for p in report.predictions}
    for name in ("rgb.png", "rgba.png", "gray16.png"):
        np.testing.assert_allclose(probs[name], probs["gray.png"], atol=1e-6, err_msg=name)
    # 4x enlarged then shrunk back bilinearly: close to, not equal to, the original pixels
    np.testing.assert_allclose(probs["big.png"], probs["gray.png"], atol=0.05)


def test_predict_cli_reports_an_unreadable_file_and_predicts_the_rest(results, tmp_path, capsys):
    results_dir, pngs = results
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png at all")
    out = tmp_path / "preds.json"
    status = main(["predict", "breastmnist-28-resnet18_28", str(pngs / "000.png"), str(broken), "breastmnist:test",
                   "--results", str(results_dir), "--output", str(out)])
    captured = capsys.readouterr()
    assert status == 1
    assert next(line for line in captured.err.splitlines() if "broken.png" in line).startswith(f"error: {broken}")
    written = json.loads(out.read_text())
    assert len(written["predictions"]) == 1 + 32 and len(written["errors"]) == 1
    split_rows = [p for p in written["predictions"] if p["image"].startswith("breastmnist:test[")]
    assert all(p["true_label"] in written["class_names"] for p in split_rows)
    record = load_run("breastmnist-28-resnet18_28", results_dir).record
    np.testing.assert_allclose([list(p["probabilities"].values()) for p in split_rows],
                               record["test_predictions"]["probs"], atol=1e-5)
    assert "000.png" in captured.out and "confidence" in captured.out


SCHEMES_SUITE = """
name: use-schemes
data_root: bundled
seeds: [1]
recipes:
  vit: {lr: 1.0e-2, epochs: 2, batch_size: 16, augment: none}
datasets: [breastmnist]
models:
  - {name: vit_tiny, recipe: vit, scheme: linear_probe}
  - {name: vit_tiny, recipe: vit, scheme: {name: lora, rank: 4, alpha: 8, target_modules: [q_proj, v_proj]}}
  - {name: vit_tiny, recipe: vit, scheme: {name: knn, k: 3}}
"""


@pytest.fixture(scope="module")
def scheme_results(tmp_path_factory):
    """Tiny real runs of the schemes whose best.pt is not the whole model (seed 1: not the default RNG state)."""
    need("peft", extra="lora")
    root = tmp_path_factory.mktemp("use-schemes")
    (root / "use-schemes.yaml").write_text(SCHEMES_SUITE)
    assert main(["run", "--suite", str(root / "use-schemes.yaml"), "--limit", "32", "--output",
                 str(root / "results"), "--quiet"]) == 0
    return root / "results"


@pytest.mark.parametrize("scheme", ["linear_probe", "lora"])
def test_linear_probe_and_lora_runs_predict_their_records_test_probabilities(scheme_results, scheme):
    loaded = load_run(f"breastmnist-28-vit_tiny-{scheme}", scheme_results)
    report = predict(loaded, ["breastmnist:test"])
    got = np.array([[p.probabilities[c] for c in loaded.class_names] for p in report.predictions])
    expected = np.array(loaded.record["test_predictions"]["probs"])
    assert report.errors == [] and got.shape == expected.shape == (32, 2)
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    assert not any("lora" in name for name in loaded.model.state_dict())  # LoRA: merged, as the test split was


def test_a_linear_probe_run_exports_to_onnx(scheme_results, tmp_path):
    need("onnx", "onnxruntime", extra="export")
    from benchmark.use.export import export_model

    loaded = load_run("breastmnist-28-vit_tiny-linear_probe", scheme_results)
    result = export_model(loaded, "onnx", output=tmp_path)
    assert result.check["max_abs_dprob"] <= 1e-4
    probs = _ort_probs(result.path, loaded.pixels(loaded.dataset_split("test").images))
    np.testing.assert_allclose(probs, loaded.record["test_predictions"]["probs"], atol=1e-4, rtol=0)


def _copied_run(results, run, tmp_path, **changes):
    """A copy of `run`'s record (with `changes` to its top level and scheme_details) and best.pt under tmp_path."""
    loaded = load_run(run, results)
    record = json.loads(loaded.record_path.read_text())
    for key, value in changes.items():
        target = record if key in record else record["scheme_details"]
        target.pop(key) if value is None else target.__setitem__(key, value)
    suite = record["suite"]
    (tmp_path / "runs" / suite).mkdir(parents=True)
    (tmp_path / "runs" / suite / loaded.record_path.name).write_text(json.dumps(record))
    (tmp_path / "checkpoints" / suite / record["run_id"]).mkdir(parents=True)
    (tmp_path / "checkpoints" / suite / record["run_id"] / "best.pt").write_bytes(loaded.checkpoint.read_bytes())
    return record["run_id"]


def test_a_linear_probe_backbone_that_differs_from_the_runs_is_refused(scheme_results, tmp_path, capsys, caplog):
    run = _copied_run(scheme_results, "breastmnist-28-vit_tiny-linear_probe", tmp_path, seed=0)
    assert main(["predict", run, "breastmnist:test", "--results", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: the backbone of 'vit_tiny' built again here differs from the run's") and "\n" not in err
    # a record from before backbone_sha256 still loads (its seed is right), with a warning that it is unchecked
    old = _copied_run(scheme_results, "breastmnist-28-vit_tiny-linear_probe", tmp_path / "old", backbone_sha256=None)
    loaded = load_run(old, tmp_path / "old")
    assert "cannot be checked" in caplog.text
    np.testing.assert_allclose(loaded.probabilities(loaded.dataset_split("test").images),
                               loaded.record["test_predictions"]["probs"], atol=1e-5, rtol=0)


def test_a_knn_run_says_it_keeps_no_model(scheme_results, capsys):
    assert main(["predict", "breastmnist-28-vit_tiny-knn", "breastmnist:test", "--results", str(scheme_results)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: scheme knn keeps no model") and "linear_probe" in err and "\n" not in err


def _ort_probs(path, pixels):
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.softmax(torch.from_numpy(session.run(None, {"pixel_values": pixels.numpy()})[0]), 1).numpy()


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_matches_pytorch(results, tmp_path, model, fmt):
    if fmt == "onnx":
        need("onnx", "onnxruntime", extra="export")
    from benchmark.use.export import export_model

    loaded = load_run(f"breastmnist-28-{model}", results[0])
    result = export_model(loaded, fmt, output=tmp_path)
    assert result.check["max_abs_dprob"] <= 1e-4
    split = loaded.dataset_split("test")
    pixels = loaded.pixels(split.images)
    if fmt == "onnx":  # independently of the export's own check: onnxruntime on the whole test split
        probs = _ort_probs(result.path, pixels)
    else:
        probs = torch.softmax(torch.jit.load(str(result.path))(pixels), 1).detach().numpy()
    np.testing.assert_allclose(probs, loaded.record["test_predictions"]["probs"], atol=1e-4, rtol=0)
    pre = json.loads((tmp_path / "preprocessing.json").read_text())
    assert pre["class_names"] == loaded.class_names and pre["input_size"] == loaded.built.input_size
    assert pre["mean"] == loaded.built.mean and pre["stored_channels"] == 1
    card = (tmp_path / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert front["pipeline_tag"] == "image-classification"
    metric = front["model-index"][0]["results"][0]["metrics"][0]
    assert metric["value"] == loaded.record["test"]["acc"] and "seed 0" in metric["name"]
    assert "not a medical device" in card and "## Limitations" in card and "## Training recipe" in card


@pytest.fixture(scope="module")
def padded_vit(results):
    """The vit_tiny run with MedMNIST+'s `resize: pad` preprocessing (its 28-px images centred in the 32-px input),
    its own weights: what a pad run's use path sees, without training one."""
    from dataclasses import replace

    from benchmark.data.transforms import BatchTransform

    loaded = load_run("breastmnist-28-vit_tiny", results[0])
    built = replace(loaded.built, resize="pad")
    return replace(loaded, built=built, transform=BatchTransform.for_model(built))


def test_following_preprocessing_json_of_a_pad_run_gives_the_evaluation_pixels(padded_vit):
    """A consumer who implements the JSON's fields in numpy feeds the exported model what evaluation fed it."""
    from benchmark.use.card import preprocessing

    pre = json.loads(json.dumps(preprocessing(padded_vit)))
    images = padded_vit.dataset_split("test").images  # the stored format: uint8 (N, 28, 28, 1)
    assert (pre["resize"], pre["stored_size"], pre["input_size"]) == ("pad", 28, 32)
    x = np.repeat(images / 255, pre["channels"] // pre["stored_channels"], axis=-1)
    x = (x - np.array(pre["mean"])) / np.array(pre["std"])
    margins = pre["padding"]
    x = np.pad(x, [(0, 0), (margins["top"], margins["bottom"]), (margins["left"], margins["right"]), (0, 0)])
    np.testing.assert_allclose(x.transpose(0, 3, 1, 2), padded_vit.pixels(images).numpy(), atol=1e-6, rtol=0)
    assert pre["steps"][-1].startswith("pad to 32 x 32 with zeros") and "2 rows above" in pre["steps"][-1]


def test_card_summary_is_the_leaderboard_cell_of_the_runs_seeds():
    from record_factory import make_record

    from benchmark.use.card import seed_summary

    seeds = [make_record(seed=s) for s in (0, 1, 2)]
    seeds[1]["test"]["auc"] = None  # a seed without that value: left out of the auc cell only
    summary = seed_summary(seeds, seeds[0]["run_id"])
    acc = [r["test"]["acc"] for r in seeds]
    assert summary["acc"]["n_seeds"] == 3 and len(set(acc)) > 1
    assert summary["acc"]["mean"] == pytest.approx(np.mean(acc), rel=1e-12, abs=0)
    assert summary["acc"]["std"] == pytest.approx(np.std(acc, ddof=1), rel=1e-12, abs=0)
    auc = [seeds[0]["test"]["auc"], seeds[2]["test"]["auc"]]
    assert summary["auc"] == {"mean": pytest.approx(np.mean(auc), rel=1e-12, abs=0),
                              "std": pytest.approx(np.std(auc, ddof=1), rel=1e-12, abs=0), "n_seeds": 2}
    one = seed_summary(seeds[:1], seeds[0]["run_id"])["f1_macro"]
    assert one == {"mean": seeds[0]["test"]["f1_macro"], "std": None, "n_seeds": 1}  # no std from one seed


def test_an_export_that_differs_from_pytorch_fails_loudly(results, tmp_path, monkeypatch):
    need("onnx", "onnxruntime", extra="export")
    from benchmark.use import export

    loaded = load_run("breastmnist-28-resnet18_28", results[0])
    original = export._fp32_module

    def perturbed(run):
        module = original(run)
        with torch.no_grad():
            module.fc.bias[0] += 0.01  # one class: a shift of every logit would not change the probabilities
        return module

    monkeypatch.setattr(export, "_fp32_module", perturbed)
    with pytest.raises(export.ExportMismatch, match="differs from PyTorch"):
        export.export_model(loaded, "onnx", output=tmp_path)
    assert not (tmp_path / "model.onnx").exists()


@pytest.mark.parametrize("fmt", ["onnx"])
def test_int8_export_loads_predicts_and_records_its_measured_change(results, tmp_path, fmt, monkeypatch):
    need("onnx", "onnxruntime", extra="export")
    from benchmark.use import export
    from benchmark.use.export import export_model

    monkeypatch.setattr(export, "PREDICT_BATCH", 10)  # the test split's 32 images in batches of 10, 10, 10, 2
    loaded = load_run("breastmnist-28-vit_tiny", results[0])
    result = export_model(loaded, fmt, "int8", output=tmp_path)
    written = json.loads((tmp_path / f"{result.path.name}.json").read_text())
    assert written["quantize"] == "int8" and written["bytes"] == result.path.stat().st_size
    assert written["bytes"] < written["fp32_bytes"] == (tmp_path / result.path.name.replace(".int8", "")).stat().st_size
    split = loaded.dataset_split("test")
    pixels = loaded.pixels(split.images)
    if fmt == "onnx":
        probs = _ort_probs(result.path, pixels)
    else:
        probs = torch.softmax(torch.jit.load(str(result.path))(pixels), 1).detach().numpy()
    np.testing.assert_allclose(probs.sum(1), 1, atol=1e-5)
    measured = classification_metrics(split.labels, probs, "binary-class")
    reference = loaded.record["test"]
    test = written["test"]
    assert test["n_test"] == 32
    assert test["exported"]["acc"] == pytest.approx(measured["acc"]) and test["exported"]["auc"] == pytest.approx(
        measured["auc"])
    assert test["pytorch_fp32"]["acc"] == pytest.approx(reference["acc"])
    assert test["change"]["auc"] == pytest.approx(measured["auc"] - reference["auc"], abs=1e-6)


def test_grad_cam_has_the_images_size_and_depends_on_the_class(results, tmp_path):
    need("pytorch_grad_cam", extra="explain")
    from benchmark.use.explain import explain, saliency

    results_dir, pngs = results
    big = tmp_path / "big.png"
    Image.open(pngs / "001.png").resize((60, 44)).save(big)
    explanations, errors = explain("breastmnist-28-resnet18_28", [pngs / "000.png", big, tmp_path / "missing.png"],
                                   results=results_dir, output=tmp_path / "out")
    assert len(errors) == 1 and "missing.png" in errors[0]
    assert [e.heatmap.shape for e in explanations] == [(28, 28), (44, 60)]
    for e in explanations:
        assert np.isfinite(e.heatmap).all() and e.heatmap.max() > 0 and e.method == "grad-cam"
        assert Image.open(e.path).size == e.heatmap.shape[::-1]
    loaded = load_run("breastmnist-28-resnet18_28", results_dir)
    images, _ = loaded.sample_images()
    first, _ = saliency(loaded, images[:4], [0] * 4)
    second, _ = saliency(loaded, images[:4], [1] * 4)
    assert np.abs(first - second).mean() > 0.05


def test_images_of_the_same_name_get_an_overlay_each(results, tmp_path):
    need("pytorch_grad_cam", extra="explain")
    from benchmark.use.explain import explain, overlay_stems

    results_dir, pngs = results
    assert overlay_stems([Path("a/x.png"), Path("b/X.png"), Path("x-1.png")]) == ["x-2", "X-3", "x-1"]
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "000.png").write_bytes((pngs / "001.png").read_bytes())
    images = [pngs / "000.png", tmp_path / "other" / "000.png", pngs / "002.png"]
    explanations, _ = explain("breastmnist-28-resnet18_28", images, results=results_dir, output=tmp_path / "out")
    assert [e.path.name.split(".")[0] for e in explanations] == ["000-1", "000-2", "002"]
    for e in explanations:
        np.testing.assert_array_equal(np.asarray(Image.open(e.path)), e.overlay)
    assert len(list((tmp_path / "out").iterdir())) == 3


def test_attention_rollout_for_a_vit_and_the_explanation_figure(results, tmp_path):
    from benchmark.use.explain import explain, write_explanation_figure

    results_dir, pngs = results
    explanations, errors = explain("breastmnist-28-vit_tiny", [pngs / "002.png"], results=results_dir,
                                   output=tmp_path)
    [e] = explanations
    assert errors == [] and e.method == "attention-rollout" and e.heatmap.shape == (28, 28)
    assert np.isfinite(e.heatmap).all() and e.heatmap.std() > 0
    [figure] = write_explanation_figure("breastmnist-28-vit_tiny", tmp_path, results=results_dir, dpi=40)
    assert figure.name.endswith("_explain.png") and Image.open(figure).size[0] > 100


def test_a_pad_runs_overlay_maps_the_image_without_the_padding(padded_vit, results, tmp_path):
    """The 28-px image fills rows and columns 2-29 of the 32-px input: its overlay is that part of the map."""
    need("pytorch_grad_cam", extra="explain")
    from benchmark.use.explain import attention_rollout, explain

    png = results[1] / "000.png"
    [e], errors = explain(padded_vit, [png], output=tmp_path)
    target = padded_vit.class_names.index(e.target)
    pixels = padded_vit.pixels(np.stack([padded_vit.stored(Image.open(png))]))  # as explain feeds them
    full = attention_rollout(padded_vit, pixels, [target])[0]
    assert errors == [] and e.heatmap.shape == (28, 28) and full.shape == (32, 32)
    np.testing.assert_allclose(e.heatmap, full[2:30, 2:30].numpy(), atol=1e-6, rtol=0)


def test_a_hugging_face_cnn_is_explained_with_grad_cam(results, tmp_path):
    """An HF ResNet (the resnet18_in1k preset's architecture, tiny and random here) has no attentions to roll out:
    Grad-CAM on its last stage, as for the project's ResNets."""
    need("pytorch_grad_cam", extra="explain")
    from dataclasses import replace

    from transformers import ResNetConfig, ResNetForImageClassification, ViTImageProcessor

    from benchmark.data.transforms import BatchTransform
    from benchmark.models import build_model, resolve_model
    from benchmark.use.explain import explain

    source = tmp_path / "hf-resnet"
    ResNetForImageClassification(ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1],
                                              layer_type="basic")).save_pretrained(source)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(source)
    vit = load_run("breastmnist-28-vit_tiny", results[0])
    torch.manual_seed(0)  # random weights whatever ran before (some give a map of zeros: every CAM below the ReLU)
    built = build_model(resolve_model("hf_resnet", source=str(source), pretrained=False), vit.class_names, 1)
    built.module.eval()
    cnn = replace(vit, built=built, transform=BatchTransform.for_model(built))
    [e], errors = explain(cnn, [results[1] / "000.png"], output=tmp_path / "out")
    assert errors == [] and e.method == "grad-cam" and e.path.name.startswith("000.grad-cam.")
    assert e.heatmap.shape == (28, 28) and np.isfinite(e.heatmap).all() and e.heatmap.std() > 0


def test_a_verb_without_its_extra_names_the_pip_install(results, monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    assert main(["export", "breastmnist-28-vit_tiny", "--results", str(results[0])]) == 2
    assert "pip install 'medmnist-benchmark[export]'" in capsys.readouterr().err


@pytest.fixture(scope="module")
def served(results):
    """The API on a free loopback port, served by uvicorn in a thread: its URL and the app. Upload limit 0.05 MB;
    batches of up to 8 images gathered for up to 100 ms, so that concurrent requests share forward passes."""
    need("fastapi", "uvicorn", extra="serve")
    need("httpx", extra="test")
    import uvicorn

    from benchmark.use.serve import create_app

    app = create_app(load_run("breastmnist-28-resnet18_28", results[0]), max_upload_mb=0.05, max_batch=8,
                     max_wait_ms=100)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    instance = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=instance.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not instance.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert instance.started
    yield f"http://127.0.0.1:{port}", app
    instance.should_exit = True
    thread.join(10)


@pytest.fixture
def server(served):
    return served[0]


def test_serve_predicts_what_predict_does(results, server):
    import httpx

    results_dir, pngs = results
    names = ["000.png", "001.png", "002.png"]
    files = [("files", (n, (pngs / n).read_bytes(), "image/png")) for n in names]
    answer = httpx.post(f"{server}/predict", files=files, timeout=30)
    assert answer.status_code == 200
    expected = predict("breastmnist-28-resnet18_28", [pngs / n for n in names], results=results_dir)
    got = answer.json()["predictions"]
    assert [p["image"] for p in got] == names
    for served, local in zip(got, expected.predictions):
        assert served["label"] == local.label
        assert served["probabilities"] == pytest.approx(local.probabilities, abs=1e-6)
    health = httpx.get(f"{server}/health").json()
    assert health == {"status": "ok", "run_id": run_id(results_dir, "resnet18_28")}
    card = httpx.get(f"{server}/model").json()
    assert card["run_id"] == health["run_id"] and card["test"]["this_run"]["acc"] is not None
    assert "not a medical device" in " ".join(card["limitations"])


def test_serve_answers_bad_uploads_with_4xx_json(server, results):
    import httpx

    pngs = results[1]
    cases = {
        "corrupt": ([("files", ("x.png", b"\x89PNG garbage", "image/png"))], 400),
        "empty": ([("files", ("e.png", b"", "image/png"))], 400),
        "wrong field": ([("image", ("000.png", (pngs / "000.png").read_bytes(), "image/png"))], 422),
        "oversized": ([("files", ("big.png", b"\0" * 100_000, "image/png"))], 413),
    }
    for case, (files, status) in cases.items():
        answer = httpx.post(f"{server}/predict", files=files, timeout=30)
        assert answer.status_code == status, case
        assert isinstance(answer.json()["error"], str), case
    assert httpx.post(f"{server}/predict", timeout=30).status_code == 422
    assert httpx.get(f"{server}/health").status_code == 200  # still up


def test_concurrent_requests_batched_together_answer_what_predict_does(served, results, tmp_path):
    """20 concurrent requests, some of several images, some RGB or 4x larger (brought to 28 px gray one by one
    before they join a batch) and one broken file: the broken one alone gets a 400, the others share forward
    passes and each gets predict's numbers for its own files."""
    import httpx

    server, app = served
    results_dir, pngs = results
    gray = sorted(pngs.iterdir())[:16]
    Image.open(gray[0]).convert("RGB").save(tmp_path / "rgb.png")
    Image.open(gray[1]).resize((112, 112), Image.Resampling.BILINEAR).save(tmp_path / "big.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    requests = [[p] for p in gray] + [[tmp_path / "rgb.png"], [tmp_path / "big.png"], gray[2:5],
                                      [gray[5], tmp_path / "broken.png"]]
    files = [*gray, tmp_path / "rgb.png", tmp_path / "big.png"]
    expected = {p.name: local for p, local in zip(files, predict("breastmnist-28-resnet18_28", files,
                                                                  results=results_dir).predictions)}
    batcher = app.state.batcher
    passes, scored = batcher.forward_passes, batcher.images_scored

    def ask(paths):
        return httpx.post(f"{server}/predict", files=[("files", (p.name, p.read_bytes(), "image/png")) for p in paths],
                          timeout=60)

    with ThreadPoolExecutor(len(requests)) as pool:
        answers = list(pool.map(ask, requests))
    assert [a.status_code for a in answers] == [200] * 19 + [400]
    assert "broken.png" in answers[-1].json()["error"]
    assert batcher.images_scored - scored == 16 + 2 + 3  # the broken request never reached the model
    assert batcher.forward_passes - passes < 19  # requests shared forward passes
    for paths, answer in zip(requests[:-1], answers[:-1]):
        served_predictions = answer.json()["predictions"]
        assert [p["image"] for p in served_predictions] == [p.name for p in paths]
        for item in served_predictions:
            local = expected[item["image"]]
            assert item["label"] == local.label
            assert item["probabilities"] == pytest.approx(local.probabilities, abs=1e-5, rel=0)


def test_a_failing_forward_pass_answers_json_and_the_server_goes_on(served, results, monkeypatch):
    import httpx

    server, app = served
    png = (results[1] / "000.png").read_bytes()

    def broken(images):
        raise RuntimeError("planted model failure")

    monkeypatch.setattr(app.state.batcher, "score_batch", broken)
    answer = httpx.post(f"{server}/predict", files=[("files", ("000.png", png, "image/png"))], timeout=30)
    assert answer.status_code == 500 and "RuntimeError" in answer.json()["error"]
    monkeypatch.undo()
    assert httpx.post(f"{server}/predict", files=[("files", ("000.png", png, "image/png"))], timeout=30).status_code == 200


@pytest.mark.parametrize("flag, value", [("--max-batch", "0"), ("--max-wait-ms", "-1"), ("--max-upload-mb", "0")])
def test_serve_refuses_a_bad_limit_before_loading_the_model(flag, value, capsys):
    assert main(["serve", "no-such-run", flag, value]) == 2  # the missing run would be the second error
    assert capsys.readouterr().err.startswith(f"error: {flag} must be")


def test_docs_pages_load_their_scripts_from_the_server(server):
    """/docs and /redoc work offline: every script and stylesheet they load is served by the API itself."""
    import re

    import httpx

    for page in ("/docs", "/redoc"):
        html = httpx.get(f"{server}{page}").text
        assets = re.findall(r"""(?:src|href)=["']([^"']+\.(?:js|css))["']""", html) + \
            re.findall(r"""url: *["']([^"']+)["']""", html)
        assert any(a.endswith(".js") for a in assets), page
        for asset in assets:
            assert asset.startswith("/"), f"{page} loads {asset} from elsewhere"
            answer = httpx.get(f"{server}{asset}")
            assert answer.status_code == 200 and len(answer.content) > 100, asset
