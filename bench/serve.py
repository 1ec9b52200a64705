"""``agentstate serve``: 32 concurrent HTTP clients against one library writer, and one append's latency.

Rows (each a ratio against a baseline measured in the same run, interleaved, same disk, same cores,
the clients' own CPU included):

* ``serve/throughput``: appends/s committed by the server to 32 clients, each appending one message
  to its own conversation (``POST /v1/conversations/{id}/items``) on a kept-alive connection, vs one
  library process appending in a loop (``SessionStore.append``) to its own store on the same disk.
  Goal >= 1.0: the server is the one writer, so concurrent appends should share commits. The clients
  are one asyncio process speaking HTTP/1.1 over TCP (a connection each, one request in flight per
  connection); the same load from a thread per client with http.client runs in the same interleaved
  windows, reported in the row's extra (``threads_ratio``): those clients take ~4x the CPU per request,
  on the same 2 cores as the server.
* ``serve/write-tx-per-append``: store write transactions per committed append during those windows,
  from the server's ``/metrics`` (``agentstate_write_transactions_total`` / ``agentstate_appends_total``)
  vs 1.0 (one transaction each). Goal <= 0.5 (group commit).
* ``serve/append-p50``, ``serve/append-p99``: one append over HTTP (one client, sequential) vs the
  library call in this process, interleaved sample by sample (reported, no goal).

The throughput row's extra also says where the CPU went, per committed append: the server process's
(``/proc/PID/stat`` across the HTTP windows), the clients' and the library writer's (each child's own
``getrusage`` over its window). On 2 shared cores these are steadier than the rates: the server's
event loop holds the GIL, so its CPU per append bounds its rate (1 / that, at most).

Children: ``python -m bench.serve clients URL CONV_ID,...`` (asyncio, a connection per conversation),
``python -m bench.serve threads URL CONV_ID,...`` (a thread per conversation, http.client) and
``python -m bench.serve library DIR``; both speak workers_started's ready/go protocol and print their CPU
seconds over the window, then a count.
"""

from __future__ import annotations

import json
import os
import re
import resource
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from .common import Config, Row, agentstate_cmd, await_go, child_env, median, workers_started

CLIENTS = 32
ITEM = {"role": "user", "content": "What is the weather like in Lisbon tomorrow morning?"}
BODY = json.dumps({"items": [ITEM]}).encode()
_METRIC = re.compile(r"^(agentstate_\w+) ([0-9.e+]+)$", re.M)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _metrics(url: str) -> dict[str, float]:
    text = urllib.request.urlopen(url + "/metrics", timeout=30).read().decode()
    return {k: float(v) for k, v in _METRIC.findall(text)}


def _post(conn: Any, path: str, body: bytes) -> bytes:
    conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
    r = conn.getresponse()
    data = r.read()
    if r.status != 200:
        raise RuntimeError(f"{path}: {r.status} {data[:200]!r}")
    return data


