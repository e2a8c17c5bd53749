"""The perf verb: end-to-end JSON on a tiny ViT, data-only mode, FLOP counting, MFU, argument checks."""

import json
import math

import pytest
import torch
from accelerate import Accelerator
from torch import nn

from benchmark import perf
from benchmark.cli import build_parser, perf_config
from benchmark.cli import main as cli_main
from benchmark.data.registry import BUNDLED_DIR
from benchmark.errors import UserError
from benchmark.models import build_model, resolve_model

TRAIN_PHASE_KEYS = {"images", "seconds", "images_per_second", "round_images_per_second", "peak_memory_mb",
                    "achieved_tflops", "mfu"}


def parse(*argv: str) -> perf.PerfConfig:
    """The API's config, built from the verb's options as the CLI does; on the CPU also on a CUDA machine (these
    tests pin CPU results: file names, full precision)."""
    return perf_config(build_parser().parse_args(["perf", "--device", "cpu", *argv]))


def positive_finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


threads_before = torch.get_num_threads()


@pytest.fixture(scope="module")
def train_result(tmp_path_factory):
    out = tmp_path_factory.mktemp("perf")
    args = parse("--model", "vit_tiny", "--batch", "4", "--steps", "2", "--warmup", "1", "--rounds", "1",
                 "--threads", "1", "--output", str(out))
    result, path = perf.run_perf(args)
    files = list(out.glob("*.json"))
    assert [f.name for f in files] == ["train-vit-tiny-breastmnist-28-b4-cpu.json"] == [path.name]
    assert json.loads(path.read_text()) == json.loads(json.dumps(result))
    return result


def test_train_mode_writes_every_figure(train_result):
    r = train_result
    assert r["mode"] == "train" and r["schema_version"] == perf.SCHEMA_VERSION
    assert r["command"] == ("python -m benchmark perf --model vit_tiny --batch 4 --steps 2 --warmup 1 --rounds 1 "
                            "--device cpu --threads 1 --output " + r["settings"]["output"])
    assert r["settings"]["model"] == "vit_tiny" and r["settings"]["batch"] == 4
    assert r["model"]["input_size"] == 32 and r["model"]["n_params"] > 0
    assert r["dataset"] == {**r["dataset"], "name": "breastmnist", "size": 28}
    assert r["environment"]["device"] == "cpu" and torch.__version__.startswith(r["environment"]["versions"]["torch"])
    assert r["environment"]["versions"]["transformers"] and r["environment"]["cpu_count"] >= 1
    assert r["environment"]["torch_threads"] == 1 and torch.get_num_threads() == threads_before
    assert r["mixed_precision"] == "no" and r["peak_bf16_tflops"] is None
    assert set(r["pipelines"]) == {"ours", "random", "tutorial"} and r["tutorial_error"] is None
    for name, pipeline in r["pipelines"].items():
        for phase in ("train", "inference"):
            figures = pipeline[phase]
            assert TRAIN_PHASE_KEYS <= set(figures), (name, phase)
            assert positive_finite(figures["images_per_second"]), (name, phase)
            assert figures["images"] == (4 if phase == "train" else 8) * 2
            assert figures["images_per_second"] == pytest.approx(figures["images"] / figures["seconds"])
            assert positive_finite(figures["peak_memory_mb"]) and figures["mfu"] is None
        train = pipeline["train"]
        assert train["seconds_per_epoch"] == pytest.approx(r["dataset"]["n_train"] / train["images_per_second"])
        flops = r["flops_per_image"]["train"]
        assert train["achieved_tflops"] == pytest.approx(train["images_per_second"] * flops / 1e12)
    assert math.isfinite(r["train_loss_while_timing"])


def test_ratios_are_quotients_of_the_stored_figures(train_result):
    p, ratios = train_result["pipelines"], train_result["ratios"]
    assert set(ratios) == {f"{phase}_ours_over_{other}" for phase in ("train", "inference")
                           for other in ("random", "tutorial")}
    for key, value in ratios.items():
        phase, other = key.split("_ours_over_")
        assert value == pytest.approx(p["ours"][phase]["images_per_second"] / p[other][phase]["images_per_second"])


