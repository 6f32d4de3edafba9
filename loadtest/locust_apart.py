"""Runs loadtest/locustfile.py headless, one Locust process per user class, by default one API
after the other (each with every user, for the whole duration), and prints one table of every
task with the CPU each load generator used (what ``loadtest/run_locust.sh``, ``make
loadtest``, calls after starting the server). ``--together`` runs them at the same time instead.

Why not both user classes in one process, at once (as before): gRPC then read p50 18 ms
against HTTP's 3 ms (issue 25), the reverse of wrk / h2load. Measured here, two causes
(docs/load-testing.md has the figures):

- the server: a node busy with HTTP W2 traffic starves its gRPC calls. With no Locust at all,
  h2load's gRPC W1 (c=5) took 3.1 ms on average alone and 146 ms while wrk sent HTTP W2 (c=5)
  to the same node, which kept its 15 ms p50. So with both APIs at once, the gRPC figures
  measure gRPC's share of a saturated node, not gRPC;
- the load generator: grpc under gevent (``grpc.experimental.gevent``) finishes each call on a
  native thread that needs the GIL to wake its greenlet; next to HTTP greenlets parsing
  megabytes of JSON in the same process, that wake-up waits for the interpreter's switch
  interval (the locustfile lowers it to 0.5 ms).

One API at a time, each process's figures are about its own API. The ``gen CPU`` column says
how busy that Locust process was: near 100 % of a core, its latencies include its own queueing
(the load generator is the bottleneck, not the server).

    python loadtest/locust_apart.py --host http://127.0.0.1:6566 --grpc-host 127.0.0.1:6565 \\
        --ids-file .data/sample/ids.txt --users 10 --duration 10s --out reports/x \\
        HttpFeatureUser GrpcFeatureUser
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
LOCUSTFILE = HERE / "locustfile.py"
CLASSES = ("HttpFeatureUser", "GrpcFeatureUser")


def split(total: int, parts: int) -> list[int]:
    """``total`` users over ``parts`` processes, at least one each (Locust's even split of
    user classes in one process, kept when they run apart)."""
    base, extra = divmod(max(total, parts), parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def locust_command(args: argparse.Namespace, cls: str, users: int, rate: float) -> list[str]:
    out = Path(args.out)
    cmd = [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), cls,
        "--headless", "--only-summary",
        "--host", args.host, "--grpc-host", args.grpc_host, "--ids-file", args.ids_file,
        "-u", str(users), "-r", f"{rate:g}", "-t", args.duration, "--stop-timeout", "10",
        "--csv", str(out / f"locust-{cls}"), "--html", str(out / f"report-{cls}.html"),
        "--json-file", str(out / f"stats-{cls}"),
    ]  # fmt: skip
    if args.tags:
        cmd += ["--tags", *args.tags.split()]
    return cmd


def table(entries: list[dict[str, Any]], cpu: dict[str, float]) -> str:
    """One line per task and an ``all`` line, from Locust's final statistics."""
    from locust.stats import RequestStats, StatsEntry

    stats = RequestStats()
    lines = [
        f"{'task':<18}{'requests':>10}{'req/s':>9}{'p50 ms':>8}{'p95 ms':>8}{'p99 ms':>8}"
        f"{'failures':>10}{'gen CPU':>9}"
    ]
    rows: list[tuple[str, StatsEntry, str]] = []
    for entry in entries:
        times = {int(k): v for k, v in entry["response_times"].items()}
        e = StatsEntry.unserialize(dict(entry, response_times=times), stats)
        stats.total.extend(e)
        rows.append((e.name, e, f"{cpu.get(entry['user_class'], 0.0):.0%}"))
    rows.sort(key=lambda r: r[0])
    rows.append(("all", stats.total, ""))
    for name, e, gen in rows:
        pct = [e.get_response_time_percentile(q) for q in (0.5, 0.95, 0.99)]
        # over the entry's own time span: Locust's total_rps divides by the whole session's,
        # which spans every process when they ran one after the other
        span = (e.last_request_timestamp or 0) - (e.start_time or 0)
        rps = e.num_requests / span if span > 0 else 0.0
        lines.append(
            f"{name:<18}{e.num_requests:>10}{rps:>9.1f}"
            + "".join(f"{p:>8.0f}" for p in pct)
            + f"{e.num_failures:>10}{gen:>9}"
        )
    return "\n".join(lines)


