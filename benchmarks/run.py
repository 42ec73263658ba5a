"""``python -m benchmarks.run``: mailslot against a throwaway Dovecot and Twisted, in one run.

Everything lives under a temp dir (configs, Maildirs, certificates, logs) and every server
is stopped on the way out, whatever happens. The exit status is non-zero when any reply was
wrong or any server failed: such a run is not a result.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import corpus, pgcluster, pgstore, servers, tls_logins
from benchmarks.loadgen import ClientPool, raise_nofile
from benchmarks.report import Report
from benchmarks.servers import Dovecot, Mailslot, MailslotPg, Server, TwistedPop3
from benchmarks.suites import Bench, Settings

# "idle" holds plain connections, "idle-tls" implicit-TLS ones (the method ``idle_tls``).
# "tls-login": implicit-TLS logins with an ECDSA and an RSA certificate, and their floor.
# "roundtrips" counts database round trips per session (mailslot-pg only).
BENCHMARKS = ("login", "tls-login", "session", "retr", "idle", "idle-tls", "bigbox", "roundtrips")
SERVERS = ("mailslot", "mailslot-pg", "dovecot", "dovecot-hp", "dovecot-sc0", "twisted")
MAIL_UID = 64123  # an unprivileged uid of our own: Dovecot refuses to serve mail as root
LOAD_USERS = 64
LATEST = Path("benchmarks/results/latest.json")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    p.add_argument("--quick", action="store_true", help="smoke test: about 5 minutes")
    p.add_argument("--only", default=",".join(BENCHMARKS), help="comma-separated benchmarks")
    p.add_argument("--servers", default=",".join(SERVERS), help="comma-separated servers")
    p.add_argument(
        "--out",
        type=Path,
        help=f"where the JSON (and the PNG beside it) go; default {LATEST} for a full run,"
        " a new file in the temp dir for any other (so a partial run never replaces the"
        " full run the README's table is from)",
    )
    p.add_argument("--reps", type=int, default=3, help="runs per figure (median taken)")
    p.add_argument("--clients", type=int, default=max(2, min(4, os.cpu_count() or 2)))
    p.add_argument("--concurrency", type=int, help="concurrent connections (one user each)")
    # One worker per core, as mailslot is deployed: a single event loop would leave a core idle
    # while Dovecot's processes use both.
    p.add_argument("--mailslot-workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--no-pipeline", action="store_true", help="one command per round trip")
    p.add_argument("--keep", action="store_true", help="keep the temp dir for inspection")
    p.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="tls-login, session, retr: py-spy record one worker of mailslot and mailslot-pg"
        " into DIR, and note pg_stat_statements' mean times (figures then not results)",
    )
    args = p.parse_args(argv)
    args.only = [b for b in args.only.split(",") if b]
    args.servers = [s for s in args.servers.split(",") if s]
    for name in args.only:
        if name not in BENCHMARKS:
            p.error(f"unknown benchmark {name!r}; choose from {', '.join(BENCHMARKS)}")
    for name in args.servers:
        if name not in SERVERS:
            p.error(f"unknown server {name!r}; choose from {', '.join(SERVERS)}")
    if args.out is None:
        args.out = LATEST if full_run(args) else partial_out()
    return args


def full_run(args: argparse.Namespace) -> bool:
    """Every benchmark against every server, three runs or more, nothing profiled."""
    return (
        set(args.only) == set(BENCHMARKS)
        and set(args.servers) == set(SERVERS)
        and not args.quick
        and args.reps >= 3
        and args.profile is None
    )


def partial_out() -> Path:
    """A fresh file in the temp dir, named after the time it was started."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    return Path(tempfile.gettempdir()) / f"mailslot-bench-{stamp}-{os.getpid()}.json"


def machine() -> dict[str, Any]:
    model = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "dovecot": servers.dovecot_version(),
        "twisted": servers.twisted_version(),
        "mailslot_commit": source_revision(),
    }