def test_data_only_mode(tmp_path):
    args = parse("--data-only", "--input-size", "64", "--batch", "4", "--steps", "2", "--warmup", "1",
                 "--rounds", "2", "--threads", "1", "--output", str(tmp_path))
    perf.run_perf(args)
    r = json.loads((tmp_path / "data-breastmnist-28to64-b4-cpu.json").read_text())
    assert r["mode"] == "data" and r["input_size"] == 64 and r["augment"] == "tutorial"
    assert set(r["pipelines"]) == set(perf.DATA_PIPELINES)
    for figures in r["pipelines"].values():
        assert figures["images"] == 4 * 2 * 2 and positive_finite(figures["images_per_second"])
        assert len(figures["round_images_per_second"]) == 2
    for other in ("tutorial_transform", "tutorial_loader"):
        assert r["ratios"][f"over_{other}"] == pytest.approx(
            r["pipelines"]["ours"]["images_per_second"] / r["pipelines"][other]["images_per_second"])


def test_flops_of_a_linear_model_match_the_formula():
    d, k = 3 * 8 * 8, 5
    model = nn.Sequential(nn.Flatten(), nn.Linear(d, k))
    cpu = torch.device("cpu")
    # forward 2dk; backward only the weight gradient (2dk): the input needs no gradient
    assert perf.count_flops(model, 8, 3, cpu, None, train=True) == 4 * d * k
    assert perf.count_flops(model, 8, 3, cpu, None, train=False) == 2 * d * k
    assert all(p.grad is None for p in model.parameters())


