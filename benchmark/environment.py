"""Where a number was measured: device, package versions, git commit (for run records and perf results); and
the process-wide kernel settings a run may ask for (deterministic kernels)."""

from __future__ import annotations

import contextlib
import os
import platform
import re
import subprocess
import warnings
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import torch

from benchmark.errors import UserError

PACKAGES = ("torch", "torchvision", "transformers", "accelerate", "datasets", "medmnist", "scikit-learn",
            "numpy", "pillow")


def package_versions() -> dict[str, str | None]:
    versions = {"python": platform.python_version()}
    for package in PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return versions


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()


def measured_on(device: torch.device) -> dict:
    """What every record and perf result says of where it was measured: the device, its name, torch's intra-op
    thread count (another count sums floats in another order, so a CPU run reproduces only under the same one) and
    the package versions."""
    return {"device": device.type, "device_name": device_name(device), "torch_threads": torch.get_num_threads(),
            "cuda_tf32": tf32_in_use() if device.type == "cuda" else None, "versions": package_versions()}


def tf32_in_use() -> dict[str, bool]:
    """Whether fp32 matmuls (cuBLAS) and cuDNN convolutions may run in TensorFloat-32 (a 10-bit mantissa): cuDNN's
    default on Ampere and newer, so full precision there is not fp32 for convolutions unless it is turned off.

    Read from torch's fp32_precision settings where they exist ("none" defers to the parent setting): once those
    have been used, torch refuses to read the older allow_tf32 flags."""
    backends = torch.backends
    if not hasattr(backends.cuda.matmul, "fp32_precision"):  # torch before 2.9
        return {"matmul": backends.cuda.matmul.allow_tf32, "cudnn": backends.cudnn.allow_tf32}
    return {"matmul": _tf32(backends.cuda.matmul, backends), "cudnn": _tf32(backends.cudnn.conv, backends.cudnn, backends)}


def _tf32(*settings) -> bool:
    """The first of `settings` (a setting, then its parents) that is not "none" decides."""
    for setting in settings:
        value = getattr(setting, "fp32_precision", "none")
        if value != "none":
            return value == "tf32"
    return False


def git_commit() -> str | None:
    """The checkout's HEAD commit, or None outside a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def quiet_libraries() -> None:
    """Keep library chatter (load reports, weight-download bars) out of benchmark output."""
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


DETERMINISTIC_ENV = "BENCHMARK_DETERMINISTIC"
CUBLAS_WORKSPACE = ("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # what cuBLAS needs for reproducible matmuls
FLAG_VALUES = {"": False, "0": False, "false": False, "no": False, "1": True, "true": True, "yes": True}


def deterministic_requested(flag: bool | None = None) -> bool:
    """`flag` (the CLI's --deterministic), else $BENCHMARK_DETERMINISTIC (1/true/yes or 0/false/no/unset)."""
    if flag is not None:
        return flag
    text = os.environ.get(DETERMINISTIC_ENV, "").strip().lower()
    if text not in FLAG_VALUES:
        raise UserError(f"${DETERMINISTIC_ENV}={text!r} is not 1/true/yes or 0/false/no; fix or unset it")
    return FLAG_VALUES[text]


@contextlib.contextmanager
def deterministic_kernels(enabled: bool) -> Iterator[None]:
    """Inside, with `enabled`: torch's deterministic algorithms (a warning, not an error, for an op that has none),
    cuDNN's deterministic convolutions without autotuning, and cuBLAS's fixed workspace (it takes effect for
    handles created inside, so set it before a process's first GPU matmul). On a GPU, two runs of one config then
    give the same numbers, at some cost in speed; on a CPU they do anyway. The settings before come back after."""
    if not enabled:
        yield
        return
    saved = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark, os.environ.get(CUBLAS_WORKSPACE[0]))
    os.environ.setdefault(*CUBLAS_WORKSPACE)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[2], saved[3]
        if saved[4] is None:
            os.environ.pop(CUBLAS_WORKSPACE[0], None)


# torch's warning (under warn_only) for an op that ran without a deterministic kernel: "<op> does not have a ..."
NONDETERMINISTIC_ALERT = re.compile(r"(\S+) does not have a deterministic implementation")


@contextlib.contextmanager
def nondeterministic_ops() -> Iterator[set[str]]:
    """Collects, into the set it yields, the ops that ran inside without a deterministic kernel (the alerts that
    `deterministic_kernels` turns into warnings), each time one runs, instead of showing the warning (shown once
    per place, a second run's op would go unseen; --quiet would drop it); every other warning passes on as before."""
    seen: set[str] = set()
    with warnings.catch_warnings():  # puts the filters and showwarning back after
        warnings.filterwarnings("always", message=NONDETERMINISTIC_ALERT.pattern, category=UserWarning)
        show = warnings.showwarning

        def collect(message, category, filename, lineno, file=None, line=None):
            alert = NONDETERMINISTIC_ALERT.match(str(message))
            if alert:
                seen.add(alert.group(1))
            else:
                show(message, category, filename, lineno, file, line)

        warnings.showwarning = collect
        yield seen
