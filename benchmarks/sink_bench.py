"""Benchmark: inference-log throughput, over HTTP through ``kfmlops sink serve`` and in process.

- ``http``: the sink runs as its own process (the real CLI, 127.0.0.1, a free port); a client
  sends KServe-style binary-mode CloudEvents (a V1 request with one Adult row, then its response:
  ``--output`` picks the served output of one task, a number or a ``{class: probability}`` mapping)
  with ``--concurrency`` requests in flight: a minimal asyncio client in this process (pre-encoded
  HTTP/1.1 on keep-alive connections), and ``wrk`` (a C load generator) when it is installed.
  Reports events/s and predictions/s, then stops the sink (SIGTERM) and checks that every
  prediction was committed exactly once. The sink answers 200 only once an event is fsync'd in its
  write-ahead log, so these are durable events per second.
- ``append``: ``InferenceLog.append`` in this process, in batches of ``--batch`` records, to commit.

Both the client and the sink share the machine's cores, so ``http`` is a lower bound for the sink.

    .venv/bin/python benchmarks/sink_bench.py --pairs 20000 --records 500000 [--output multiclass]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import signal
import socket
import string
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ROW = {"age": 39, "workclass": "State-gov", "fnlwgt": 77516, "education": "Bachelors", "education_num": 13,
       "marital_status": "Never-married", "occupation": "Adm-clerical", "relationship": "Not-in-family",
       "race": "White", "sex": "Male", "capital_gain": 2174, "capital_loss": 0, "hours_per_week": 40,
       "native_country": "United-States"}
OUTPUTS = {"binary": 0.42, "multiclass": {"Adelie": 0.7, "Chinstrap": 0.2, "Gentoo": 0.1}, "regression": 512.5}
"""One row's served output (a V1 ``predictions`` item) per task: P(positive), class probabilities, a value."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


_WRK_SCRIPT = string.Template("""
local counter, threads = 0, 0
function setup(thread) thread:set("tid", threads); threads = threads + 1 end
function request()
  local i, first = math.floor(counter / 2), counter % 2 == 0
  counter = counter + 1
  local headers = {["ce-id"] = tid .. "-" .. i, ["ce-specversion"] = "1.0", ["ce-source"] = "http://localhost:9081/",
                   ["ce-inferenceservicename"] = "adult", ["ce-endpoint"] = "default", ["content-type"] = "application/json",
                   ["ce-type"] = first and "$request" or "$response"}
  return wrk.format("POST", "/", headers, first and '$request_body' or '$response_body')
end
""")


def _start_sink(root: Path) -> tuple[subprocess.Popen, str]:
    import httpx

    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "kfmlops.cli", "sink", "serve", "--root", str(root),
                               "--host", "127.0.0.1", "--port", str(port)])
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(url + "/healthz").status_code == 200:
                return server, url
        except httpx.TransportError:
            assert time.monotonic() < deadline and server.poll() is None, "sink did not start"
            time.sleep(0.1)


def _outputs_logged(table) -> int:
    """Rows whose output was logged: as ``prediction`` (a number) or ``output.<class>`` (a mapping)."""
    import pyarrow.compute as pc

    column = "prediction" if "output.Adelie" not in table.column_names else "output.Adelie"
    return pc.sum(pc.is_valid(table[column])).as_py()


def _stop_and_read(server: subprocess.Popen, root: Path):
    from kfmlops.monitoring.store import read_window

    server.send_signal(signal.SIGTERM)
    assert server.wait(timeout=60) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal after a graceful stop
    now = datetime.now(timezone.utc)
    return read_window(root, "adult", now - timedelta(days=1), now + timedelta(days=1))