def vit_forward_flops(image: int, patch: int, channels: int, hidden: int, layers: int, mlp: int, classes: int) -> int:
    patches = (image // patch) ** 2
    tokens = patches + 1  # + CLS
    embed = 2 * patches * channels * patch**2 * hidden
    attention = 2 * tokens * hidden * 3 * hidden + 2 * 2 * tokens**2 * hidden + 2 * tokens * hidden**2
    return embed + layers * (attention + 2 * 2 * tokens * hidden * mlp) + 2 * hidden * classes


def test_flops_of_vit_tiny_match_the_analytic_count():
    built = build_model(resolve_model("vit_tiny"), ["a", "b"], 1)
    cpu = torch.device("cpu")
    forward = vit_forward_flops(32, 4, 3, 64, 2, 128, 2)
    embed = 2 * 64 * 3 * 16 * 64
    assert perf.count_flops(built.module, 32, 3, cpu, None, train=False) == pytest.approx(forward, rel=1e-3)
    # backward = 2 x forward, less the input gradient of the patch embedding (pixels need none)
    assert perf.count_flops(built.module, 32, 3, cpu, None) == pytest.approx(3 * forward - embed, rel=1e-3)


def test_peak_table_and_mfu():
    assert perf.known_peak_tflops("NVIDIA H100 80GB HBM3") == 989
    assert perf.known_peak_tflops("NVIDIA H100 PCIe") == 756
    assert perf.known_peak_tflops("NVIDIA H200") == 989
    assert perf.known_peak_tflops("NVIDIA A100-SXM4-80GB") == 312
    assert perf.known_peak_tflops("NVIDIA L40S") == 362 and perf.known_peak_tflops("NVIDIA L4") == 121
    assert perf.known_peak_tflops("Tesla T4") is None
    assert perf.known_peak_tflops("NVIDIA H200 NVL") == 835  # not the SXM part's 989
    # names that contain a listed one: a laptop RTX A1000 is no A100, a GB200 has its own figure
    assert perf.known_peak_tflops("NVIDIA RTX A1000 6GB Laptop GPU") is None
    assert perf.known_peak_tflops("NVIDIA GB200") is None and perf.known_peak_tflops("NVIDIA B200") == 2250
    cpu = torch.device("cpu")
    assert perf.peak_tflops_for(cpu, None) == (None, None)
    assert perf.peak_tflops_for(cpu, 2.0) == (2.0, "--peak-tflops")
    figures = perf.utilisation(1000.0, 1e9, 100.0)
    assert figures["achieved_tflops"] == pytest.approx(1.0) and figures["mfu"] == pytest.approx(0.01)
    assert perf.utilisation(1000.0, 1e9, None)["mfu"] is None


@pytest.mark.parametrize("argv, message", [
    ((), "needs --model"),
    (("--model", "vit_tiny", "--batch", "1"), "--batch must be >= 2"),
    (("--model", "vit_tiny", "--warmup", "0"), "--warmup must be >= 1"),
    (("--data-only", "--peak-tflops", "0"), "--peak-tflops must be > 0"),
    (("--model", "resnet18_28", "--model-source", str(BUNDLED_DIR / "models" / "vit-tiny")),
     "resnet18_28 is a resnet preset: give --model a name of your own"),  # it was a traceback
])
def test_bad_arguments_are_user_errors(argv, message, tmp_path):
    with pytest.raises(UserError, match=message):
        perf.run_perf(parse(*argv, "--output", str(tmp_path)))


def test_index_batches_are_full_and_cover_each_epoch():
    batches = perf.index_batches(10, 4, 5, seed=0)
    assert [len(b) for b in batches] == [4] * 5
    flat = torch.cat(batches)
    assert sorted(flat[:10].tolist()) == list(range(10))  # the first epoch is a permutation


def test_a_local_model_directory_without_the_tutorial(tmp_path):
    source = perf.write_vit_config(tmp_path / "my-vit", image_size=32, patch_size=8, hidden_size=32,
                                   num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    args = parse("--model", str(source), "--skip-tutorial", "--batch", "4", "--steps", "1", "--warmup", "1",
                 "--rounds", "1", "--threads", "1", "--output", str(tmp_path / "out"))
    perf.run_perf(args)
    r = json.loads((tmp_path / "out" / "train-my-vit-breastmnist-28-b4-cpu.json").read_text())
    assert set(r["pipelines"]) == {"ours", "random"} and r["model"]["input_size"] == 32
    assert set(r["ratios"]) == {"train_ours_over_random", "inference_ours_over_random"}


def test_batches_larger_than_the_split_are_full_in_every_pipeline(tmp_path):
    args = parse("--model", "vit_tiny", "--dataset", "breastmnist", "--batch", "150", "--steps", "1",
                 "--warmup", "1", "--rounds", "1", "--threads", "1", "--output", str(tmp_path))
    perf.run_perf(args)  # bundled breastmnist has 120 training images
    r = json.loads((tmp_path / "train-vit-tiny-breastmnist-28-b150-cpu.json").read_text())
    assert {name: p["train"]["images"] for name, p in r["pipelines"].items()} == \
        {"ours": 150, "random": 150, "tutorial": 150}


def test_bf16_with_the_tutorial_then_a_full_precision_accelerator(tmp_path):
    """(a) sets accelerate up in full precision, then the Trainer of (c) in bf16: neither may refuse the other,
    and a full-precision run (what `benchmark run` starts) must still be possible in the same process."""
    args = parse("--model", "vit_tiny", "--mixed-precision", "bf16", "--batch", "4", "--steps", "1", "--warmup", "1",
                 "--rounds", "1", "--tutorial-steps", "2", "--threads", "1", "--output", str(tmp_path))
    perf.run_perf(args)
    r = json.loads((tmp_path / "train-vit-tiny-breastmnist-28-b4-cpu.json").read_text())
    assert r["mixed_precision"] == "bfloat16" and set(r["pipelines"]) == {"ours", "random", "tutorial"}
    # (c) timed its own number of steps (--tutorial-steps), (a) and (b) steps x rounds
    assert (r["timed_steps"], r["tutorial_timed_steps"]) == (1, 2)
    assert {name: p["train"]["images"] for name, p in r["pipelines"].items()} == {"ours": 4, "random": 4, "tutorial": 8}
    assert r["pipelines"]["tutorial"]["inference"]["images"] == 16
    assert Accelerator(cpu=True, mixed_precision="no", gradient_accumulation_steps=1).mixed_precision == "no"


def test_regional_compilation_compiles_each_repeated_block_in_place():
    vit = build_model(resolve_model("vit_tiny"), ["a", "b"], 1).module
    blocks = perf.repeated_blocks(vit)
    assert len(blocks) == 2 and {type(b).__name__ for b in blocks} == {"ViTLayer"}  # its two encoder layers
    resnet = build_model(resolve_model("resnet18_28"), ["a", "b"], 1).module
    assert [type(b).__name__ for b in perf.repeated_blocks(resnet)] == ["BasicBlock"] * 8  # 4 stages x 2
    names = list(vit.state_dict())
    model, regions = perf.compiled(vit, "regional", "eager")
    assert model is vit and regions == 2 and list(vit.state_dict()) == names  # checkpoints stay loadable
    assert all(b._compiled_call_impl is not None for b in blocks)
    with pytest.raises(UserError, match="no repeated blocks"):
        perf.compiled(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)), "regional")


