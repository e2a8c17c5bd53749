"""Export a run's model to ONNX or TorchScript (optionally int8), checked against PyTorch at export time.

Files, in `<results>/exports/<run_id>/` unless `output` says otherwise:

- `model.onnx` / `model.int8.onnx` / `model.pt` / `model.int8.pt`: input `pixel_values` float32 NCHW with a
  dynamic batch dimension, output `logits`;
- `<model file>.json`: the export check (max |Δprob| against the PyTorch model on the record's real test images,
  at two batch sizes); for int8 also both files' sizes and the test ACC/AUC of PyTorch fp32 vs int8 on the run's
  test split;
- `preprocessing.json`: sizes, channels, mean/std, resize (interpolate or pad, with the pad margins), the steps in
  order, class names (`benchmark.use.card.preprocessing`);
- `README.md`: the model card (Hugging Face format).

int8 is dynamic quantisation: `onnxruntime.quantization.quantize_dynamic` (MatMul/Gemm/Conv weights) for
ONNX, `torch.ao.quantization.quantize_dynamic` (Linear layers only) for TorchScript.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from benchmark.errors import UserError
from benchmark.metrics import classification_metrics
from benchmark.records import check_writable
from benchmark.use.card import model_card, preprocessing, render_card
from benchmark.use.loaded import DEFAULT_RESULTS, PREDICT_BATCH, LoadedRun, load_run, require_extra

log = logging.getLogger(__name__)

FORMATS = ("onnx", "torchscript")
QUANTIZE = (None, "int8")
FP32_TOLERANCE = 1e-4  # max |Δprob| an fp32 export may differ from PyTorch by
SUFFIX = {"onnx": ".onnx", "torchscript": ".pt"}
INPUT, OUTPUT = "pixel_values", "logits"


class ExportMismatch(UserError):
    """An fp32 export whose outputs differ from PyTorch's: a bug in the exporter or the model, never shipped."""


@dataclass
class ExportResult:
    path: Path
    check: dict  # what `<path>.json` holds
    folder: Path


def _softmax(logits: np.ndarray) -> np.ndarray:
    return torch.softmax(torch.as_tensor(logits, dtype=torch.float32), dim=1).numpy()


class Runner:
    """Logits of an exported file, for float32 NCHW pixel batches."""

    def __init__(self, path: Path, fmt: str, threads: int = 0):
        if fmt == "onnx":
            import onnxruntime

            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = threads  # 0 = onnxruntime's default
            self._session = onnxruntime.InferenceSession(str(path), sess_options=options,
                                                         providers=["CPUExecutionProvider"])
            self._run = lambda x: self._session.run([OUTPUT], {INPUT: x.numpy()})[0]
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated, still the format asked for
                module = torch.jit.load(str(path), map_location="cpu").eval()
            self._run = lambda x: module(x).detach().numpy()

    def __call__(self, pixels: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return np.asarray(self._run(pixels.contiguous()), dtype=np.float32)

    def probabilities(self, pixels: torch.Tensor, batch_size: int = 64) -> np.ndarray:
        return _softmax(np.concatenate([self(pixels[i:i + batch_size]) for i in range(0, len(pixels), batch_size)]))


def _example(loaded: LoadedRun) -> torch.Tensor:
    size = loaded.built.input_size
    return torch.zeros(2, loaded.built.in_channels, size, size)


def _fp32_module(loaded: LoadedRun) -> torch.nn.Module:
    return copy.deepcopy(loaded.model).to(memory_format=torch.contiguous_format).eval()


def write_onnx(module: torch.nn.Module, example: torch.Tensor, path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer and exporter deprecation chatter
        torch.onnx.export(module, (example,), str(path), input_names=[INPUT], output_names=[OUTPUT], dynamo=False,
                          dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}})


def write_torchscript(module: torch.nn.Module, example: torch.Tensor, path: Path) -> None:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.jit.trace(module, example, check_trace=False).save(str(path))


@contextlib.contextmanager
def root_logging_silenced():
    """onnxruntime's quantizer warns through the root logger (`logging.warning`, which would also install a
    handler printing `WARNING:root:...`); its advice (pre-process first) is not for our users."""
    root = logging.getLogger()
    handler, level = logging.NullHandler(), root.level
    root.addHandler(handler)
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


ONNX_WEIGHT_OPS = ("MatMul", "Gemm", "Conv")
ONNX_INT8_OPS = ("MatMulInteger", "ConvInteger", "DynamicQuantizeMatMul")


