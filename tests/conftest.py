"""Shared test setup: offline, quiet, deterministic; paths to the shipped data and the optional full data; and
`isolated_process_state`, which gives every test the same process-wide state whatever ran before it.

Shuffled order: `python -m pytest --random-order` (pytest-random-order, in the `test` extra; off by default;
`--random-order-seed N` repeats an order). pytest-randomly, if installed, shuffles by default: `-p no:randomly`.
"""

import logging
import os
import random
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
# A checkpoint at the end of every epoch (not by elapsed time), so that kills and resumes are deterministic;
# tests of the time-based default set it themselves.
os.environ.setdefault("BENCHMARK_CHECKPOINT_EVERY", "0")
# Deterministic kernels for every grid a test runs (run --deterministic): tests compare two runs bit for bit
# (resumed vs uninterrupted, host vs device data, N workers vs one), which a GPU gives only with them; on a CPU
# the numbers are the same either way (test_determinism). cuBLAS reads its workspace setting when the process
# first uses it, so it is set here, before any test touches a GPU.
os.environ.setdefault("BENCHMARK_DETERMINISTIC", "1")
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
FINISHED_RUNS_SUITE = """
name: use
data_root: bundled
seeds: [0]
recipes:
  v2: {optimizer: adam, lr: 1.0e-3, schedule: multistep, epochs: 1, batch_size: 16, augment: none}
  vit: {lr: 1.0e-3, epochs: 1, batch_size: 16, augment: none}
datasets: [breastmnist]
models:
  - {name: resnet18_28, recipe: v2}
  - {name: vit_tiny, recipe: vit}
"""


def pythonpath(*first: Path) -> str:
    """PYTHONPATH for a child process: `first` (default: the checkout) ahead of the caller's own entries, which may
    hold packages the environment lacks (the GPU check installs those into a folder on PYTHONPATH)."""
    own = os.environ.get("PYTHONPATH")
    return os.pathsep.join([*(str(p) for p in first or (Path(__file__).resolve().parents[1],)), *([own] if own else [])])


def need(*modules: str, extra: str) -> None:
    """Skip the calling test (or every test of the calling fixture) unless each optional module imports; `extra`
    names the package extra that brings it (the `test` extra brings them all)."""
    for module in modules:
        pytest.importorskip(module, reason=f"needs {module}: pip install -e '.[{extra}]' (or '.[test]')")


@pytest.fixture
def shared_data() -> Path:
    """The full real data beside the checkout (developer machines and CI); tests skip without it."""
    if not (SHARED_DATA / "medmnist" / "breastmnist.npz").exists():
        pytest.skip("full real data (../shared/data) not present")
    return SHARED_DATA


class LogLines(logging.Handler):
    """The messages logged under `benchmark` while installed (`.text`: one per line)."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())

    @property
    def text(self) -> str:
        return "\n".join(self.messages)


@pytest.fixture(scope="module")
def module_logs():
    """`caplog` for module-scoped fixtures: the package's log messages during the whole module."""
    handler, logger = LogLines(), logging.getLogger("benchmark")
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


@pytest.fixture(scope="session")
def finished_runs(tmp_path_factory):
    """One tiny real run per model (resnet18_28, vit_tiny: BreastMNIST subset, 32 images per split, one epoch) and
    PNGs of the run's test images: (results folder, PNG folder). Shared by every module that uses finished runs:
    read it, write anything else elsewhere.

    The runs train on the CPU on every machine: the verbs under test predict in full precision on the CPU, and
    their numbers are checked against the record's to 1e-5, which a run trained on a GPU (bf16 autocast, TF32
    convolutions) does not meet."""
    import numpy as np
    from PIL import Image

    from benchmark.cli import main
    from benchmark.use import load_run

    root = tmp_path_factory.mktemp("finished-runs")
    (root / "use.yaml").write_text(FINISHED_RUNS_SUITE)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ACCELERATE_USE_CPU", "true")  # read by accelerate when the runner builds its Accelerator
        assert main(["run", "--suite", str(root / "use.yaml"), "--limit", "32", "--output", str(root / "results"),
                     "--quiet"]) == 0
    test = load_run("breastmnist-28-resnet18_28", root / "results").dataset_split("test")
    pngs = root / "pngs"
    pngs.mkdir()
    for i, image in enumerate(test.images):
        Image.fromarray(np.asarray(image)[..., 0]).save(pngs / f"{i:03d}.png")
    return root / "results", pngs


