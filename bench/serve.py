"""Serving throughput and latency: an exported model behind `jitorch.serve`, beside the same model in
PyTorch eager behind the same server.

    python bench/serve.py [--device cpu|cuda] [--threads 1] [--seconds 5] [--rounds 2] [--quick] [--out PATH]

The model is a digits-sized CNN (conv 1->32, conv 32->64 stride 2, 1024->128->10, batch dim dynamic).
jitorch's contender is the program `jitorch.export` wrote, loaded by `python -m jitorch.serve`;
PyTorch's is the same weights in a torch.nn model, run by the same server code (its batching,
its JSON handling) through a runner that calls PyTorch instead. Each server runs in a process of
its own; clients are threads in this process, each sending one-image requests (KServe v2 infer)
back to back for `--seconds` at 1, 8 and 32 concurrent clients. Reported: requests per second and
p50/p99 latency, best round of `--rounds` (contenders alternate). Both servers and the clients
share this machine's cores. A full run writes bench/results/serve.md (serve_cuda.md with --device cuda;
or --out).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import cpu_model, publish, results_path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONTENDERS = ("jitorch", "torch")
CLIENTS = (1, 8, 32)


def build(lib, weights: dict[str, np.ndarray] | None = None):
    nn = lib.nn
    model = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 64, 3, stride=2, padding=1),
                          nn.ReLU(), nn.Flatten(), nn.Linear(1024, 128), nn.ReLU(), nn.Linear(128, 10))
    if weights is not None:
        model.load_state_dict({k: lib.tensor(v) for k, v in weights.items()})
    return model.eval()


class TorchRunner:
    """The same interface as `jitorch.serve.Runner` (specs, `run(arrays)`), computing with PyTorch."""

    def __init__(self, model, specs, device: str) -> None:
        import torch

        self.torch, self.model, self.device = torch, model.to(device), device
        self.input_specs, self.output_specs = specs

    def run(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        with self.torch.no_grad():
            x = self.torch.from_numpy(np.ascontiguousarray(arrays[0])).to(self.device)
            return [self.model(x).cpu().numpy()]


def serve_torch(exported: str, weights: str, port_file: str, device: str, threads: str) -> None:
    """A server process for PyTorch's contender (run as `bench/serve.py --worker torch`)."""
    import torch

    import jitorch as jt
    from jitorch.serve import ServedModel, serve

    torch.set_num_threads(int(threads))
    program = jt.export.load(exported)
    with np.load(weights) as found:
        model = build(torch, {k: found[k] for k in found.files})
    runner = TorchRunner(model, (program.input_specs, program.output_specs), device)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    Path(port_file).write_text(str(sock.getsockname()[1]))
    serve([ServedModel("digits", "1", runner)], sock)


