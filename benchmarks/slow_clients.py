"""Slow and idle clients against `prm serve`: /healthz latency while thousands of sockets hang.

    .venv/bin/python benchmarks/slow_clients.py [--bundle DIR] [--connections 2000]
        [--seconds 20] [--attacks idle ...] [--serve-args "--limit-concurrency 1000 ..."]

Without --bundle it first builds a small one (configs/tiny.yaml, one epoch): the weights do
not matter here. The service runs as a subprocess (`prm serve`, one uvicorn worker, defaults
unless --serve-args says otherwise). For each attack, a child process holds ``--connections``
sockets open to it and reconnects each one the service closes:

    none        no attacker: the baseline
    idle        connect and send nothing
    slow_head   send a request head one byte a second (slowloris)
    slow_body   send a whole head announcing a 100 kB body, then one body byte a second

Meanwhile this process probes GET /healthz 20 times a second, each on a new connection (as a
load balancer or a kubelet would), and samples the service's open file descriptors, memory
and CPU time. Failed probes (refused, reset, timed out after 5 s) count at the time they
took. Prints a markdown table and the machine's load average (other jobs skew the latencies);
exits 1 when a probe p99 is over 50 ms or a probe was not answered 200.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import multiprocessing
import os
import resource
import shlex
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from serve_latency import free_port, machine, start_service

ROOT = Path(__file__).resolve().parents[1]
ATTACKS = ("none", "idle", "slow_head", "slow_body")
PROBE_INTERVAL = 0.05  # seconds between /healthz probes
PROBE_TIMEOUT = 5.0  # a probe slower than this counts as failed, at this time
TARGET_P99_MS = 50.0
TRICKLE_INTERVAL = 1.0  # seconds between the bytes a slow client sends
RECONNECT_PAUSE = 0.05  # seconds an attacker waits before reopening a closed socket
SLOW_BODY_BYTES = 100_000
REQUEST_HEAD = (
    b"POST /rerank HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
    b"Content-Length: %d\r\n\r\n" % SLOW_BODY_BYTES
)


def build_bundle(out: Path) -> Path:
    """A bundle of configs/tiny.yaml, trained for one epoch on its simulated lists."""
    from prm.config import load_config
    from prm.data.loaders import load_list_data
    from prm.data.simulator import simulate
    from prm.pipeline import train_reranker
    from prm.pretrain.training import CTR_MODEL, attach_pv, pretrain
    from prm.serving.export import export_bundle

    config = load_config(ROOT / "configs" / "tiny.yaml")
    config = replace(config, train=replace(config.train, epochs=1))
    simulate(config.simulator, out / "data", progress=False)
    data = load_list_data(out / "data")
    pretrain(config, data, out / "pretrain", progress=False)
    train_reranker(config, attach_pv(data, out / "pretrain"), out / "run", progress=False)
    export_bundle(out / "run", out / "pretrain" / CTR_MODEL, out / "bundle", version="slow")
    return out / "bundle"


@dataclass
class AttackStats:
    opened: int = 0  # connections the service accepted
    failed: int = 0  # connects refused or reset
    closed_by_service: int = 0
    answered: Counter = field(default_factory=Counter)  # first status line the service sent
    open_now: int = 0
    open_peak: int = 0
    longest_hold: float = 0.0  # seconds the service let one socket stay open


async def hold_connection(attack: str, port: int, stats: AttackStats, stop: asyncio.Event) -> None:
    """One attacker: keep a socket open in the given way, reopening it whenever it is closed."""
    payload = {"idle": b"", "slow_head": REQUEST_HEAD, "slow_body": b"0" * SLOW_BODY_BYTES}[attack]
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            stats.failed += 1
            await asyncio.sleep(RECONNECT_PAUSE)
            continue
        stats.opened += 1
        stats.open_now += 1
        stats.open_peak = max(stats.open_peak, stats.open_now)
        opened = time.monotonic()
        if attack == "slow_body":
            writer.write(REQUEST_HEAD)
        sent = 0
        try:
            while not stop.is_set():
                try:
                    data = await asyncio.wait_for(reader.read(4096), TRICKLE_INTERVAL)
                except TimeoutError:
                    if sent < len(payload):
                        writer.write(payload[sent : sent + 1])
                        sent += 1
                    continue
                if not data:
                    stats.closed_by_service += 1
                    break
                if data.startswith(b"HTTP/1.1 "):
                    stats.answered[data[9:12].decode()] += 1
        except OSError:
            stats.closed_by_service += 1
        finally:
            stats.open_now -= 1
            stats.longest_hold = max(stats.longest_hold, time.monotonic() - opened)
            writer.close()
        await asyncio.sleep(RECONNECT_PAUSE)


def run_attack(attack: str, port: int, connections: int, ready, stop, results) -> None:
    """The attacker process: ``connections`` sockets held until ``stop`` is set."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    async def attack_all() -> AttackStats:
        stats = AttackStats()
        stopping = asyncio.Event()
        tasks = [
            asyncio.create_task(hold_connection(attack, port, stats, stopping))
            for _ in range(connections)
        ]
        while stats.opened + stats.failed < connections:  # every socket tried once
            await asyncio.sleep(0.05)
        ready.set()
        while not stop.is_set():
            await asyncio.sleep(0.05)
        stopping.set()
        await asyncio.gather(*tasks)
        return stats

    stats = asyncio.run(attack_all())
    results.put({**stats.__dict__, "answered": dict(stats.answered)})


def service_usage(pid: int) -> tuple[int, float]:
    """Open file descriptors and resident MiB of process ``pid``."""
    fds = len(list(Path(f"/proc/{pid}/fd").iterdir()))
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    rss_kib = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
    return fds, rss_kib / 1024