def test_compiled_regions_and_the_profile_beside_the_json(tmp_path):
    """Regional compilation (traced, no code generation: fast on CPU) outside the timing, and --profile's table."""
    args = parse("--model", "vit_tiny", "--compile", "regional", "--compile-backend", "eager", "--profile",
                 "--skip-tutorial", "--batch", "4", "--steps", "2", "--warmup", "1", "--rounds", "1", "--threads", "1",
                 "--output", str(tmp_path))
    result, path = perf.run_perf(args)
    assert path.name == "train-vit-tiny-breastmnist-28-b4-compile-regional-cpu.json"
    assert (result["compile"], result["compiled_regions"], result["compile_backend"]) == ("regional", 2, "eager")
    assert "--compile regional --compile-backend eager --profile" in result["command"]
    ours = result["pipelines"]["ours"]["train"]
    assert ours["images"] == 4 * 2 and ours["warmup_seconds"] > 0  # the first (compiling) step is not timed
    profile = result["profile"]
    assert profile["steps"] == 2 and profile["sorted_by"] == "self_cpu_time_total" and len(profile["top"]) == 20
    times = [row["self_us"] for row in profile["top"]]
    assert times == sorted(times, reverse=True) and 0 < sum(row["self_share"] for row in profile["top"]) <= 1 + 1e-9
    table = (tmp_path / profile["table_file"]).read_text()
    assert profile["table_file"] == path.name.replace(".json", ".profile.txt") and "Self CPU" in table
    assert profile["top"][0]["name"] in table and "profile (2 steps of ours)" in perf.summary(result)


def test_profile_and_compile_need_a_model(tmp_path):
    with pytest.raises(UserError, match="drop them with --data-only"):
        perf.run_perf(parse("--data-only", "--profile", "--output", str(tmp_path)))


def test_perf_gets_its_own_accelerate_state_whatever_ran_before(tmp_path):
    """A process whose accelerate state says bf16 (a notebook that trained, a Trainer; on a CUDA machine also a
    state on the GPU before `--device cpu`) must not make (a)'s full-precision Accelerator refuse to start."""
    Accelerator(cpu=True, mixed_precision="bf16")
    result, _ = perf.run_perf(parse("--model", "vit_tiny", "--skip-tutorial", "--batch", "4", "--steps", "1",
                                    "--warmup", "1", "--rounds", "1", "--threads", "1", "--output", str(tmp_path)))
    assert result["mixed_precision"] == "no" and set(result["pipelines"]) == {"ours", "random"}


def test_gpu_profile_rows_are_the_kernels_with_shares_of_the_kernel_time():
    """A CUDA profile lists each kernel twice (itself, and in the self device time of the op that launched it):
    shares count it once, as torch's table does, and the rows are kernels, not an op beside its own kernel."""
    from types import SimpleNamespace

    from torch.autograd import DeviceType

    def event(name, device_type, us, annotation=False):
        return SimpleNamespace(key=name, count=1, device_type=device_type, self_device_time_total=us,
                               is_user_annotation=annotation)

    averages = [event("aten::addmm", DeviceType.CPU, 60.0), event("sm90_gemm_bf16", DeviceType.CUDA, 60.0),
                event("aten::add_", DeviceType.CPU, 40.0), event("elementwise_kernel", DeviceType.CUDA, 40.0),
                event("## forward ##", DeviceType.CUDA, 100.0, annotation=True)]
    rows = perf.top_ops(averages, "self_device_time_total")
    assert [(r["name"], r["self_share"]) for r in rows] == [("sm90_gemm_bf16", 0.6), ("elementwise_kernel", 0.4)]


def test_a_failing_tutorial_pipeline_keeps_ours_and_random_and_exits_1(tmp_path, monkeypatch, capsys):
    """(c) runs last: when it fails (as it might on a machine it never ran on), (a) and (b) are still written,
    with the reason (c) is missing, and the command says it failed."""
    def broken(*args, **kwargs):
        raise RuntimeError("CUDA error: an illegal memory access\nwas encountered")

    monkeypatch.setattr(perf, "measure_tutorial", broken)
    argv = ["perf", "--device", "cpu", "--model", "vit_tiny", "--batch", "4", "--steps", "1", "--warmup", "1",
            "--rounds", "1", "--threads", "1", "--output", str(tmp_path), "--quiet"]
    assert cli_main(argv) == 1
    r = json.loads((tmp_path / "train-vit-tiny-breastmnist-28-b4-cpu.json").read_text())
    assert set(r["pipelines"]) == {"ours", "random"} and set(r["ratios"]) == {"train_ours_over_random",
                                                                             "inference_ours_over_random"}
    assert r["tutorial_error"] == "RuntimeError: CUDA error: an illegal memory access was encountered"
    assert "(c), the tutorial pipeline, failed: RuntimeError" in capsys.readouterr().out
