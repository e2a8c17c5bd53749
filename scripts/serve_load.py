"""Load benchmark of `benchmark serve`: start the server on a finished run, drive it with concurrent clients.

Starts `python -m benchmark serve RUN` (plus --serve-args) on a free loopback port in a subprocess, waits for
`GET /health`, then C clients (one asyncio task each, one keep-alive connection each) send `POST /predict`
requests of one image each, back to back, until --requests answers came back (after --warmup untimed ones).
The images are the run's own test images as PNG files; every answer is checked against `benchmark predict` on
the same image (probabilities to 1e-5): a wrong answer or a non-200 status counts as an error. The client is a
minimal HTTP/1.1 writer/reader over asyncio streams so that, on a machine with few cores, the load generator
takes as little CPU as possible away from the server it measures.

Writes `results/perf/serve-<model>-c<clients>[-<label>].json` with the exact command, the machine (CPU, cores,
load average before and after), the server command, requests/s, latency p50/p95/p99 and the errors, the
server's CPU time per request (all its threads; on a machine shared with other work this, unlike requests/s,
hardly depends on the share of the cores the server gets), and for scale the model's own images/s
(`LoadedRun.probabilities` in this process, batches of 1 and of C images), measured before the server starts.

    python -m benchmark run --suite medmnist-v2 --datasets breastmnist --models resnet18_28 --seeds 0 --epochs 2 \\
        --data-root /path/to/medmnist --output /tmp/serve-run
    python scripts/serve_load.py breastmnist-28-resnet18_28 --results /tmp/serve-run \\
        --data-root /path/to/medmnist --clients 32 --requests 2000
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import shlex
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import psutil
import torch
from PIL import Image

from benchmark.environment import device_name, git_commit, package_versions
from benchmark.use.loaded import load_run
from benchmark.use.predict import score

TOLERANCE = 1e-5


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def request_bytes(port: int, name: str, payload: bytes) -> bytes:
    """One complete keep-alive `POST /predict` with the image in the multipart field `files`."""
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"{name}\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode() + payload + f"\r\n--{boundary}--\r\n".encode()
    head = (f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: multipart/form-data; "
            f"boundary={boundary}\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    return head + body


async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> tuple[int, bytes]:
    """Send `request`, read one response (the server always sends Content-Length): status and body."""
    writer.write(request)
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = next(int(line.split(":", 1)[1]) for line in lines[1:] if line.lower().startswith("content-length:"))
    return status, await reader.readexactly(length)


async def drive(port: int, requests: list[bytes], expected: list[np.ndarray], clients: int, total: int,
                warmup: int) -> dict:
    """`clients` concurrent keep-alive clients; the first `warmup` answers are not timed."""
    latencies, errors, counter = [], [], iter(range(warmup + total))
    started = {}

    async def client() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for index in counter:
                item = index % len(requests)
                if index == warmup:
                    started["at"] = time.perf_counter()
                sent = time.perf_counter()
                try:
                    status, body = await exchange(reader, writer, requests[item])
                except (OSError, asyncio.IncompleteReadError, ValueError) as err:
                    errors.append(f"request {index}: {type(err).__name__}: {err}")
                    writer.close()
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                    continue
                elapsed = time.perf_counter() - sent
                if status != 200:
                    errors.append(f"request {index}: HTTP {status} {body[:200]!r}")
                else:
                    got = np.array(list(json.loads(body)["predictions"][0]["probabilities"].values()))
                    if np.abs(got - expected[item]).max() > TOLERANCE:
                        errors.append(f"request {index}: probabilities differ from predict's by "
                                      f"{np.abs(got - expected[item]).max():.2e}")
                if index >= warmup:
                    latencies.append(elapsed)
        finally:
            writer.close()

    await asyncio.gather(*(client() for _ in range(clients)))
    seconds = time.perf_counter() - started["at"]
    ms = np.array(latencies) * 1000
    return {"requests": len(latencies), "seconds": round(seconds, 2),
            "requests_per_second": round(len(latencies) / seconds, 1),
            "latency_ms": {f"p{q}": round(float(np.percentile(ms, q)), 1) for q in (50, 95, 99)}
            | {"mean": round(float(ms.mean()), 1), "max": round(float(ms.max()), 1)},
            "errors": len(errors), "error_examples": errors[:5]}


def model_speed(loaded, images: np.ndarray, batch: int, seconds: float = 5.0) -> float:
    """Images/s of the model alone (`LoadedRun.probabilities`, as the server calls it) on batches of `batch`."""
    batch_images = np.resize(images, (batch, *images.shape[1:]))
    loaded.probabilities(batch_images)  # warm-up
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        loaded.probabilities(batch_images)
        done += batch
    return round(done / (time.perf_counter() - started), 1)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_up(port: int, server: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server exited with status {server.returncode} before answering")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as conn:
                conn.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                if conn.recv(64).startswith(b"HTTP/1.1 200"):
                    return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"the server did not answer /health within {timeout:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="run id (or unique prefix) under --results, or a record path")
    parser.add_argument("--results", type=Path, default=Path("results"), help="results folder of the run [results]")
    parser.add_argument("--data-root", help="data folder of the run's dataset (its test images are sent) [the run's]")
    parser.add_argument("--clients", type=int, default=32, help="concurrent clients [32]")
    parser.add_argument("--requests", type=int, default=2000, help="timed requests [2000]")
    parser.add_argument("--warmup", type=int, default=64, help="untimed requests first [64]")
    parser.add_argument("--serve-args", default="", help="more `benchmark serve` arguments, one string")
    parser.add_argument("--label", default="", help="added to the output file name")
    parser.add_argument("--output", type=Path, default=Path("results/perf"), help="folder for the JSON [results/perf]")
    args = parser.parse_args()

    loaded = load_run(args.run, args.results)
    images = loaded.dataset_split("test", data_root=args.data_root).images
    expected = [np.array(list(p.probabilities.values()))
                for p in score(loaded, [str(i) for i in range(len(images))], images)]
    model_alone = {f"batch_{b}": model_speed(loaded, images, b) for b in (1, args.clients)}
    port = free_port()
    requests = [request_bytes(port, f"test-{i:03d}.png", png_bytes(image)) for i, image in enumerate(images)]
    serve_command = [sys.executable, "-m", "benchmark", "serve", str(args.run), "--results", str(args.results),
                     "--port", str(port), "--quiet", *shlex.split(args.serve_args)]
    load_before = os.getloadavg()
    with tempfile.TemporaryFile("w+") as log:  # a file, not a pipe: a full pipe would stall the server
        server = subprocess.Popen(serve_command, stdout=log, stderr=subprocess.STDOUT, text=True)
        try:
            wait_until_up(port, server)
            server_cpu = psutil.Process(server.pid).cpu_times()
            result = asyncio.run(drive(port, requests, expected, args.clients, args.requests, args.warmup))
            after = psutil.Process(server.pid).cpu_times()
            cpu_seconds = after.user + after.system - server_cpu.user - server_cpu.system
            result["server_cpu_ms_per_request"] = round(1000 * cpu_seconds / (args.warmup + args.requests), 2)
        finally:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
        log.seek(0)
        server_log = log.read()
    out = {
        "command": "python " + " ".join(shlex.quote(a) for a in [Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "what": f"POST /predict of `benchmark serve`, one {loaded.size}-px test image per request, {args.clients} "
                f"concurrent keep-alive clients in one asyncio process on the same machine; latency = request "
                f"sent to answer read; every answer checked against `predict` (probabilities to {TOLERANCE})",
        "server": "python -m benchmark serve RUN --results RESULTS --port PORT --quiet"
                  + (f" {args.serve_args}" if args.serve_args else ""),
        "run_id": loaded.run_id,
        "model": loaded.record["model"]["name"],
        "device": device_name(torch.device("cpu")),
        "cpu_cores": os.cpu_count(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "load_average_1min": {"before": round(load_before[0], 2), "after": round(os.getloadavg()[0], 2)},
        "clients": args.clients,
        "model_alone_images_per_second": model_alone,
        "warmup_requests": args.warmup,
        **result,
        "git_commit": git_commit(),
        "versions": package_versions(),
    }
    if result["errors"]:
        out["server_log_tail"] = server_log[-2000:]
    args.output.mkdir(parents=True, exist_ok=True)
    path = args.output / f"serve-{out['model']}-c{args.clients}{'-' + args.label if args.label else ''}.json"
    path.write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")
    latency = out["latency_ms"]
    print(f"{out['server_cpu_ms_per_request']} CPU ms/request, {out['requests_per_second']} requests/s, "
          f"p50 {latency['p50']} ms, p95 {latency['p95']} ms, p99 {latency['p99']} ms, {out['errors']} errors, "
          f"load {out['load_average_1min']['before']} -> {out['load_average_1min']['after']}  ({path})")


if __name__ == "__main__":
    main()
