"""Benchmark the Ledger server against what a user would otherwise pick.

Drives the whole request path (client processes, server, MySQL) for each variant side by side and prints a table
and the ratios between them; `python -m tools.bench --help` lists the variants, workloads and options.
"""

import argparse
import json
import multiprocessing
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from multiprocessing import queues, synchronize
from pathlib import Path

import MySQLdb
import thriftpy2.rpc
from dbutils import steady_db
from thriftpy2.protocol import TCyBinaryProtocolFactory
from thriftpy2.transport import TCyFramedTransportFactory

import db
from client import LedgerClient
from handlers import VERSION, LedgerHandler, ledger_thrift
from servicekit import mysql, startup
from servicekit.client import ServerUnreachable, new_request_id
from servicekit.settings import ServerSettings, load
from tools.throwaway_db import ThrowawayDatabase, free_port, wait_for

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = ("project", "make_server", "per_request", "direct")
WORKLOADS = ("get_account", "transfer", "mix")
ACCOUNTS = 200
RATIOS_SHOWN = ("p99_ratio", "cpu_ratio", "paired_cpu_ratio")  # besides throughput, which is always measured
HELP_DETAILS = """\
On one machine, each client a separate process with its own connection:
  project      server.py: TThreadPoolServer and the PersistentDB pool;
  make_server  thriftpy2's thread-per-connection server, same handlers and pool;
  per_request  server.py's engine, but a new MySQL connection for every request;
  direct       the same handlers (the same SQL) run inside the client processes
               straight through mysqlclient: the database's own limit.
Workloads get_account, transfer and a 90/10 mix at 1, 4, 16 and 64 clients;
then 16 readers while 1,000 idle connections are open; then THRIFT_PROCESSES=2.
By default all of it, on a throwaway MariaDB.

Servers compared run side by side and their rounds alternate. Prints a table
(calls per second and the server's CPU time per call, each the median round;
p50 and p99 latency over all calls; the server's peak RSS) and the ratios
(CPU per call also paired: the median of each round's ratio), writes
bench-results.json and bench-results.png.
"""


@dataclass
class Run:
    variant: str
    workload: str
    clients: int
    calls_per_second: float
    p50_ms: float
    p99_ms: float
    server_peak_rss_mb: float | None
    server_cpu_us_per_call: float | None  # user + system time of the server's processes, median round
    machine_cpu_us_per_call: float  # every process's, clients and database included, median round
    note: str = ""
    server_cpu_us_per_round: list[float] | None = None  # in the order measured, for paired ratios


class NewConnectionPerRequest:
    """Stands in for the DBUtils pool: every checkout opens a new MySQL connection."""

    def __init__(self, settings: ServerSettings) -> None:
        self.arguments = mysql.connect_arguments(settings)

    def connection(self) -> steady_db.SteadyDBConnection:
        return steady_db.connect(MySQLdb, closeable=True, **self.arguments)


class PlainHandler(LedgerHandler):
    """The Ledger's handlers with ping and health, as make_server needs them (the kit answers those)."""

    def ping(self) -> str:
        return "pong"

    def health(self) -> ledger_thrift.base.Health:
        return ledger_thrift.base.Health(serving=True, database=db.database_answers(), version=VERSION)


def serve(variant: str) -> None:
    """`python -m tools.bench --serve VARIANT`: run a server that server.py does not offer."""
    settings = load(ServerSettings, db.CONFIG_FILE)
    db.init_pool(settings)
    if variant == "make_server":
        server = thriftpy2.rpc.make_server(
            ledger_thrift.Ledger,
            PlainHandler(),
            settings.thrift_host,
            settings.thrift_port,
            proto_factory=TCyBinaryProtocolFactory(),
            trans_factory=TCyFramedTransportFactory(),
            client_timeout=None,
        )
    else:
        db._pool = NewConnectionPerRequest(settings)
        server = startup.build_server(
            ledger_thrift.Ledger, LedgerHandler(), db, settings, VERSION, startup.observe(settings)
        )
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    server.serve()