def start(contender: str, exported: str, weights: str, workdir: str, device: str,
          threads: int) -> tuple[subprocess.Popen, str]:
    """Start `contender`'s server process; (the process, its URL) once it answers ready. A server
    that exits first stops the run with its error output."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    errors = open(os.path.join(workdir, f"{contender}.stderr"), "w+")
    if contender == "jitorch":
        proc = subprocess.Popen([sys.executable, "-m", "jitorch.serve", f"digits={exported}", "--port", "0",
                                 "--device", device, "--threads", str(threads)],
                                env=env, stdout=subprocess.PIPE, stderr=errors, text=True)
        line = proc.stdout.readline().strip()
        url = line.rsplit(" ", 1)[-1] if "http://" in line else None
    else:
        port_file = os.path.join(workdir, "torch.port")
        if os.path.exists(port_file):
            os.remove(port_file)
        proc = subprocess.Popen([sys.executable, __file__, "--worker", "torch", exported, weights, port_file, device,
                                 str(threads)], env=env, stderr=errors)
        while proc.poll() is None and (not os.path.exists(port_file) or not Path(port_file).read_text()):
            time.sleep(0.05)
        url = f"http://127.0.0.1:{Path(port_file).read_text()}" if os.path.exists(port_file) else None
    for _ in range(1200):
        if url is None or proc.poll() is not None:
            proc.kill()
            errors.seek(0)
            raise SystemExit(f"the {contender} server did not start:\n{errors.read()[-3000:]}")
        try:
            with urllib.request.urlopen(url + "/v2/health/ready", timeout=5) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        time.sleep(0.05)
    return proc, url


def load(url: str, clients: int, seconds: float, images: np.ndarray) -> dict[str, float]:
    """`clients` threads sending one-image requests back to back for `seconds`: requests/s, p50, p99."""
    bodies = [json.dumps({"inputs": [{"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32",
                                      "data": img.ravel().tolist()}]}).encode() for img in images]
    latencies: list[list[float]] = [[] for _ in range(clients)]
    start_line, stop_at = threading.Barrier(clients + 1), [0.0]

    def client(k: int) -> None:
        start_line.wait()
        n = k
        while time.perf_counter() < stop_at[0]:
            req = urllib.request.Request(url + "/v2/models/digits/infer", bodies[n % len(bodies)],
                                         {"Content-Type": "application/json"})
            t0 = time.perf_counter()
            with urllib.request.urlopen(req, timeout=60) as r:
                r.read()
            latencies[k].append(time.perf_counter() - t0)
            n += clients

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    stop_at[0] = time.perf_counter() + seconds
    began = time.perf_counter()
    start_line.wait()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - began
    every = sorted(x for per in latencies for x in per)
    return {"rps": len(every) / elapsed, "p50": statistics.median(every) * 1e3,
            "p99": every[min(len(every) - 1, int(0.99 * len(every)))] * 1e3}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where both servers run the model")
    parser.add_argument("--threads", type=int, default=1,
                        help="threads per model call in both servers (jitorch.serve --threads; torch.set_num_threads)")
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds of load per measurement (default 5)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds, contenders alternating (default 2)")
    parser.add_argument("--quick", action="store_true", help="1 s, one round, printed only")
    parser.add_argument("--out", default=None, help="where a full run writes its page")
    parser.add_argument("--worker", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        serve_torch(*args.worker[1:])
        return
    import torch

    import jitorch as jt

    seconds, rounds = (1.0, 1) if args.quick else (args.seconds, args.rounds)
    workdir = tempfile.mkdtemp(prefix="jitorch-serve-bench-")
    jt.manual_seed(0)
    model = build(jt)
    exported, weights = os.path.join(workdir, "digits.jtexport"), os.path.join(workdir, "weights.npz")
    jt.export.save(jt.export.export(model, (jt.randn(4, 1, 8, 8),), dynamic_shapes=({0: "batch"},)), exported)
    np.savez(weights, **{k: v.numpy() for k, v in model.state_dict().items()})
    images = np.random.default_rng(0).standard_normal((64, 1, 8, 8), dtype=np.float32)
    best: dict[tuple[str, int], dict[str, float]] = {}
    for r in range(rounds):
        for contender in (CONTENDERS if r % 2 == 0 else CONTENDERS[::-1]):
            proc, url = start(contender, exported, weights, workdir, args.device, args.threads)
            try:
                load(url, 4, min(seconds, 1.0), images)  # warm-up: each batch size's first call plans it
                for clients in CLIENTS:
                    found = load(url, clients, seconds, images)
                    print(f"round {r + 1} {contender} {clients} clients: {found['rps']:.0f} req/s, "
                          f"p50 {found['p50']:.2f} ms, p99 {found['p99']:.2f} ms", flush=True)
                    key = (contender, clients)
                    if key not in best or found["rps"] > best[key]["rps"]:
                        best[key] = found
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=60)
    lines = [f"# Serving a digits CNN over HTTP: jitorch.serve with jitorch and with PyTorch eager "
             f"({datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC)", "",
             f"Device: {args.device}. Machine: {cpu_model()}, {os.cpu_count()} cores (servers and clients share them). "
             "Versions: "
             f"jitorch {jt.__version__}, torch {torch.__version__}, numpy {np.__version__}. Command: "
             f"`python bench/serve.py{' --device cuda' if args.device == 'cuda' else ''}"
             f"{' --quick' if args.quick else ''}` ({seconds:g} s per measurement, best of {rounds} round(s): "
             "each row's latencies are those of the round with its best throughput); "
             f"{args.threads} thread(s) per model call in both servers.", "",
             "| clients | jitorch req/s | PyTorch req/s | jitorch / PyTorch | jitorch p50 ms | PyTorch p50 ms "
             "| jitorch p99 ms | PyTorch p99 ms |", "|---|---|---|---|---|---|---|---|"]
    for clients in CLIENTS:
        j, t = best[("jitorch", clients)], best[("torch", clients)]
        lines.append(f"| {clients} | {j['rps']:.0f} | {t['rps']:.0f} | {j['rps'] / t['rps']:.2f}x | {j['p50']:.2f} "
                     f"| {t['p50']:.2f} | {j['p99']:.2f} | {t['p99']:.2f} |")
    lines += ["", "Each request is one 8x8 image (KServe v2 infer, JSON); the server batches concurrent requests "
              "(up to 32 rows, waiting at most 5 ms for more). The same server code answers for both "
              "contenders: only the model call differs (jitorch's exported program, or the torch.nn model).", ""]
    name = "serve" if args.device == "cpu" else "serve_cuda"
    publish("\n".join(lines), results_path(name, args.quick, args.out))


if __name__ == "__main__":
    main()
