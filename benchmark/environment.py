"""Where a number was measured: device, package versions, git commit (for run records and perf results)."""

from __future__ import annotations

import platform
import subprocess
from importlib import metadata
from pathlib import Path

import torch

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
            "versions": package_versions()}


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