class ServerProcess:
    """A server variant in a child process on a free port."""

    def __init__(self, variant: str, env: dict[str, str], **extra_env: str) -> None:
        self.port = free_port()
        command = (
            [sys.executable, "server.py"]
            if variant == "project"
            else [sys.executable, "-m", "tools.bench", "--serve", variant]
        )
        self.process = subprocess.Popen(
            command,
            cwd=ROOT,
            env={**os.environ, **env, "THRIFT_HOST": "127.0.0.1", "THRIFT_PORT": str(self.port), **extra_env},
            stdout=subprocess.DEVNULL,
        )
        wait_for(self._answers, 30, f"the {variant} server")

    def _answers(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"server exited with status {self.process.returncode}")
        try:
            with LedgerClient(f"127.0.0.1:{self.port}", retries=0, timeout=1) as client:
                return client.ping() == "pong"
        except ServerUnreachable:
            return False

    def _pids(self) -> list[int]:
        """The server and its child processes (THRIFT_PROCESSES > 1)."""
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children").read_text()
        return [self.process.pid, *map(int, children.split())]

    def peak_rss_mb(self) -> float:
        """Peak resident memory of the server's processes, in MB."""
        total_kb = 0
        for pid in self._pids():
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total_kb += int(line.split()[1])
        return total_kb / 1024

    def cpu_seconds(self) -> float:
        """User and system CPU time the server's processes have used so far."""
        total_ticks = 0
        for pid in self._pids():
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total_ticks += int(fields[11]) + int(fields[12])  # utime, stime
        return total_ticks / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(30)


