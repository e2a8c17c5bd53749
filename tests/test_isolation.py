"""`isolated_process_state` (conftest.py): what one test changes for the whole process does not reach the next.

The first test leaks on purpose what code under test has leaked before (on a CUDA machine: accelerate's state
built for the CPU, or in bf16 by the Trainer); the second, run after it in file order, would fail without the
fixture. The third checks the save/restore functions themselves on every kind of setting.
"""

from __future__ import annotations

import logging
import os

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from conftest import process_state, restore_process_state


def test_a_leaks_process_state_on_purpose():
    Accelerator(cpu=True, mixed_precision="bf16")  # the singleton now says: CPU, bf16
    torch.set_default_dtype(torch.float64)
    torch.backends.cudnn.benchmark = True
    torch.manual_seed(12345)
    os.environ["ACCELERATE_MIXED_PRECISION"] = "bf16"
    logging.getLogger("benchmark").setLevel(logging.CRITICAL)
    assert AcceleratorState().mixed_precision == "bf16"


def test_b_starts_from_a_clean_process_state():
    # accelerate refuses another precision on an initialised state ("AcceleratorState has already been initialized")
    assert Accelerator(mixed_precision="no").mixed_precision == "no"
    assert torch.get_default_dtype() == torch.float32
    assert torch.backends.cudnn.benchmark is False
    assert "ACCELERATE_MIXED_PRECISION" not in os.environ
    assert logging.getLogger("benchmark").level != logging.CRITICAL
    first = torch.rand(3)
    torch.manual_seed(12345)
    assert not torch.equal(first, torch.rand(3))  # the session's RNG state, not the seed the leaking test set


def test_restore_names_and_undoes_each_change():
    saved = process_state()
    logger = logging.getLogger("benchmark")
    handler = logging.NullHandler()
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(threads + 1)
        torch.set_float32_matmul_precision("medium" if torch.get_float32_matmul_precision() != "medium" else "high")
        torch.use_deterministic_algorithms(True, warn_only=True)
        logger.addHandler(handler)
        os.environ["BENCHMARK_TEST_LEAK"] = "1"
        changed = restore_process_state(saved)
    finally:
        logger.removeHandler(handler)
        os.environ.pop("BENCHMARK_TEST_LEAK", None)
    precision = {name for name in changed if "precision" in name}  # names depend on the torch version
    assert precision and set(changed) - precision == {"torch intra-op threads", "torch deterministic algorithms",
                                                      "logger benchmark", "environment"}
    assert process_state() == saved
    assert torch.get_num_threads() == threads and not torch.are_deterministic_algorithms_enabled()


def test_the_runners_accelerator_ignores_one_built_earlier_in_the_process():
    """Library use (a notebook that used accelerate in bf16, then runs a suite): the runner's Accelerator gets
    its own state instead of refusing to start or inheriting bf16."""
    from benchmark.distributed import make_accelerator

    Accelerator(cpu=True, mixed_precision="bf16")
    accelerator = make_accelerator()
    assert accelerator.mixed_precision == "no"
    assert accelerator.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
