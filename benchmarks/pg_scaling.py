"""``python -m benchmarks.pg_scaling``: 1, 2, 3 mailslot nodes behind HAProxy on one PostgreSQL.

Each node is a ``mailslot-pg`` server (one worker) in its own cgroup (v1 ``cpu``) capped
to the same CPU share (``--node-cpu``, default half a core); HAProxy (Debian's ``haproxy``,
TCP mode, round robin) spreads the benchmark's ``session`` load (log in, STAT/UIDL/LIST,
RETR every message, QUIT; plain) over them.  Reported per node count: sessions/s, each
node's CPU, PostgreSQL's and HAProxy's CPU per session.  Medians over ``--reps``.

When no cgroup v1 ``cpu`` hierarchy is writable (e.g. cgroup v2 only), the nodes run
uncapped and the report says so.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import corpus, pgcluster, pgstore, proctree
from benchmarks.loadgen import ClientPool, raise_nofile
from benchmarks.run import LOAD_USERS, MAIL_UID
from benchmarks.scenarios import Job
from benchmarks.servers import MailslotPg, free_port

CGROUP_ROOT = Path("/sys/fs/cgroup/cpu")
PERIOD_US = 100_000


def make_cgroup(name: str, cores: float) -> str:
    """A cgroup v1 cpu directory capped at ``cores``; "" when there is none we may write."""
    path = CGROUP_ROOT / name
    try:
        path.mkdir(exist_ok=True)
        (path / "cpu.cfs_period_us").write_text(str(PERIOD_US))
        (path / "cpu.cfs_quota_us").write_text(str(int(cores * PERIOD_US)))
    except OSError:
        return ""
    return str(path)


def remove_cgroup(path: str) -> None:
    if path:
        for _ in range(50):
            try:
                os.rmdir(path)
                return
            except OSError:
                time.sleep(0.1)


def throttled_seconds(path: str) -> float:
    if not path:
        return 0.0
    for line in (Path(path) / "cpu.stat").read_text().splitlines():
        if line.startswith("throttled_time"):
            return int(line.split()[1]) / 1e9
    return 0.0


def start_haproxy(workdir: Path, ports: list[int]) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    servers = "\n".join(f"    server n{k} 127.0.0.1:{p}" for k, p in enumerate(ports))
    config = workdir / "haproxy.cfg"
    config.write_text(
        f"""global
    maxconn 4000
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend pop3
    bind 127.0.0.1:{port}
    default_backend nodes