def cpu_seconds(pid: int) -> float:
    """User and system CPU time process ``pid`` has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def probe_healthz(port: int, seconds: float, pid: int) -> dict:
    """GET /healthz on a new connection every PROBE_INTERVAL for ``seconds``."""
    latencies, outcomes, fds, rss = [], Counter(), [], []
    cpu_before, start_all = cpu_seconds(pid), time.monotonic()
    end = start_all + seconds
    while time.monotonic() < end:
        start = time.perf_counter()
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=PROBE_TIMEOUT)
        try:
            connection.request("GET", "/healthz")
            response = connection.getresponse()
            response.read()
            outcome = str(response.status)
        except (OSError, http.client.HTTPException) as error:
            outcome = type(error).__name__
        finally:
            connection.close()
        elapsed = time.perf_counter() - start
        latencies.append(1e3 * elapsed)
        outcomes[outcome] += 1
        usage = service_usage(pid)
        fds.append(usage[0])
        rss.append(usage[1])
        time.sleep(max(0.0, PROBE_INTERVAL - elapsed))
    ms = np.asarray(latencies)
    return {
        "probes": ms.size,
        "p50": float(np.percentile(ms, 50)),
        "p99": float(np.percentile(ms, 99)),
        "max": float(ms.max()),
        "outcomes": dict(outcomes),
        "fds_peak": max(fds),
        "rss_peak": max(rss),
        "cpu": (cpu_seconds(pid) - cpu_before) / (time.monotonic() - start_all),
    }


def measure(attack: str, port: int, pid: int, connections: int, seconds: float) -> dict:
    """Probe /healthz for ``seconds`` while ``attack`` holds ``connections`` sockets."""
    if attack == "none":
        return {**probe_healthz(port, seconds, pid), "attack": {}}
    context = multiprocessing.get_context("spawn")
    ready, stop, results = context.Event(), context.Event(), context.Queue()
    attacker = context.Process(
        target=run_attack, args=(attack, port, connections, ready, stop, results)
    )
    attacker.start()
    if not ready.wait(timeout=120):
        attacker.kill()
        raise RuntimeError(f"the {attack} attacker did not open its connections within 120 s")
    probed = probe_healthz(port, seconds, pid)
    stop.set()
    stats = results.get(timeout=120)
    attacker.join(timeout=30)
    time.sleep(2 * TRICKLE_INTERVAL)  # let the service drop what the attacker left
    return {**probed, "attack": stats}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", help="a bundle from `prm export`; built when omitted")
    parser.add_argument("--connections", type=int, default=2000, help="sockets per attack")
    parser.add_argument("--seconds", type=float, default=20.0, help="probing time per attack")
    parser.add_argument("--serve-args", default="", help="extra `prm serve` flags, one string")
    parser.add_argument("--attacks", nargs="+", choices=ATTACKS, default=list(ATTACKS))
    args = parser.parse_args()
    started = time.perf_counter()
    load_before = os.getloadavg()[0]

    with tempfile.TemporaryDirectory(prefix="prm-slow-") as scratch:
        work = Path(scratch)
        if args.bundle:
            bundle = Path(args.bundle)
        else:
            print("building a small bundle ...", file=sys.stderr)
            bundle = build_bundle(work)
        port = free_port()
        service = start_service(bundle, port, work / "serve.log", shlex.split(args.serve_args))
        rows = []
        try:
            for attack in args.attacks:
                print(f"{attack}: {args.connections} connections ...", file=sys.stderr)
                rows.append(
                    (attack, measure(attack, port, service.pid, args.connections, args.seconds))
                )
        finally:
            service.terminate()
            service.wait(timeout=30)
            log = (work / "serve.log").read_text()

    print(f"machine: {machine()}")
    print(f"service: prm serve {args.serve_args or '(defaults)'}, 1 uvicorn worker")
    print(f"attacker sockets: {args.connections}; probing {args.seconds:.0f} s per attack")
    print(f"1-minute load average: {load_before:.1f} before, {os.getloadavg()[0]:.1f} after\n")
    print(
        "| attack | /healthz probes | p50 ms | p99 ms | max ms | probe outcomes | "
        "service CPU | service fds (peak) | service RSS MiB (peak) | "
        "attacker sockets open (peak) | longest a socket was held, s | closed by the service | "
        "service answers to attackers |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    failed = False
    for attack, r in rows:
        stats = r["attack"]
        outcomes = ", ".join(f"{k}: {v}" for k, v in sorted(r["outcomes"].items()))
        answers = ", ".join(f"{k}: {v}" for k, v in sorted(stats.get("answered", {}).items()))
        print(
            f"| {attack} | {r['probes']} | {r['p50']:.1f} | {r['p99']:.1f} | {r['max']:.1f} | "
            f"{outcomes} | {r['cpu']:.0%} | {r['fds_peak']} | {r['rss_peak']:.0f} | "
            f"{stats.get('open_peak', 0)} | {stats.get('longest_hold', 0):.1f} | "
            f"{stats.get('closed_by_service', 0)} | "
            f"{answers or '-'} |"
        )
        failed |= r["p99"] > TARGET_P99_MS or set(r["outcomes"]) != {"200"}
    warnings = [line for line in log.splitlines() if "WARNING" in line or "ERROR" in line]
    print(f"\nservice log: {len(warnings)} warning or error lines")
    for line in Counter(warnings).most_common(5):
        print(f"    {line[1]} x {line[0]}")
    print(f"\ntarget: /healthz p99 <= {TARGET_P99_MS:.0f} ms, every probe 200: {not failed}")
    print(f"benchmark wall time: {time.perf_counter() - started:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