def _start_server(store: Path) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    log = open(store.parent / "serve.log", "wb")  # a file, not a pipe: one line per request would fill a pipe
    proc = subprocess.Popen([*agentstate_cmd(), "serve", "--auth", "none", "--port", str(port), "--dir", str(store)],
                            stdout=subprocess.DEVNULL, stderr=log, env=child_env())
    log.close()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = (store.parent / "serve.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"agentstate serve exited {proc.returncode}: {tail}")
        try:
            urllib.request.urlopen(url + "/readyz", timeout=1).read()
            return proc, url
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("agentstate serve did not start")


def _window(argv: list[str], duration: float) -> tuple[int, float]:
    """A child's count over the window, and its CPU seconds."""
    with workers_started([argv], duration) as (procs, _start, _end):
        out, err = procs[0].communicate(timeout=duration + 120)
        if procs[0].returncode != 0:
            raise RuntimeError(f"{argv[3]} failed: {err[-2000:]}")
    cpu, count = out.split()[-2:]
    return int(count), float(cpu)


def _cpu_seconds(pid: int) -> float:
    """A process's user + system CPU so far (Linux /proc; NaN elsewhere)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _per(seconds: float, n: int) -> float | None:
    return 1000 * seconds / n if n else None


def _own_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def run(cfg: Config) -> list[Row]:
    from agentstate import SessionStore

    window = 1.0 if cfg.quick else 3.0
    windows = 1 if cfg.quick else max(3, cfg.rounds)
    proc, url = _start_server(cfg.workdir / "serve-store")
    try:
        import http.client
        from urllib.parse import urlsplit

        parts = urlsplit(url)
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
        convs = [json.loads(_post(conn, "/v1/conversations", b"{}"))["id"] for _ in range(CLIENTS + 1)]
        clients_argv = [sys.executable, "-m", "bench.serve", "clients", url, ",".join(convs[:CLIENTS])]
        threads_argv = [sys.executable, "-m", "bench.serve", "threads", url, ",".join(convs[:CLIENTS])]
        library_argv = [sys.executable, "-m", "bench.serve", "library", str(cfg.workdir / "serve-library")]
        rates: dict[str, list[float]] = {"http": [], "threads": [], "lib": []}
        cpu = {"server": 0.0, "http": 0.0, "threads": 0.0, "lib": 0.0, "server-threads": 0.0}
        counts = {"http": 0, "threads": 0, "lib": 0}
        before = after = {}
        for i in range(windows):
            order = [("http", clients_argv), ("lib", library_argv), ("threads", threads_argv)]
            for name, argv in order[i % 3:] + order[:i % 3]:
                c0 = _cpu_seconds(proc.pid)
                m0 = _metrics(url) if name == "http" else None
                n, used = _window(argv, window)
                if name != "lib":
                    cpu["server" if name == "http" else "server-threads"] += _cpu_seconds(proc.pid) - c0
                if m0 is not None:  # write transactions over the asyncio clients' windows
                    m1 = _metrics(url)
                    before = {k: before.get(k, 0.0) + v for k, v in m0.items()}
                    after = {k: after.get(k, 0.0) + v for k, v in m1.items()}
                rates[name].append(n / window)
                cpu[name] += used
                counts[name] += n
        http_rates, lib_rates = rates["http"], rates["lib"]
        batch_size = _metrics(url).get("agentstate_group_commit_batch_size")
        appends = after["agentstate_appends_total"] - before["agentstate_appends_total"]
        writes = after["agentstate_write_transactions_total"] - before["agentstate_write_transactions_total"]
        tx_per_append = writes / appends if appends else float("nan")

        # latency: one append over HTTP vs the library call, interleaved sample by sample (a new
        # connection: the first one idled past the server's keep-alive during the windows)
        conn.close()
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
        conv = convs[CLIENTS]
        store = SessionStore(cfg.workdir / "serve-latency")
        samples = 20 if cfg.quick else 200
        t_http, t_lib = [], []
        for i in range(samples + 5):
            for case in (("http", "lib") if i % 2 == 0 else ("lib", "http")):
                t0 = time.perf_counter()
                if case == "http":
                    _post(conn, f"/v1/conversations/{conv}/items", BODY)
                else:
                    store.append("latency", [ITEM])
                dt = time.perf_counter() - t0
                if i >= 5:  # warm-up excluded
                    (t_http if case == "http" else t_lib).append(dt)
        conn.close()
        store.close()
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    t_http.sort()
    t_lib.sort()

    def p99(xs: list[float]) -> float:
        return xs[min(len(xs) - 1, int(len(xs) * 0.99))]

    extra = {"window_s": window, "windows": windows, "http_rates": http_rates, "library_rates": lib_rates,
             "appends": appends, "write_transactions": writes, "clients": CLIENTS,
             "group_commit_batch_size": batch_size,
             "client": "asyncio: one process, a kept-alive connection per client",
             # the same load from a thread per client (http.client), in the same interleaved run
             "threads_rates": rates["threads"],
             "threads_ratio": median(rates["threads"]) / median(lib_rates),
             # CPU per committed append, milliseconds (the server's includes a /metrics scrape or two)
             "server_cpu_ms_per_append": _per(cpu["server"], counts["http"]),
             "client_cpu_ms_per_append": _per(cpu["http"], counts["http"]),
             "server_cpu_ms_per_append_threads": _per(cpu["server-threads"], counts["threads"]),
             "client_cpu_ms_per_append_threads": _per(cpu["threads"], counts["threads"]),
             "library_cpu_ms_per_append": _per(cpu["lib"], counts["lib"])}
    return [
        Row("serve", "serve/throughput", f"appends/s, {CLIENTS} HTTP clients -> agentstate serve",
            median(http_rates), "appends/s, one library process", median(lib_rates), "ops/s", goal=">= 1.0",
            extra=extra),
        Row("serve", "serve/write-tx-per-append", "write transactions per append (/metrics)", tx_per_append,
            "one transaction per append", 1.0, "tx", goal="<= 0.5", extra=extra),
        Row("serve", "serve/append-p50", "one append over HTTP, p50", median(t_http), "SessionStore.append, p50",
            median(t_lib), "s", extra={"samples": len(t_http)}),
        Row("serve", "serve/append-p99", "one append over HTTP, p99", p99(t_http), "SessionStore.append, p99",
            p99(t_lib), "s", extra={"samples": len(t_http)}),
    ]


# -- children ------------------------------------------------------------------------------------


def _clients(url: str, conversations: str) -> None:
    """32 HTTP/1.1 clients in one asyncio event loop, a kept-alive TCP connection each, one request in
    flight per connection: the lean client (about a quarter of the CPU per request of a thread per
    client with http.client, whose 32 threads also wake one by one, each on its own response)."""
    import asyncio
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    convs = conversations.split(",")
    counts = [0] * len(convs)
    start, end = await_go()
    cpu0 = _own_cpu()

    async def client(k: int) -> None:
        reader, writer = await asyncio.open_connection(host, port)
        request = (f"POST /v1/conversations/{convs[k]}/items HTTP/1.1\r\nHost: {host}:{port}\r\n"
                   f"Content-Type: application/json\r\nContent-Length: {len(BODY)}\r\n\r\n").encode() + BODY
        try:
            while time.monotonic() < end:
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                status = int(head.split(b" ", 2)[1])
                fields = dict(line.split(b":", 1) for line in head.split(b"\r\n")[1:] if b":" in line)
                fields = {k.strip().lower(): v.strip() for k, v in fields.items()}
                body = await reader.readexactly(int(fields[b"content-length"]))
                if status != 200 or fields.get(b"connection") == b"close":
                    raise RuntimeError(f"{status} {body[:200]!r}")
                counts[k] += 1
        finally:
            writer.close()

    async def main() -> list[Any]:
        return await asyncio.gather(*(client(k) for k in range(len(convs))), return_exceptions=True)

    failed = [repr(e) for e in asyncio.run(main()) if isinstance(e, BaseException)]
    if failed:
        sys.stderr.write(f"{len(failed)} client(s) failed: {failed[0]}\n")
        sys.exit(1)
    print(_own_cpu() - cpu0, sum(counts), flush=True)


def _threads(url: str, conversations: str) -> None:
    """The same load from a thread per client, each with http.client (the bench's client before the
    asyncio one; measured in the same run for comparison)."""
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    convs = conversations.split(",")
    n = len(convs)
    conns = [http.client.HTTPConnection(parts.hostname, parts.port, timeout=60) for _ in range(n)]
    counts = [0] * n
    failed: list[str] = []
    start, end = await_go()
    cpu0 = _own_cpu()

    def loop(k: int) -> None:
        path = f"/v1/conversations/{convs[k]}/items"
        try:
            while time.monotonic() < end:
                _post(conns[k], path, BODY)
                counts[k] += 1
        except Exception as e:  # noqa: BLE001 - reported by the parent
            failed.append(repr(e))

    threads = [threading.Thread(target=loop, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failed:
        sys.stderr.write(f"{len(failed)} client(s) failed: {failed[0]}\n")
        sys.exit(1)
    print(_own_cpu() - cpu0, sum(counts), flush=True)


def _library(directory: str) -> None:
    from agentstate import SessionStore

    store = SessionStore(directory)
    store.append("warm", [ITEM])
    n = 0
    start, end = await_go()
    cpu0 = _own_cpu()
    while time.monotonic() < end:
        store.append("loop", [ITEM])
        n += 1
    print(_own_cpu() - cpu0, n, flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "clients":
        _clients(sys.argv[2], sys.argv[3])
    elif sys.argv[1] == "threads":
        _threads(sys.argv[2], sys.argv[3])
    elif sys.argv[1] == "library":
        _library(sys.argv[2])
    else:
        raise SystemExit("usage: python -m bench.serve clients|threads URL CONV_ID,... | library DIR")