# --------------------------------------------------------------------------------------------------------------
# Process-state isolation
# --------------------------------------------------------------------------------------------------------------
# What the code under test (or a library it calls) may change for the whole process, and a test can leak into
# the next: each getter reads the value, its setter puts it back. On a CPU-only machine most of these never
# change (which is why leaks showed up only on a CUDA machine); they are all checked everywhere.
TORCH_FLAGS = {
    "default dtype": (torch.get_default_dtype, torch.set_default_dtype),
    "default device": (torch.get_default_device, torch.set_default_device),
    "intra-op threads": (torch.get_num_threads, torch.set_num_threads),
    "grad mode": (torch.is_grad_enabled, torch.set_grad_enabled),
    "anomaly detection": (torch.is_anomaly_enabled, torch.set_anomaly_enabled),
    "deterministic algorithms": (
        lambda: (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()),
        lambda value: torch.use_deterministic_algorithms(value[0], warn_only=value[1])),
    "cudnn.enabled": (lambda: torch.backends.cudnn.enabled, lambda v: setattr(torch.backends.cudnn, "enabled", v)),
    "cudnn.benchmark": (lambda: torch.backends.cudnn.benchmark, lambda v: setattr(torch.backends.cudnn, "benchmark", v)),
    "cudnn.deterministic": (lambda: torch.backends.cudnn.deterministic,
                            lambda v: setattr(torch.backends.cudnn, "deterministic", v)),
    "cuda.matmul.allow_bf16_reduced_precision_reduction": (
        lambda: torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction,
        lambda v: setattr(torch.backends.cuda.matmul, "allow_bf16_reduced_precision_reduction", v)),
    "cuda.matmul.allow_fp16_reduced_precision_reduction": (
        lambda: torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction,
        lambda v: setattr(torch.backends.cuda.matmul, "allow_fp16_reduced_precision_reduction", v)),
    "sdpa flash": (torch.backends.cuda.flash_sdp_enabled, torch.backends.cuda.enable_flash_sdp),
    "sdpa mem-efficient": (torch.backends.cuda.mem_efficient_sdp_enabled, torch.backends.cuda.enable_mem_efficient_sdp),
    "sdpa math": (torch.backends.cuda.math_sdp_enabled, torch.backends.cuda.enable_math_sdp),
}


def _attribute(path: str):
    """(getter, setter) of a dotted attribute under torch.backends."""
    owner_path, _, name = path.rpartition(".")

    def owner():
        found = torch.backends
        for part in filter(None, owner_path.split(".")):
            found = getattr(found, part)
        return found

    return (lambda: getattr(owner(), name), lambda value: setattr(owner(), name, value))


# TF32 / reduced-precision float32 math. torch >= 2.9 keeps it in `fp32_precision` settings per backend (which the
# legacy `allow_tf32` flags and `set_float32_matmul_precision` also write, and which stay readable after either
# was used, unlike the legacy getters); older torch only has the legacy ones.
if hasattr(torch.backends, "fp32_precision"):
    TORCH_FLAGS.update({f"{path or 'backends'} fp32_precision": _attribute(f"{path}.fp32_precision".lstrip("."))
                        for path in ("", "cuda.matmul", "cudnn", "cudnn.conv", "cudnn.rnn", "mkldnn",
                                     "mkldnn.matmul", "mkldnn.conv", "mkldnn.rnn")})