def run_group(
    args: argparse.Namespace, group: list[tuple[str, int]], out: Path, cpu: dict[str, float]
) -> int:
    """Runs one Locust process per (user class, users) of ``group`` at once, to their end;
    records each one's CPU share of one core in ``cpu``; the first non-zero exit code."""
    procs: dict[int, tuple[str, subprocess.Popen[bytes], Any]] = {}
    t0 = time.monotonic()
    for cls, users in group:
        rate = max(args.spawn_rate * users / max(args.users, 1), 1.0)
        log = (out / f"locust-{cls}.log").open("wb")
        proc = subprocess.Popen(
            locust_command(args, cls, users, rate), stdout=log, stderr=subprocess.STDOUT
        )
        procs[proc.pid] = (cls, proc, log)
    rc = 0
    try:
        while procs:
            pid, status, usage = os.wait4(-1, 0)
            if pid not in procs:
                continue
            cls, _, log = procs.pop(pid)
            log.close()
            wall = max(time.monotonic() - t0, 1e-9)
            cpu[cls] = (usage.ru_utime + usage.ru_stime) / wall
            code = os.waitstatus_to_exitcode(status)
            if code != 0:
                print(f"locust {cls} exited {code} (see {out}/locust-{cls}.log)", file=sys.stderr)
                rc = rc or code
    except KeyboardInterrupt:
        for _, proc, _ in procs.values():
            proc.send_signal(signal.SIGINT)
        for _, proc, log in procs.values():
            proc.wait(30)
            log.close()
        return 130
    return rc


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", required=True, help="HTTP base URL (Locust --host)")
    p.add_argument("--grpc-host", required=True, help="gRPC target HOST:PORT")
    p.add_argument("--ids-file", required=True)
    p.add_argument("--users", type=int, default=20, help="users over all processes")
    p.add_argument("--spawn-rate", type=float, default=10, help="users/s over all processes")
    p.add_argument("--duration", default="30s", help="Locust -t")
    p.add_argument("--tags", default="", help="w1 or w2 (Locust --tags); empty: both")
    p.add_argument("--out", required=True, help="directory for the reports")
    p.add_argument(
        "--together",
        action="store_true",
        help="run the user classes at the same time (users split), not one after the other",
    )
    p.add_argument("classes", nargs="*", default=list(CLASSES), help="user classes")
    args = p.parse_args(argv)
    unknown = [c for c in args.classes if c not in CLASSES]
    if unknown:
        p.error(f"unknown user class {', '.join(unknown)} (choose from {', '.join(CLASSES)})")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    tags = f", tags {args.tags}" if args.tags else ""
    cpu: dict[str, float] = {}
    rc = 0
    if args.together:
        counts = split(args.users, len(args.classes))
        print(
            "locust: "
            + ", ".join(f"{c} {n} users" for c, n in zip(args.classes, counts, strict=True))
            + f", at the same time, one process each, {args.duration}{tags}",
            flush=True,
        )
        groups = [list(zip(args.classes, counts, strict=True))]
    else:
        print(
            f"locust: {' then '.join(args.classes)}, {args.users} users each, "
            f"{args.duration} each{tags}",
            flush=True,
        )
        groups = [[(cls, args.users)] for cls in args.classes]
    for group in groups:
        code = run_group(args, group, out, cpu)
        if code == 130:
            return 130
        rc = rc or code

    entries: list[dict[str, Any]] = []
    for cls in args.classes:
        path = out / f"stats-{cls}.json"
        if not path.exists():
            print(f"no statistics from {cls} (see {out}/locust-{cls}.log)", file=sys.stderr)
            return rc or 1
        for e in json.loads(path.read_text()):
            entries.append(dict(e, user_class=cls))
    if not entries:
        print("no requests recorded", file=sys.stderr)
        return rc or 1
    # every task's final statistics in one file, as one Locust process would write them
    (out / "stats.json").write_text(
        json.dumps([{k: v for k, v in e.items() if k != "user_class"} for e in entries])
    )
    print()
    print(table(entries, cpu))
    print(
        "\ngen CPU: the Locust process of that task, share of one core over the run; near 100 %"
        " its latencies include its own queueing"
    )
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