def bench_http_wrk(seconds: int, connections: int, output) -> dict:
    """wrk (a C load generator, 2 threads) sends request/response pairs for ``seconds``."""
    from kfmlops.monitoring.sink import REQUEST, RESPONSE

    root = Path(tempfile.mkdtemp(prefix="sink-bench-"))
    script = root.parent / f"{root.name}.lua"
    script.write_text(_WRK_SCRIPT.substitute(request=REQUEST, response=RESPONSE, request_body=json.dumps({"instances": [ROW]}),
                                             response_body=json.dumps({"predictions": [output]})))
    server, url = _start_sink(root)
    out = subprocess.run(["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "-s", str(script), url + "/"],
                         capture_output=True, text=True, check=True).stdout
    events = int(re.search(r"(\d+) requests in", out).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    assert errors is None, out
    table = _stop_and_read(server, root)
    ids = table["request_id"].to_pylist()
    assert len(set(ids)) == len(ids), "duplicated rows"
    per_thread: dict[str, set[int]] = {}
    for request_id in ids:
        thread, i = request_id.split("-")
        per_thread.setdefault(thread, set()).add(int(i))
    # ids are numbered per wrk thread: every number up to the last sent must be there (wrk counts only
    # answered events, so up to one event per connection more may have been sent than it reports)
    assert all(numbers == set(range(max(numbers) + 1)) for numbers in per_thread.values()), "lost rows"
    assert events // 2 <= len(ids) <= (events + connections) // 2 + 2
    assert _outputs_logged(table) >= events // 2 - connections, "outputs not logged"
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    return {"client": "wrk", "events": events, "seconds": seconds, "events_per_s": rate, "predictions_per_s": rate / 2,
            "concurrency": connections, "rows": len(table)}


def bench_http_raw(pairs: int, concurrency: int, output) -> dict:
    """A minimal asyncio client: pre-encoded HTTP/1.1 requests on ``concurrency`` keep-alive
    connections, one event in flight on each (far cheaper per event than httpx)."""
    from kfmlops.monitoring.sink import REQUEST, RESPONSE

    root = Path(tempfile.mkdtemp(prefix="sink-bench-"))
    server, url = _start_sink(root)
    port = int(url.rsplit(":", 1)[1])
    bodies = {REQUEST: json.dumps({"instances": [ROW]}).encode(), RESPONSE: json.dumps({"predictions": [output]}).encode()}

    def encode(i: int, kind: str) -> bytes:
        head = (f"POST / HTTP/1.1\r\nhost: 127.0.0.1\r\nce-id: r{i}\r\nce-type: {kind}\r\nce-specversion: 1.0\r\n"
                "ce-source: http://localhost:9081/\r\nce-inferenceservicename: adult\r\nce-endpoint: default\r\n"
                f"content-type: application/json\r\ncontent-length: {len(bodies[kind])}\r\n\r\n")
        return head.encode() + bodies[kind]

    async def send() -> float:
        queue = list(range(pairs))

        async def worker() -> None:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            while queue:
                i = queue.pop()
                for kind in (REQUEST, RESPONSE):
                    writer.write(encode(i, kind))
                    head = await reader.readuntil(b"\r\n\r\n")
                    assert head.startswith(b"HTTP/1.1 200"), head
                    length = int(re.search(rb"content-length: (\d+)", head, re.IGNORECASE).group(1))
                    await reader.readexactly(length)
            writer.close()

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - started

    elapsed = asyncio.run(send())
    table = _stop_and_read(server, root)
    keys = set(table["request_id"].to_pylist())
    assert len(table) == len(keys) == pairs == _outputs_logged(table), "lost or duplicated rows"
    return {"client": "raw", "events": 2 * pairs, "seconds": elapsed, "events_per_s": 2 * pairs / elapsed,
            "predictions_per_s": pairs / elapsed, "concurrency": concurrency, "rows": len(table)}


def bench_append(records: int, batch: int, output) -> dict:
    from kfmlops.monitoring.config import InferenceLogConfig
    from kfmlops.monitoring.store import InferenceLog, PredictionRecord

    root = Path(tempfile.mkdtemp(prefix="append-bench-"))
    rows = [PredictionRecord(model="adult", request_id=f"r{i}", inputs=ROW, output=output, model_version="1")
            for i in range(records)]
    started = time.perf_counter()
    with InferenceLog(InferenceLogConfig(root=str(root))) as log:
        for lo in range(0, records, batch):
            log.append(rows[lo:lo + batch])
    elapsed = time.perf_counter() - started
    return {"records": records, "batch": batch, "seconds": elapsed, "records_per_s": records / elapsed,
            "files": log.files_committed}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seconds", type=int, default=20, help="wrk run length")
    parser.add_argument("--records", type=int, default=500_000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--output", choices=sorted(OUTPUTS), default="binary", help="the served output of this task")
    args = parser.parse_args()
    output = OUTPUTS[args.output]
    runs = [bench_http_raw(args.pairs, args.concurrency, output)]
    if shutil.which("wrk"):
        runs.append(bench_http_wrk(args.seconds, args.concurrency, output))
    for http in runs:
        print(f"http ({http['client']:>5}): {http['events']:,} events in {http['seconds']:.1f} s = "
              f"{http['events_per_s']:,.0f} events/s ({http['predictions_per_s']:,.0f} predictions/s, "
              f"{http['concurrency']} in flight); {http['rows']:,} rows committed, each once")
    append = bench_append(args.records, args.batch, output)
    print(f"append       : {append['records']:,} records in {append['seconds']:.1f} s = {append['records_per_s']:,.0f} records/s "
          f"(batches of {append['batch']}, {append['files']} files; {args.output} outputs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
