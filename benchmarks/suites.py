"""The benchmarks, each measuring one server once and adding its figures to the report.

The runner calls them alternately (rep 1: every benchmark on every server, rep 2, ...) so a
slow drift of the machine hits all servers alike; figures are medians over the reps.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

from benchmarks import pgstore, proctree, tls_logins
from benchmarks.corpus import Corpus, bigbox_idents, warm_homes
from benchmarks.loadgen import ClientPool, _loop_factory
from benchmarks.pop3client import TlsMode
from benchmarks.report import Report, percentile
from benchmarks.scenarios import Job, Kind, Result, bigbox, client_context, probe
from benchmarks.servers import MailslotPg, Server

TLS_LABEL: dict[TlsMode, str] = {"none": "plain", "starttls": "stls", "implicit": "tls"}


@dataclass(frozen=True)
class Settings:
    reps: int = 3
    duration: float = 4.0
    concurrency: int = 16
    idle_sizes: tuple[int, ...] = (1000, 10000)
    probe_count: int = 200
    probe_duration: float = 10.0
    bigbox_messages: int = 100_000
    ramp_timeout: float = 150.0  # both idle stages; the count reached is reported
    pipeline: bool = True
    handshakes: int = 400  # tls-login: in-process handshakes per floor figure

    @classmethod
    def quick(cls) -> Settings:
        return cls(
            duration=1.0,
            concurrency=8,
            idle_sizes=(100, 500),
            probe_count=20,
            probe_duration=3.0,
            bigbox_messages=5_000,
            ramp_timeout=30.0,
            handshakes=100,
        )


@dataclass
class Bench:
    settings: Settings
    pool: ClientPool
    corpus: Corpus
    report: Report
    ca_path: str
    load_users: list[str]
    idle_users: list[str]
    probe_user: str
    # tls-login: (chain, key) by key type, tls_logins.KINDS; and where py-spy writes, if at all.
    certificates: dict[str, tuple[Path, Path]] = field(default_factory=dict)
    profile_dir: Path | None = None

    def job(self, server: Server, kind: Kind, tls: TlsMode, users: list[str]) -> Job:
        s = self.settings
        return Job(
            kind=kind,
            port=server.tls_port if tls == "implicit" else server.plain_port,
            tls=tls,
            ca_path=self.ca_path,
            users=users,
            expected=dict(self.corpus.expected),
            duration=s.duration,
            pipeline=s.pipeline,
            ramp_timeout=s.ramp_timeout,
        )

    def _check(self, server: Server, label: str, res: Result) -> bool:
        if res.errors:
            self.report.errors.append(
                f"{server.name} {label}: {res.errors} errors: {res.describe_errors()}"
            )
            return False
        if res.ops == 0:
            self.report.errors.append(f"{server.name} {label}: no operation completed")
            return False
        return True

    def _load(self, server: Server, kind: Kind, tls: TlsMode, label: str) -> Result | None:
        users = self.load_users[: self.settings.concurrency]
        pg = server.pg_pid if isinstance(server, MailslotPg) else 0
        cpu0 = proctree.cpu_seconds(proctree.tree(server.pid))
        pg0 = proctree.cpu_seconds(proctree.tree(pg)) if pg else 0.0
        res = self.pool.run(self.job(server, kind, tls, users))
        cpu1 = proctree.cpu_seconds(proctree.tree(server.pid))
        pg1 = proctree.cpu_seconds(proctree.tree(pg)) if pg else 0.0
        if not self._check(server, label, res):
            return None
        add = self.report.add
        add(f"{label} server CPU/op", "ms", "lower", server.name, (cpu1 - cpu0) / res.ops * 1e3)
        if pg:
            # PostgreSQL's backends are children of the postmaster: their CPU is reaped
            # into its cutime when a connection closes, counted live while it is open.
            add(
                f"{label} PostgreSQL CPU/op",
                "ms",
                "lower",
                server.name,
                (pg1 - pg0) / res.ops * 1e3,
            )
        add(f"{label} client CPU", "% of a core", "lower", server.name, res.cpu / res.wall * 100)
        return res

    def _loads(
        self, server: Server, kind: Kind, modes: tuple[TlsMode, ...]
    ) -> Iterator[tuple[str, Result]]:
        """Each mode's load run (label, result); a run with errors is left out.

        STLS is measured only on servers that offer it (Twisted's POP3 server does not).
        """
        for tls in modes:
            if tls == "starttls" and not server.stls:
                continue
            label = f"{kind} {TLS_LABEL[tls]}"
            with self._profiled(server, label):
                res = self._load(server, kind, tls, label)
            if res is not None:
                yield label, res

    def login(self, server: Server) -> None:
        add = self.report.add
        for label, res in self._loads(server, "login", ("none", "starttls", "implicit")):
            add(f"{label} rate", "logins/s", "higher", server.name, res.ops / res.wall)
            add(f"{label} p50", "ms", "lower", server.name, percentile(res.latencies, 50) * 1e3)
            add(f"{label} p99", "ms", "lower", server.name, percentile(res.latencies, 99) * 1e3)

    def tls_login(self, server: Server) -> None:
        """Implicit-TLS logins with each certificate type, and (for mailslot) their floor.

        The server is restarted with each certificate (``tls_logins.KINDS``, the same files
        for every server) and given a short unmeasured run first, so that the measured one
        does not pay for a cold start; it ends on the certificate it started with.  For
        mailslot, the floor's two parts are measured in the same rep: plaintext logins on its
        plaintext listener, and the handshake alone in this process
        (:func:`benchmarks.tls_logins.handshake_floor`) with mailslot's own ``SSLContext``.
        """
        from mailslot.tls.context import TlsContexts

        subject = server.name == "mailslot"
        add = self.report.add
        if subject:
            self._load(server, "login", "none", "tls-login plain")
        start = (server.cert, server.key)
        for kind in tls_logins.KINDS:
            chain, key = self.certificates[kind]
            label = f"tls-login {kind}"
            if subject:
                floor = tls_logins.handshake_floor(
                    TlsContexts(chain, key).current,
                    client_context(self.ca_path),
                    self.settings.handshakes,
                )
                add(f"{label} handshake floor", "ms", "lower", server.name, floor * 1e3)
            self._restart(server, chain, key)
            warm = replace(
                self.job(server, "login", "implicit", self.load_users[: self.settings.concurrency]),
                duration=min(1.0, self.settings.duration / 4),
            )
            self.pool.run(warm)
            with self._profiled(server, label):
                res = self._load(server, "login", "implicit", label)
            if res is not None:
                add(f"{label} rate", "logins/s", "higher", server.name, res.ops / res.wall)
                p99 = percentile(res.latencies, 99) * 1e3
                add(f"{label} p99", "ms", "lower", server.name, p99)
        if (server.cert, server.key) != start:
            self._restart(server, *start)

    @staticmethod
    def _restart(server: Server, chain: Path, key: Path) -> None:
        running = server.proc is not None and server.proc.poll() is None
        if running and (server.cert, server.key) == (chain, key):
            return
        server.stop()
        server.cert, server.key = chain, key
        server.start()

    @contextlib.contextmanager
    def _profiled(self, server: Server, label: str) -> Iterator[None]:
        """``py-spy record`` on one of mailslot's workers while the block runs (``--profile``).

        The profile is a speedscope file, ``DIR/<server>-<label>-<pid>.speedscope.json``, with
        native frames (OpenSSL's and asyncpg's compiled protocol among them); sampling stops
        the worker briefly 100 times a second (``--native`` needs that), so a profiled run's
        figures are not results.  On ``mailslot-pg`` the run also notes each statement's
        calls and mean execution time from ``pg_stat_statements`` over the block.
        """
        workers = proctree.tree(server.pid)[1:]
        if self.profile_dir is None or not server.name.startswith("mailslot") or not workers:
            yield
            return
        self.profile_dir.mkdir(parents=True, exist_ok=True)
        pid = min(workers)
        name = f"{server.name}-{label}".replace(" ", "-")
        out = self.profile_dir / f"{name}-{pid}.speedscope.json"
        if isinstance(server, MailslotPg):
            pgstore.reset_statements(server.dsn)
        command = ["py-spy", "record", "--pid", str(pid), "--native", "--format", "speedscope"]
        spy = subprocess.Popen(
            [*command, "--output", str(out)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            yield
        finally:
            spy.send_signal(2)  # SIGINT: py-spy writes what it has and exits
            try:
                _, err = spy.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                spy.kill()
                _, err = spy.communicate()
            if out.exists():
                self.report.notes.append(f"{server.name} {label}: py-spy profile {out}")
            else:
                self.report.notes.append(f"{server.name} {label}: py-spy failed: {err[-300:]!r}")
            if isinstance(server, MailslotPg):
                for calls, mean_ms, query in pgstore.statement_times(server.dsn):
                    self.report.notes.append(
                        f"{server.name} {label}: {calls} calls, {mean_ms:.3f} ms mean {query}"
                    )

    def session(self, server: Server) -> None:
        add = self.report.add
        for label, res in self._loads(server, "session", ("none", "implicit")):
            add(f"{label} rate", "sessions/s", "higher", server.name, res.ops / res.wall)
            add(f"{label} throughput", "MB/s", "higher", server.name, res.bytes / res.wall / 1e6)
            add(f"{label} p99", "ms", "lower", server.name, percentile(res.latencies, 99) * 1e3)

    def retr(self, server: Server) -> None:
        add = self.report.add
        for label, res in self._loads(server, "retr", ("none", "implicit")):
            add(f"{label} throughput", "MB/s", "higher", server.name, res.bytes / res.wall / 1e6)
            add(f"{label} p99", "ms", "lower", server.name, percentile(res.latencies, 99) * 1e3)

    def idle(self, server: Server, tls: TlsMode = "none") -> None:
        """One ramp-up per rep, held and measured at each size on the way (1,000, then 10,000).

        ``tls`` is how the held connections and the fresh client's probe connect: plain
        (``idle``, figures named "idle N ...") or implicit TLS (``idle-tls``, "idle tls N ...").
        """
        sizes = sorted(self.settings.idle_sizes)
        # A fresh server: a Python heap never shrinks and Dovecot keeps reusable processes,
        # so a baseline taken after earlier steps would hide part of the per-connection cost.
        server.stop()
        server.start()
        users = self.idle_users[: sizes[-1]]
        warm_homes(server.mail_root, users)
        job = replace(self.job(server, "idle", tls, users), stages=tuple(sizes))
        name = "idle" if tls == "none" else f"idle {TLS_LABEL[tls]}"
        self.pool.renew()
        # After the client processes exist: they map the same Python and libraries, and a
        # page shared by more processes counts for less in each one's PSS.
        base = proctree.settled_pss_bytes(server.pid)
        run = self.pool.hold(job)
        errors_before = 0
        try:
            for k, size in enumerate(sizes):
                if k:
                    self.pool.advance(run)
                now = run.snapshot()
                go_on = self._idle_stage(
                    server, tls, f"{name} {size}", size, now, base, errors_before
                )
                errors_before = now.errors
                if not go_on:
                    break
        finally:
            final = self.pool.release(run)
        if final.errors > errors_before:
            self.report.errors.append(
                f"{server.name} {name} release: {final.errors - errors_before} more errors "
                f"(all: {final.describe_errors()})"
            )
        # The next steps get a fresh server too: Dovecot with service_count = 0 keeps the
        # pop3 processes of 10,000 sessions and kills them over the next minutes (idle_kill),
        # which made its logins in the following rep 30 times slower in one run.
        server.stop()
        server.start()

    def idle_tls(self, server: Server) -> None:
        """``idle`` over implicit TLS (RFC 8314): what a held TLS session costs the server."""
        self.idle(server, "implicit")

    def _idle_stage(
        self,
        server: Server,
        tls: TlsMode,
        label: str,
        size: int,
        res: Result,
        base: int,
        errors_before: int,
    ) -> bool:
        """Figures for ``size`` held connections; False when the ramp cannot go on."""
        held_pss = proctree.pss_bytes(proctree.tree(server.pid))
        s = self.settings
        pjob = self.job(server, "login", tls, [self.probe_user])
        fresh = probe(pjob, self.probe_user, s.probe_count, s.probe_duration)
        add = self.report.add
        add(f"{label} held", "connections", "higher", server.name, res.held)
        # How fast a server takes connections decides how long a reconnect storm lasts.
        add(f"{label} ramp-up", "logins/s", "higher", server.name, res.held / res.ramp)
        if res.held < size:
            self.report.notes.append(
                f"{server.name} {label}: held {res.held}/{size}, {res.refused} not taken "
                f"({res.stop_reason})"
            )
        ok = True
        if res.errors > errors_before:
            self.report.errors.append(
                f"{server.name} {label}: {res.errors - errors_before} errors "
                f"(all so far: {res.describe_errors()})"
            )
            ok = False
        ok = self._check(server, f"{label} probe", fresh) and ok
        if not ok or res.held == 0:
            return False
        add(f"{label} PSS/conn", "KiB", "lower", server.name, (held_pss - base) / res.held / 1024)
        add(f"{label} client PSS", "MiB", "lower", server.name, res.client_pss / 2**20)
        add(
            f"{label} fresh greeting p99",
            "ms",
            "lower",
            server.name,
            percentile(fresh.greetings, 99) * 1e3,
        )
        add(
            f"{label} fresh login p99",
            "ms",
            "lower",
            server.name,
            percentile(fresh.latencies, 99) * 1e3,
        )
        return res.held >= size

    def bigbox(self, server: Server, rep: int) -> None:
        """A fresh 100,000-message maildrop per rep, so "first" is always a cold first."""
        user = f"big{rep}"
        count = self.settings.bigbox_messages
        idents = bigbox_idents(count)
        total = sum(self.corpus.expected[i].size for i in idents)
        if isinstance(server, MailslotPg):
            pgstore.bulk_maildrop(server.dsn, self.corpus, user, idents)
        else:
            self.corpus.make_maildir(server.mail_root, user, idents)
        job = self.job(server, "login", "none", [user])
        try:
            with asyncio.Runner(loop_factory=_loop_factory) as runner:
                first = runner.run(bigbox(job, user, count, total))
                second = runner.run(bigbox(job, user, count, total))
        except Exception as exc:
            self.report.errors.append(f"{server.name} bigbox: {type(exc).__name__}: {exc}")
            return
        finally:
            if isinstance(server, MailslotPg):
                pgstore.drop_account(server.dsn, user)
            else:
                shutil.rmtree(Path(server.mail_root) / user, ignore_errors=True)
        self.report.add(f"bigbox {count} first", "s", "lower", server.name, first)
        self.report.add(f"bigbox {count} second", "s", "lower", server.name, second)

    def roundtrips(self, server: Server, sessions: int = 20) -> None:
        """Database round trips per POP3 session on ``mailslot-pg`` (others: nothing to count).

        Counted in PostgreSQL: the delta of ``pg_stat_statements`` calls (every statement,
        BEGIN and COMMIT included, ``track_utility = on``; each is one round trip of the
        extended protocol) over ``sessions`` sequential sessions, divided by ``sessions``.
        (``pg_stat_database.xact_commit`` was tried and dropped: backends flush it at most
        once a second and pooled idle ones later, so its deltas were not reproducible.)
        Not counted: asyncpg's one-off prepare (Parse/Describe) of a statement on a pooled
        connection's first use of it, which the warm-up session takes.
        Two shapes: USER/PASS, LIST, UIDL, RETR 1, QUIT;
        and the same with DELE 1 before QUIT (a message delivered for it beforehand, outside
        the count).
        """
        if not isinstance(server, MailslotPg):
            return
        import poplib
        import time

        from benchmarks.corpus import PASSWORD

        user = self.probe_user
        ident = next(iter(self.corpus.expected))
        body = self.corpus.templates[ident].read_bytes()

        def session(delete: bool) -> None:
            client = poplib.POP3("127.0.0.1", server.plain_port, timeout=30)
            client.user(user)
            client.pass_(PASSWORD)
            client.list()
            client.uidl()
            client.retr(1)
            if delete:
                client.dele(1)
            client.quit()

        def measure(delete: bool) -> float:
            if delete:
                for _ in range(sessions + 1):
                    pgstore.deliver(server.dsn, user, body)
            session(delete)  # warm-up: prepares on whichever pooled connection it gets
            time.sleep(1.2)  # pg_stat_database is flushed at most once a second
            pgstore.reset_statements(server.dsn)
            before = pgstore.counts(server.dsn)
            for _ in range(sessions):
                session(delete)
            time.sleep(1.2)
            after = pgstore.counts(server.dsn)
            shape = "with DELE" if delete else "no DELE"
            for calls, query in pgstore.by_statement(server.dsn):
                self.report.notes.append(
                    f"{server.name} roundtrips {shape}: {calls / sessions:g}/session {query}"
                )
            # counts() itself is one statement-free transaction per call: take it out.
            return (after.statements - before.statements) / sessions

        add = self.report.add
        for delete, label in ((False, "roundtrips no DELE"), (True, "roundtrips with DELE")):
            add(f"{label} per session", "round trips", "lower", server.name, measure(delete))