def machine_busy_seconds() -> float:
    """CPU time all cores have spent not idle since boot (/proc/stat)."""
    ticks = [int(field) for field in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle, iowait = ticks[3], ticks[4]
    return (sum(ticks) - idle - iowait) / os.sysconf("SC_CLK_TCK")


def client_process(
    port: int | None,
    settings: ServerSettings,
    workload: str,
    accounts: list[int],
    seconds: float,
    ready: synchronize.Semaphore,
    start: synchronize.Event,
    results: queues.Queue,
) -> None:
    """One benchmark client: calls in a loop for `seconds`, reports latencies."""
    if port is None:  # direct: the handlers in this process, no Thrift
        db.init_pool(settings)
        target = LedgerHandler()
    else:
        target = LedgerClient(f"127.0.0.1:{port}", pool_size=1, retries=0)
        target.ping()  # connect before the clock starts
    rng = random.Random(os.getpid())
    latencies = []
    ready.release()
    start.wait()
    stop_at = time.perf_counter() + seconds
    try:
        while (began := time.perf_counter()) < stop_at:
            if workload == "get_account" or (workload == "mix" and rng.random() < 0.9):
                target.get_account(rng.choice(accounts))
            else:
                source, destination = rng.sample(accounts, 2)
                target.transfer(source, destination, 1, new_request_id())
            latencies.append(time.perf_counter() - began)
    except Exception as error:  # noqa: BLE001 - reported by the parent, which must not wait forever
        results.put(f"{type(error).__name__}: {error}")
        return
    results.put(latencies)


def hold_idle(port: int, count: int, ready: synchronize.Event, stop: synchronize.Event) -> None:
    """Hold `count` open connections, each used once, until `stop` is set."""
    clients = [LedgerClient(f"127.0.0.1:{port}", pool_size=1) for _ in range(count)]
    for client in clients:
        client.ping()
    ready.set()
    stop.wait()
    for client in clients:
        client.close()


@dataclass
class Measurement:
    latencies: list[float]  # of every call, in seconds
    server_cpu_seconds: float  # used by the server's processes while the clients ran
    machine_cpu_seconds: float  # used by every process, clients and database included


def measure(
    server: ServerProcess | None,
    settings: ServerSettings,
    workload: str,
    clients: int,
    seconds: float,
    accounts: list[int],
) -> Measurement:
    """Run `clients` client processes at once for `seconds` against `server` (None: direct)."""
    port = server.port if server else None
    context = multiprocessing.get_context("fork")
    ready, start, results = context.Semaphore(0), context.Event(), context.Queue()
    processes = [
        context.Process(
            target=client_process, args=(port, settings, workload, accounts, seconds, ready, start, results)
        )
        for _ in range(clients)
    ]
    for process in processes:
        process.start()
    try:
        for _ in processes:
            if not ready.acquire(timeout=120):
                raise RuntimeError("a benchmark client did not start")
        server_before, machine_before = server.cpu_seconds() if server else 0.0, machine_busy_seconds()
        start.set()
        time.sleep(seconds)  # CPU is counted while the clients call, not while they start or report
        server_cpu = server.cpu_seconds() - server_before if server else 0.0
        machine_cpu = machine_busy_seconds() - machine_before
        reports = [results.get(timeout=120) for _ in processes]
    except BaseException:
        for process in processes:  # or they would wait for `start` forever
            process.terminate()
        raise
    finally:
        for process in processes:
            process.join()
    failures = [report for report in reports if isinstance(report, str)]
    if failures:
        raise RuntimeError(f"{len(failures)} benchmark clients failed, first: {failures[0]}")
    return Measurement([latency for report in reports for latency in report], server_cpu, machine_cpu)


def summarize(
    variant: str,
    workload: str,
    clients: int,
    rounds: list[Measurement],
    seconds: float,
    server: ServerProcess | None,
    note: str,
) -> Run:
    """One Run from several interleaved rounds of the same configuration: latency
    percentiles over every call; throughput and CPU per call as the median round."""
    latencies = sorted(latency for measurement in rounds for latency in measurement.latencies)

    def per_call(cpu_seconds: float, measurement: Measurement) -> float:
        return cpu_seconds / max(len(measurement.latencies), 1) * 1e6

    server_cpu = [per_call(m.server_cpu_seconds, m) for m in rounds] if server else None
    return Run(
        variant,
        workload,
        clients,
        calls_per_second=statistics.median(len(m.latencies) / seconds for m in rounds),
        p50_ms=latencies[len(latencies) // 2] * 1000 if latencies else 0.0,
        p99_ms=latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000 if latencies else 0.0,
        server_peak_rss_mb=server.peak_rss_mb() if server else None,
        server_cpu_us_per_call=statistics.median(server_cpu) if server_cpu else None,
        machine_cpu_us_per_call=statistics.median(per_call(m.machine_cpu_seconds, m) for m in rounds),
        note=note,
        server_cpu_us_per_round=server_cpu,
    )


@contextmanager
def benchmark_database(configured: bool) -> Iterator[dict[str, str]]:
    """MYSQL_* variables of the database to use: config.env's, or a throwaway server."""
    if configured:
        settings = load(ServerSettings, db.CONFIG_FILE)
        yield {
            "MYSQL_HOST": settings.mysql_host,
            "MYSQL_PORT": str(settings.mysql_port),
            "MYSQL_USER": settings.mysql_user,
            "MYSQL_PASSWORD": settings.mysql_password,
            "MYSQL_DATABASE": settings.mysql_database,
        }
        return
    with tempfile.TemporaryDirectory(prefix="ledger-bench-") as directory:
        throwaway = ThrowawayDatabase(Path(directory), database="ledger_bench")
        throwaway.start()
        try:
            yield throwaway.env
        finally:
            throwaway.stop()


def create_accounts(settings: ServerSettings) -> list[int]:
    db.migrate(settings)
    db.init_pool(settings)
    handler = LedgerHandler()
    accounts = []
    for n in range(ACCOUNTS):
        account = handler.create_account(f"bench-{n}", new_request_id())
        handler.deposit(account.id, 10**12, new_request_id())
        accounts.append(account.id)
    db.close_pool()
    return accounts


class Session:
    """One benchmark run: the database, the accounts, and every Run measured so far."""

    def __init__(self, options: argparse.Namespace, env: dict[str, str]) -> None:
        self.options = options
        self.server_env = {**env, "LOG_LEVEL": "WARNING"}
        self.settings = load(ServerSettings, db.CONFIG_FILE, {**os.environ, **self.server_env})
        self.accounts = create_accounts(self.settings)
        self.readers = max(c for c in options.concurrency if c <= 16)
        self.total = len(options.workloads) * len(options.concurrency) * len(options.variants) + 4
        self.runs: list[Run] = []

    def measure(self, server: ServerProcess | None, workload: str, clients: int, seconds: float) -> Measurement:
        return measure(server, self.settings, workload, clients, seconds, self.accounts)

    def warm_up(self, servers: dict[str, ServerProcess | None]) -> None:
        """Open database connections and fill caches; not counted."""
        for server in servers.values():
            self.measure(server, "mix", 16, min(self.options.seconds, 1.0))

    def compare(
        self,
        servers: dict[str, ServerProcess | None],
        workload: str,
        clients: int,
        notes: dict[str, str] | None = None,
    ) -> None:
        """Measure the servers in turn, options.rounds times each (the machine's
        speed drifts over minutes, so rounds alternate, and every other round
        runs them in reverse order: no server is always measured first); one
        Run for each.

        Without `notes` the servers are the variants; with them, all are the
        project's server and notes[name] tells them apart.
        """
        rounds: dict[str, list[Measurement]] = {name: [] for name in servers}
        for number in range(self.options.rounds):
            for name, server in list(servers.items())[:: -1 if number % 2 else 1]:
                rounds[name].append(self.measure(server, workload, clients, self.options.seconds))
        for name, server in servers.items():
            variant, note = (name, "") if notes is None else ("project", notes[name])
            self.record(summarize(variant, workload, clients, rounds[name], self.options.seconds, server, note))

    def record(self, run: Run) -> None:
        self.runs.append(run)
        print(
            f"\r[{len(self.runs)}/{self.total}] {run.variant:<12} {run.workload:<12} {run.clients:>3} clients"
            f" {run.calls_per_second:>8.0f} calls/s  p99 {run.p99_ms:6.1f} ms {run.note}".ljust(100),
            end="",
            file=sys.stderr,
            flush=True,
        )


@contextmanager
def started(servers: dict[str, ServerProcess | None]) -> Iterator[dict[str, ServerProcess | None]]:
    """The servers, stopped at the end whatever happens."""
    try:
        yield servers
    finally:
        for server in servers.values():
            if server:
                server.stop()


def compare_variants(session: Session) -> None:
    """Every variant at every workload and concurrency, side by side."""
    variants = {v: None if v == "direct" else ServerProcess(v, session.server_env) for v in session.options.variants}
    with started(variants) as servers:
        session.warm_up(servers)
        for workload in session.options.workloads:
            for clients in session.options.concurrency:
                session.compare(servers, workload, clients)


def compare_idle_connections(session: Session) -> None:
    """Two identical servers as shipped, one of them holding idle connections throughout."""
    count = session.options.idle_connections
    with started({name: ServerProcess("project", session.server_env) for name in ("alone", "idle")}) as servers:
        context = multiprocessing.get_context("fork")
        ready, stop = context.Event(), context.Event()
        holder = context.Process(target=hold_idle, args=(servers["idle"].port, count, ready, stop))
        holder.start()
        try:
            if not ready.wait(120):
                raise RuntimeError("could not open the idle connections")
            session.warm_up(servers)
            notes = {"alone": "no idle connections", "idle": f"{count} idle connections"}
            session.compare(servers, "get_account", session.readers, notes)
        finally:
            stop.set()
            holder.join()


def compare_processes(session: Session) -> None:
    """THRIFT_PROCESSES=1 against 2."""
    env = session.server_env
    with started(
        {"1": ServerProcess("project", env), "2": ServerProcess("project", env, THRIFT_PROCESSES="2")}
    ) as servers:
        session.warm_up(servers)
        session.compare(servers, "get_account", session.readers, {name: f"THRIFT_PROCESSES={name}" for name in servers})


def run_all(options: argparse.Namespace, env: dict[str, str]) -> list[Run]:
    """Every measurement, in one session."""
    session = Session(options, env)
    compare_variants(session)
    compare_idle_connections(session)
    compare_processes(session)
    print(file=sys.stderr)
    return session.runs


def find(runs: list[Run], variant: str, workload: str, clients: int, note: str = "") -> Run | None:
    return next(
        (r for r in runs if (r.variant, r.workload, r.clients, r.note) == (variant, workload, clients, note)), None
    )


def ratio(comparison: str, run: Run, baseline: Run) -> dict:
    """`run` against `baseline`: throughput, p99 and server CPU per call as ratios.

    The paired CPU ratio is the median of the rounds' own ratios: the two
    servers' rounds alternate, so drift between rounds cancels out in each.
    """
    cpu_measured = run.server_cpu_us_per_call and baseline.server_cpu_us_per_call
    mine, theirs = run.server_cpu_us_per_round, baseline.server_cpu_us_per_round
    paired = [a / b for a, b in zip(mine, theirs, strict=True) if b] if mine and theirs else []
    return {
        "comparison": comparison,
        "workload": run.workload,
        "clients": run.clients,
        "throughput_ratio": round(run.calls_per_second / baseline.calls_per_second, 2),
        "p99_ratio": round(run.p99_ms / baseline.p99_ms, 2) if baseline.p99_ms else None,
        "cpu_ratio": round(run.server_cpu_us_per_call / baseline.server_cpu_us_per_call, 2) if cpu_measured else None,
        "paired_cpu_ratio": round(statistics.median(paired), 2) if paired else None,
    }


def ratios(runs: list[Run]) -> list[dict]:
    """Every comparison the README reports."""
    compared = []
    for run in runs:
        if run.variant != "project" or run.note:
            continue
        for other in ("make_server", "per_request", "direct"):
            baseline = find(runs, other, run.workload, run.clients)
            if baseline and baseline.calls_per_second:
                compared.append(ratio(f"project / {other}", run, baseline))
    for numerator, denominator in (
        ("idle connections", "no idle connections"),
        ("THRIFT_PROCESSES=2", "THRIFT_PROCESSES=1"),
    ):
        top = next((r for r in runs if r.note.endswith(numerator) and r.note != denominator), None)
        bottom = next((r for r in runs if r.note == denominator), None)
        if top and bottom and bottom.calls_per_second:
            compared.append(ratio(f"{top.note} / {bottom.note}", top, bottom))
    return compared


def print_report(runs: list[Run], compared: list[dict]) -> None:
    print(
        f"{'server':<12} {'workload':<12} {'clients':>7} {'calls/s':>9} {'p50 ms':>7} {'p99 ms':>7} {'RSS MB':>7}"
        f" {'server us':>9} {'all us':>7}  note"
    )
    for r in runs:
        rss = f"{r.server_peak_rss_mb:7.0f}" if r.server_peak_rss_mb is not None else "      -"
        cpu = f"{r.server_cpu_us_per_call:9.0f}" if r.server_cpu_us_per_call is not None else f"{'-':>9}"
        print(
            f"{r.variant:<12} {r.workload:<12} {r.clients:>7} {r.calls_per_second:>9.0f}"
            f" {r.p50_ms:>7.2f} {r.p99_ms:>7.2f} {rss} {cpu} {r.machine_cpu_us_per_call:>7.0f}  {r.note}"
        )
    print()
    print(
        f"{'comparison':<45} {'workload':<12} {'clients':>7} {'throughput':>10} {'p99':>6} {'CPU/call':>8}"
        f" {'paired':>6}"
    )
    for c in compared:
        p99, cpu, paired = (f"{c[key]:.2f}" if c[key] is not None else "-" for key in RATIOS_SHOWN)
        print(
            f"{c['comparison']:<45} {c['workload']:<12} {c['clients']:>7} {c['throughput_ratio']:>9.2f}x"
            f" {p99:>6} {cpu:>8} {paired:>6}"
        )


def plot(runs: list[Run], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    workloads = sorted({r.workload for r in runs if not r.note}, key=WORKLOADS.index)
    figure, axes = plt.subplots(2, len(workloads), figsize=(5 * len(workloads), 8), squeeze=False)
    for column, workload in enumerate(workloads):
        for variant in VARIANTS:
            points = sorted((r.clients, r) for r in runs if (r.variant, r.workload, r.note) == (variant, workload, ""))
            if points:
                clients = [c for c, _ in points]
                axes[0][column].plot(clients, [r.calls_per_second for _, r in points], marker="o", label=variant)
                axes[1][column].plot(clients, [r.p99_ms for _, r in points], marker="o", label=variant)
        axes[0][column].set_title(workload)
        axes[0][column].set_ylabel("calls per second")
        axes[1][column].set_ylabel("p99 latency (ms)")
        for row in (0, 1):
            axes[row][column].set_xscale("log", base=2)
            axes[row][column].set_xlabel("concurrent client processes")
            axes[row][column].legend()
    figure.tight_layout()
    figure.savefig(path)


def parse_options() -> argparse.Namespace:
    """The command line's options, the comma-separated lists split."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=HELP_DETAILS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--seconds", type=float, default=2.0, help="length of each measurement")
    parser.add_argument("--rounds", type=int, default=3, help="alternating measurements of each configuration")
    parser.add_argument("--concurrency", default="1,4,16,64", help="client process counts")
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--idle-connections", type=int, default=1000)
    parser.add_argument("--configured-database", action="store_true", help="use config.env's MYSQL_* instead")
    parser.add_argument("--output", type=Path, default=ROOT / "bench-results.json")
    parser.add_argument("--plot", type=Path, default=ROOT / "bench-results.png")
    parser.add_argument("--serve", choices=("make_server", "per_request"), help=argparse.SUPPRESS)
    options = parser.parse_args()
    options.concurrency = [int(c) for c in options.concurrency.split(",")]
    options.workloads = options.workloads.split(",")
    options.variants = options.variants.split(",")
    return options


def write_results(options: argparse.Namespace, runs: list[Run], compared: list[dict]) -> None:
    """The runs and their ratios as JSON at --output, and their plot at --plot."""
    machine = f"{os.cpu_count()} cores, Python {sys.version.split()[0]}"
    options.output.write_text(
        json.dumps(
            {
                "date": time.strftime("%Y-%m-%d"),
                "machine": machine,
                "seconds": options.seconds,
                "rounds": options.rounds,
                "runs": [asdict(r) for r in runs],
                "ratios": compared,
            },
            indent=2,
        )
    )
    plot(runs, options.plot)


def main() -> int:
    options = parse_options()
    if options.serve:
        serve(options.serve)
        return 0
    with benchmark_database(options.configured_database) as env:
        runs = run_all(options, env)
    compared = ratios(runs)
    print_report(runs, compared)
    write_results(options, runs, compared)
    print(f"\nwrote {options.output} and {options.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