backend nodes
    balance roundrobin
{servers}
"""
    )
    proc = subprocess.Popen(
        ["haproxy", "-db", "-f", str(config)],
        stdout=(workdir / "haproxy.log").open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    return proc, port


def wait_listening(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"haproxy exited: {log.read_text(errors='replace')[-500:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"haproxy is not listening on {port}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.pg_scaling", description=__doc__)
    p.add_argument("--nodes", default="1,2,3")
    p.add_argument("--node-cpu", type=float, default=0.5, help="cores per node (cgroup quota)")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--duration", type=float, default=4.0)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--clients", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/pg_scaling.json"))
    args = p.parse_args(argv)
    counts = [int(n) for n in args.nodes.split(",")]
    if not shutil.which("haproxy"):
        print("haproxy is not installed (apt-get install haproxy)", file=sys.stderr)
        return 1
    raise_nofile()
    tmp = Path(tempfile.mkdtemp(prefix="mailslot-pgscale-"))
    tmp.chmod(0o755)
    results: dict[int, dict[str, list[float]]] = {n: {} for n in counts}
    notes: list[str] = []
    pool: ClientPool | None = None
    try:
        with pgcluster.running() as cluster:
            cluster.execute('CREATE DATABASE "scaling"')
            cluster.execute("CREATE EXTENSION pg_stat_statements", "scaling")
            data = corpus.Corpus(tmp, MAIL_UID, MAIL_UID)
            _ca, chain, key = corpus.make_certificate(tmp)
            users = [f"l{n:03d}" for n in range(LOAD_USERS)]
            for n in range(max(counts)):
                (tmp / f"node{n}").mkdir()
            nodes = [
                MailslotPg(
                    f"node{n}",
                    tmp / f"node{n}",
                    tmp,
                    cert=chain,
                    key=key,
                    workers=1,
                    dsn=cluster.dsn("scaling"),
                    pg_pid=cluster.pid,
                    node_id=f"bench-{n}",
                )
                for n in range(max(counts))
            ]
            nodes[0].upgrade()
            drops = {u: corpus.load_idents(i) for i, u in enumerate(users)}
            pgstore.load(cluster.dsn("scaling"), data, users, drops, tmp / "home")
            pool = ClientPool(args.clients)
            for rep in range(args.reps):
                for count in counts:
                    figures = measure(args, nodes[:count], pool, data, str(tmp / "ca.pem"), tmp)
                    if figures.pop("capped", 1.0) == 0.0:
                        notes.append("no writable cgroup v1 cpu hierarchy: nodes ran uncapped")
                    for k, v in figures.items():
                        results[count].setdefault(k, []).append(v)
                    rate = figures.get("sessions/s", 0)
                    print(f"rep {rep + 1} nodes {count}: {rate:.0f} sessions/s", flush=True)
    finally:
        if pool is not None:
            pool.close()
        shutil.rmtree(tmp, ignore_errors=True)
    table = {
        n: {k: round(statistics.median(v), 3) for k, v in figs.items()}
        for n, figs in results.items()
    }
    keys = sorted({k for figs in table.values() for k in figs})
    print("\n| figure | " + " | ".join(f"{n} node(s)" for n in counts) + " |")
    print("|---|" + "---|" * len(counts))
    for k in keys:
        print(f"| {k} | " + " | ".join(f"{table[n].get(k, '-')}" for n in counts) + " |")
    for note in sorted(set(notes)):
        print("note:", note)
    meta = {
        "command": " ".join(["python -m benchmarks.pg_scaling", *(argv or sys.argv[1:])]),
        "nproc": os.cpu_count(),
        "loadavg": os.getloadavg(),
        "node_cpu": args.node_cpu,
        "notes": sorted(set(notes)),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "medians": table, "runs": results}, indent=1))
    return 0


def measure(
    args: argparse.Namespace,
    nodes: list[MailslotPg],
    pool: ClientPool,
    data: corpus.Corpus,
    ca_path: str,
    tmp: Path,
) -> dict[str, float]:
    groups = [make_cgroup(f"mailslot-bench-{n.name}", args.node_cpu) for n in nodes]
    started: list[MailslotPg] = []
    haproxy: subprocess.Popen[bytes] | None = None
    try:
        for node, group in zip(nodes, groups, strict=True):
            node.cgroup = group
            node.start()
            started.append(node)
        haproxy, port = start_haproxy(tmp, [n.plain_port for n in nodes])
        wait_listening(port, haproxy, tmp / "haproxy.log")
        users = [f"l{n:03d}" for n in range(args.concurrency)]
        job = Job(
            kind="session",
            port=port,
            tls="none",
            ca_path=ca_path,
            users=users,
            expected=dict(data.expected),
            duration=args.duration,
        )
        pg = nodes[0].pg_pid
        cpu0 = [proctree.cpu_seconds(proctree.tree(n.pid)) for n in nodes]
        pg0 = proctree.cpu_seconds(proctree.tree(pg))
        ha0 = proctree.cpu_seconds([haproxy.pid])
        thr0 = [throttled_seconds(g) for g in groups]
        res = pool.run(job)
        cpu1 = [proctree.cpu_seconds(proctree.tree(n.pid)) for n in nodes]
        pg1 = proctree.cpu_seconds(proctree.tree(pg))
        ha1 = proctree.cpu_seconds([haproxy.pid])
        thr1 = [throttled_seconds(g) for g in groups]
        if res.errors or not res.ops:
            raise RuntimeError(f"{len(nodes)} nodes: {res.errors} errors: {res.describe_errors()}")
        ops = res.ops
        return {
            "sessions/s": ops / res.wall,
            "mailslot CPU/session ms (all nodes)": (sum(cpu1) - sum(cpu0)) / ops * 1e3,
            "mailslot node CPU, % of its cap (mean)": statistics.mean(
                (b - a) / res.wall / args.node_cpu * 100 for a, b in zip(cpu0, cpu1, strict=True)
            ),
            "node throttled s/s (mean)": statistics.mean(
                (b - a) / res.wall for a, b in zip(thr0, thr1, strict=True)
            ),
            "PostgreSQL CPU/session ms": (pg1 - pg0) / ops * 1e3,
            "PostgreSQL CPU, cores": (pg1 - pg0) / res.wall,
            "HAProxy CPU/session ms": (ha1 - ha0) / ops * 1e3,
            "client CPU, cores": res.cpu / res.wall,
            "capped": 1.0 if all(groups) else 0.0,
        }
    finally:
        if haproxy is not None:
            haproxy.send_signal(signal.SIGTERM)
            haproxy.wait(timeout=10)
        for node in started:
            node.stop()
        for group in groups:
            remove_cgroup(group)


if __name__ == "__main__":
    raise SystemExit(main())