def quantize_onnx(source: Path, target: Path) -> str:
    """Dynamic int8 of the ONNX file; returns which nodes were quantised, counted in both graphs."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with root_logging_silenced():
        quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8)

    def count(path: Path, ops: tuple[str, ...]) -> int:
        return sum(node.op_type in ops for node in onnx.load(str(path), load_external_data=False).graph.node)

    return (f"{count(target, ONNX_INT8_OPS)} of {count(source, ONNX_WEIGHT_OPS)} MatMul/Gemm/Conv nodes "
            f"(onnxruntime dynamic; a MatMul of two activations keeps float)")


def quantize_torch(module: torch.nn.Module) -> tuple[torch.nn.Module, str]:
    """Dynamic int8 of the Linear layers (all torch.ao quantises dynamically); returns the module and which layers
    were quantised, with the weight layers that stay fp32 (a ResNet's convolutions: most of its size)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # quantized tensor creation is deprecated upstream
        quantized = torch.ao.quantization.quantize_dynamic(module, {torch.nn.Linear}, dtype=torch.qint8)
    done = sum(isinstance(m, torch.ao.nn.quantized.dynamic.Linear) for m in quantized.modules())
    convolutions = sum(isinstance(m, torch.nn.modules.conv._ConvNd) for m in quantized.modules())
    kept = f"; its {convolutions} convolution layers stay fp32" if convolutions else ""
    return quantized, f"{done} Linear layer{'' if done == 1 else 's'} (torch.ao dynamic, Linear only){kept}"


def check_against_pytorch(loaded: LoadedRun, path: Path, fmt: str, tolerance: float | None) -> dict:
    """Max |Δprob| of the exported file vs the PyTorch model on the record's real test images, whole batch
    and batch size 1 (the dynamic batch dimension); raises ExportMismatch above `tolerance` (None: no limit)."""
    images, _ = loaded.sample_images()
    pixels = loaded.pixels(images)
    expected = loaded.probabilities(images)
    runner = Runner(path, fmt)
    batched = float(np.abs(runner.probabilities(pixels) - expected).max())
    single = float(np.abs(runner.probabilities(pixels, batch_size=1) - expected).max())
    check = {"images": len(images), "image_source": "the record's test samples", "batch_sizes": [len(images), 1],
             "max_abs_dprob": max(batched, single), "tolerance": tolerance}
    log.info("%s: max |Δprob| vs PyTorch %.2e on %d test images", path.name, check["max_abs_dprob"], len(images))
    if tolerance is not None and not check["max_abs_dprob"] <= tolerance:
        path.unlink(missing_ok=True)
        raise ExportMismatch(f"{fmt} export of {loaded.run_id} differs from PyTorch by {check['max_abs_dprob']:.2e} "
                             f"in probability (limit {tolerance:.0e}); the file was removed — report this as a bug")
    return check


def test_metrics_change(loaded: LoadedRun, path: Path, fmt: str, data_root: str | None) -> dict:
    """Test ACC/AUC of PyTorch fp32 and of the exported file on the run's test split, and the change."""
    split = loaded.dataset_split("test", data_root=data_root)
    task = loaded.record["dataset"]["task"]
    runner = Runner(path, fmt)
    # batch by batch: a whole split at the input size can be tens of GB (TissueMNIST at 224 px: 28 GB)
    exported_probs = np.concatenate([runner.probabilities(loaded.pixels(split.images[start:start + PREDICT_BATCH]))
                                     for start in range(0, len(split.images), PREDICT_BATCH)])
    reference = classification_metrics(split.labels, loaded.probabilities(split.images), task)
    exported = classification_metrics(split.labels, exported_probs, task)
    keys = ("acc", "auc")
    return {"n_test": len(split.labels),
            "pytorch_fp32": {k: reference[k] for k in keys},
            "exported": {k: exported[k] for k in keys},
            "change": {k: exported[k] - reference[k] for k in keys}}


def export_model(run: str | Path | LoadedRun, fmt: str = "onnx", quantize: str | None = None,
                 output: str | Path | None = None, results: str | Path = DEFAULT_RESULTS,
                 data_root: str | None = None) -> ExportResult:
    """Export run `run` as `fmt` (onnx | torchscript), `quantize="int8"` for dynamic int8; returns the file."""
    if fmt not in FORMATS:
        raise UserError(f"unknown export format '{fmt}'; use one of {', '.join(FORMATS)}")
    if quantize not in QUANTIZE:
        raise UserError(f"unknown quantisation '{quantize}'; use int8 or leave it out")
    if fmt == "onnx":
        require_extra("export")
    loaded = run if isinstance(run, LoadedRun) else load_run(run, results)
    folder = Path(output) if output else loaded.record_path.parents[2] / "exports" / loaded.run_id
    check_writable(folder)
    example, fp32_module = _example(loaded), _fp32_module(loaded)
    fp32_path = folder / f"model{SUFFIX[fmt]}"  # int8 also writes (and checks) the fp32 file it is compared with
    (write_onnx if fmt == "onnx" else write_torchscript)(fp32_module, example, fp32_path)
    fp32_check = check_against_pytorch(loaded, fp32_path, fmt, FP32_TOLERANCE)
    fp32_check.update(format=fmt, quantize=None, file=fp32_path.name, bytes=fp32_path.stat().st_size)
    _write_json(fp32_path, fp32_check)
    if quantize is None:
        return _finish(loaded, folder, fp32_path, fp32_check, [fmt])
    path = folder / f"model.int8{SUFFIX[fmt]}"
    if fmt == "onnx":
        quantized = quantize_onnx(fp32_path, path)
    else:
        module, quantized = quantize_torch(fp32_module)
        write_torchscript(module, example, path)
    check = check_against_pytorch(loaded, path, fmt, tolerance=None)
    check.update(format=fmt, quantize="int8", file=path.name, bytes=path.stat().st_size,
                 fp32_bytes=fp32_check["bytes"], size_ratio=path.stat().st_size / fp32_check["bytes"],
                 quantized=quantized,
                 test=test_metrics_change(loaded, path, fmt, data_root))
    _write_json(path, check)
    return _finish(loaded, folder, path, check, [fmt, "int8"])


def _finish(loaded: LoadedRun, folder: Path, path: Path, check: dict, tags: list[str]) -> ExportResult:
    """Write the preprocessing constants and the model card beside the exported file."""
    _write_json(folder / "preprocessing", preprocessing(loaded))
    (folder / "README.md").write_text(render_card(model_card(loaded), formats=tags), encoding="utf-8")
    return ExportResult(path=path, check=check, folder=folder)


def _write_json(path: Path, content: dict) -> None:
    """`model.onnx` -> `model.onnx.json`; `preprocessing` -> `preprocessing.json`."""
    target = path.with_name(path.name + ".json")
    target.write_text(json.dumps(content, indent=1) + "\n", encoding="utf-8")