else:
    TORCH_FLAGS.update({"float32 matmul precision": (torch.get_float32_matmul_precision,
                                                     torch.set_float32_matmul_precision),
                        "cudnn.allow_tf32": _attribute("cudnn.allow_tf32"),
                        "cuda.matmul.allow_tf32": _attribute("cuda.matmul.allow_tf32")})
# Loggers whose level, handlers and propagation the CLI and `quiet_libraries` set for the whole process (not the
# root logger: pytest's log capture adds and removes its handlers there around each phase of a test).
LOGGERS = ("benchmark", "transformers", "accelerate", "datasets", "torch")
# Changed by the test machinery itself, not by the code under test.
ENV_IGNORED = ("PYTEST_CURRENT_TEST",)


def rng_states() -> dict:
    states = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.random.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.random.set_rng_state(states["torch"])
    if "cuda" in states:
        torch.cuda.set_rng_state_all(states["cuda"])


def reset_accelerate_state() -> None:
    """See `benchmark.distributed.reset_accelerate_state`; nothing to reset where no test imported accelerate."""
    if "accelerate" in sys.modules:
        from benchmark import distributed

        distributed.reset_accelerate_state()


def logger_state(name: str) -> tuple:
    logger = logging.getLogger(name)
    return logger.level, list(logger.handlers), logger.propagate, logger.disabled


def set_logger_state(name: str, state: tuple) -> None:
    logger = logging.getLogger(name)
    logger.setLevel(state[0])
    logger.handlers[:] = state[1]
    logger.propagate, logger.disabled = state[2], state[3]


def transformers_verbosity():
    if "transformers" not in sys.modules:
        return None
    from transformers.utils import logging as hf_logging

    return hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()


def set_transformers_verbosity(state) -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity(state[0])
    (hf_logging.enable_progress_bar if state[1] else hf_logging.disable_progress_bar)()


def process_state() -> dict:
    """Every process-wide setting this file restores, by name (for comparing before and after a test)."""
    state = {f"torch {name}": getter() for name, (getter, _) in TORCH_FLAGS.items()}
    state.update({f"logger {name}": logger_state(name) for name in LOGGERS})
    state["environment"] = {k: v for k, v in os.environ.items() if k not in ENV_IGNORED}
    state["transformers verbosity"] = transformers_verbosity()
    return state


def restore_process_state(saved: dict) -> list[str]:
    """Put back what `process_state` saved; the names of the settings that had changed."""
    now = process_state()
    changed = [name for name in saved if now[name] != saved[name]]
    for name, (_, setter) in TORCH_FLAGS.items():
        if now[f"torch {name}"] != saved[f"torch {name}"]:
            setter(saved[f"torch {name}"])
    for name in LOGGERS:
        set_logger_state(name, saved[f"logger {name}"])
    environment = saved["environment"]
    for key in [k for k in os.environ if k not in environment and k not in ENV_IGNORED]:
        del os.environ[key]
    os.environ.update({k: v for k, v in environment.items() if os.environ.get(k) != v})
    if saved["transformers verbosity"] is not None:
        set_transformers_verbosity(saved["transformers verbosity"])
    return changed


_session_rng: dict = {}


@pytest.fixture(autouse=True)
def isolated_process_state(request):
    """Every test starts from the same process-wide state, whatever ran before it (in any order): the RNG states of
    the session's start, a fresh accelerate state, and the torch flags, logging setup and environment variables as
    they were before the test; afterwards those are put back and torch.compile's caches emptied (the names of
    what a test changed are logged at debug level: `-o log_cli_level=DEBUG` shows them)."""
    if not _session_rng:
        _session_rng.update(rng_states())
    saved = process_state()
    set_rng_states(_session_rng)
    reset_accelerate_state()
    yield
    reset_accelerate_state()
    if "torch._dynamo" in sys.modules:  # compiled code and its guards (a backend, a recompile limit) are per process
        torch._dynamo.reset()
    changed = restore_process_state(saved)
    if changed:
        logging.getLogger("tests.isolation").debug(f"{request.node.nodeid} changed {', '.join(changed)}; restored")