def source_revision() -> str:
    """HEAD of the work tree the server runs from, with "+dirty" when src/ has edits.

    The server is started from the work tree several times per run (fresh before and after
    idle), so a commit landing mid-run changes what is measured: the runner compares this
    at the start and at the end.
    """
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=servers.REPO,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "src"],
            capture_output=True,
            text=True,
            cwd=servers.REPO,
        ).stdout.strip()
    except OSError:
        return ""
    return rev + ("+dirty" if dirty else "")


def build(
    tmp: Path,
    names: list[str],
    settings: Settings,
    args: argparse.Namespace,
    users: list[str],
    data: corpus.Corpus,
    leaves: dict[str, tuple[Path, Path]],
    cluster: pgcluster.Cluster | None = None,
) -> list[Server]:
    chain, key = leaves["rsa"]
    passwd = tmp / "users"
    corpus.write_passwd(passwd, users, tmp / "home")
    made: list[Server] = []
    for name in names:
        workdir = tmp / name
        mail = tmp / f"mail-{name}"
        for d in (workdir, mail):
            d.mkdir()
            d.chmod(0o755)
        os.chown(mail, data.uid, data.gid)
        for i, user in enumerate(users):
            if user.startswith("l") or user.startswith("p"):
                data.make_maildir(mail, user, corpus.load_idents(i))
            elif user.startswith("i"):
                data.make_maildir(mail, user, [1000 + i % corpus.TEMPLATES])
        server: Server
        if name == "mailslot-pg":
            assert cluster is not None
            cluster.execute(f'CREATE DATABASE "{name.replace("-", "_")}"')
            cluster.execute("CREATE EXTENSION pg_stat_statements", name.replace("-", "_"))
            pg = MailslotPg(
                name,
                workdir,
                mail,
                passwd=passwd,
                cert=chain,
                key=key,
                workers=args.mailslot_workers,
                dsn=cluster.dsn(name.replace("-", "_")),
                pg_pid=cluster.pid,
            )
            pg.upgrade()
            drops = {
                u: corpus.load_idents(i) if u[0] in "lp" else [1000 + i % corpus.TEMPLATES]
                for i, u in enumerate(users)
                if u[0] in "lp"  # idle users have no messages here (idle is not run on it)
            }
            pgstore.load(pg.dsn, data, users, drops, tmp / "home")
            made.append(pg)
            continue
        if name == "twisted":
            server = TwistedPop3(name, workdir, mail, passwd=passwd, cert=chain, key=key)
        elif name == "mailslot":
            server = Mailslot(
                name,
                workdir,
                mail,
                passwd=passwd,
                cert=chain,
                key=key,
                workers=args.mailslot_workers,
            )
        else:
            server = Dovecot(
                name,
                workdir,
                mail,
                passwd=passwd,
                cert=chain,
                key=key,
                uid=data.uid,
                gid=data.gid,
                reuse_login=servers.DOVECOT_MODES[name][0],
                reuse_pop3=servers.DOVECOT_MODES[name][1],
                max_clients=max(settings.idle_sizes) + 300,
            )
        made.append(server)
    return made


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = Settings.quick() if args.quick else Settings()
    overrides: dict[str, Any] = {"reps": args.reps, "pipeline": not args.no_pipeline}
    if args.concurrency:
        overrides["concurrency"] = args.concurrency
    settings = Settings(**{**settings.__dict__, **overrides})
    if any(n.startswith("dovecot") for n in args.servers):
        servers.ensure_dovecot()
    if "twisted" in args.servers:
        servers.ensure_twisted()
    nofile = raise_nofile()
    idles = {"idle", "idle-tls"} & set(args.only)
    if idles and max(settings.idle_sizes) + 1000 > nofile:
        print(
            f"warning: RLIMIT_NOFILE hard limit {nofile} is low for the idle benchmark",
            file=sys.stderr,
        )

    tmp = Path(tempfile.mkdtemp(prefix="mailslot-bench-"))
    tmp.chmod(0o755)  # the Dovecot mail uid must reach its Maildirs
    started: list[Server] = []
    stack = contextlib.ExitStack()

    def cleanup() -> None:
        for s in started:
            s.stop()
        stack.close()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)

    atexit.register(cleanup)
    report = Report([])
    t_start = time.monotonic()
    started_at = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    load_start = os.getloadavg()
    rev_start = source_revision()
    pool: ClientPool | None = None
    try:
        print(f"setting up under {tmp} ...", flush=True)
        data = corpus.Corpus(tmp, MAIL_UID, MAIL_UID)
        # Maildirs for 10,000 idle users per server take minutes to make and to remove.
        idle_users = [f"i{n:05d}" for n in range(max(settings.idle_sizes) if idles else 0)]
        load_users = [f"l{n:03d}" for n in range(LOAD_USERS)]
        big_users = [f"big{r}" for r in range(settings.reps)]
        users = [*load_users, "p0", *idle_users, *big_users]
        _ca, leaves = corpus.make_certificates(tmp)
        cluster = (
            stack.enter_context(pgcluster.running()) if "mailslot-pg" in args.servers else None
        )
        for server in build(tmp, args.servers, settings, args, users, data, leaves, cluster):
            try:
                server.start()
            except Exception as exc:
                report.errors.append(f"{server.name} did not start: {exc}")
                print(f"{server.name} did not start: {exc}", file=sys.stderr)
                server.stop()
                continue
            started.append(server)
            print(f"{server.name}: plain/stls {server.plain_port}, tls {server.tls_port}")
        report.servers = [s.name for s in started]
        pool = ClientPool(args.clients)
        bench = Bench(
            settings,
            pool,
            data,
            report,
            str(tmp / "ca.pem"),
            load_users,
            idle_users,
            "p0",
            certificates={kind: leaves[kind] for kind in tls_logins.KINDS},
            profile_dir=args.profile,
        )
        for rep in range(settings.reps):
            for name in args.only:
                for server in started:
                    t0 = time.monotonic()
                    try:
                        if name == "roundtrips":
                            bench.roundtrips(server)
                        elif name == "bigbox":
                            bench.bigbox(server, rep)
                        else:
                            getattr(bench, name.replace("-", "_"))(server)
                    except Exception as exc:  # one broken step must not lose the others
                        report.errors.append(f"{server.name} {name}: {type(exc).__name__}: {exc}")
                    print(
                        f"rep {rep + 1}/{settings.reps} {name:8} {server.name:12} "
                        f"{time.monotonic() - t0:6.1f}s",
                        flush=True,
                    )
    except KeyboardInterrupt:
        report.errors.append("interrupted")
    finally:
        load_end = os.getloadavg()
        if pool is not None:
            pool.close()
        cleanup()
    if "tls-login" in args.only:
        tls_logins.summarise(report)

    meta = {
        "command": " ".join(["python -m benchmarks.run", *(argv or sys.argv[1:])]),
        "machine": machine(),
        "settings": settings.__dict__,
        "clients": args.clients,
        "elapsed_s": round(time.monotonic() - t_start, 1),
        "started": started_at,
        # The machine is shared: its 1-minute load average as the run started and ended.
        "loadavg_1min": [round(load_start[0], 2), round(load_end[0], 2)],
    }
    if meta["machine"]["mailslot_commit"] != rev_start:
        report.notes.append(
            f"mailslot's source changed during the run: {rev_start} at the start, "
            f"{meta['machine']['mailslot_commit']} at the end"
        )
    print()
    print(report.table())
    for note in report.notes:
        print("note:", note)
    report.write(args.out, meta)
    report.chart(args.out.with_suffix(".png"))
    print(f"\nwrote {args.out} and {args.out.with_suffix('.png')}")
    if report.errors:
        print("\nNOT A RESULT, errors:", file=sys.stderr)
        for err in report.errors:
            print(" ", err, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
