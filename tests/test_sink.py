"""Inference log and sink: concurrent writers lose and duplicate nothing, a killed writer leaves
readable data, KServe CloudEvents are joined into rows over real HTTP, ground truth joins back."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import random
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from dataclasses import replace
from pathlib import Path

import httpx
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import uvicorn

from kfmlops.monitoring.config import InferenceLogConfig, SinkConfig
from kfmlops.monitoring.payloads import request_rows, response_rows
from kfmlops.monitoring.sink import REQUEST, RESPONSE, EventError, EventJoiner, create_app, parse_event, server_config
from kfmlops.monitoring.wal import WriteAheadLog, read_segment, sync
from kfmlops.monitoring.store import (
    InferenceLog,
    PredictionRecord,
    import_ground_truth,
    read_window,
    window_files,
)

T0 = datetime(2026, 11, 23, 9, 0, tzinfo=timezone.utc)
ALL_TIME = (T0 - timedelta(days=1), T0 + timedelta(days=1))


def _keys(table) -> list[tuple[str, int]]:
    return list(zip(table["request_id"].to_pylist(), table["row_index"].to_pylist()))


def _record(i: int, writer: str = "w", hour: int = 0) -> PredictionRecord:
    return PredictionRecord(
        model="adult", request_id=f"{writer}-{i}", inputs={"age": 20 + i % 50, "sex": "Male" if i % 2 else "Female"},
        output=(i % 100) / 100, model_version="3", timestamp=T0 + timedelta(hours=hour, seconds=i % 3600),
    )


def test_concurrent_threads_lose_and_duplicate_nothing(tmp_path):
    log = InferenceLog(InferenceLogConfig(root=str(tmp_path), max_buffered_rows=300, flush_interval_s=0.05))

    def writer(w: int) -> None:
        records = [_record(i, f"t{w}", hour=i % 3) for i in range(2000)]
        for lo in range(0, len(records), 37):
            log.append(records[lo:lo + 37])

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    log.close()

    table = read_window(tmp_path, "adult", *ALL_TIME)
    keys = _keys(table)
    assert len(keys) == len(set(keys)) == 8 * 2000
    assert set(keys) == {(f"t{w}-{i}", 0) for w in range(8) for i in range(2000)}
    assert log.files_committed > 3 * 8  # committed in many small files across the three hour partitions
    assert len({p.parent.name for p in window_files(tmp_path, "adult", *ALL_TIME)}) == 3
    assert table["input.age"].type == "int64" and table["prediction"].null_count == 0


_WRITER = textwrap.dedent("""
    import sys
    from datetime import datetime, timezone
    from kfmlops.monitoring.config import InferenceLogConfig
    from kfmlops.monitoring.store import InferenceLog, PredictionRecord
    root, name, n, buffered = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    t0 = datetime(2026, 11, 23, 9, 30, tzinfo=timezone.utc)
    log = InferenceLog(InferenceLogConfig(root=root, max_buffered_rows=buffered, flush_interval_s=3600))
    i = 0
    while n < 0 or i < n:
        log.append([PredictionRecord(model="adult", request_id=f"{name}-{i}", inputs={"x": float(i), "pad": "p" * 200},
                                     output=0.5, timestamp=t0)])
        i += 1
    log.close()
""")


def _spawn_writer(root: Path, name: str, n: int, buffered: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", _WRITER, str(root), name, str(n), str(buffered)])


def test_concurrent_processes_lose_and_duplicate_nothing(tmp_path):
    writers = [_spawn_writer(tmp_path, f"p{k}", 3000, 250) for k in range(3)]
    assert [w.wait(timeout=120) for w in writers] == [0, 0, 0]
    keys = _keys(read_window(tmp_path, "adult", *ALL_TIME))
    assert len(keys) == len(set(keys)) == 9000
    assert {k for k, _ in keys} == {f"p{k}-{i}" for k in range(3) for i in range(3000)}


def test_killed_writer_leaves_only_whole_files(tmp_path):
    writer = _spawn_writer(tmp_path, "k", -1, 500)
    deadline = time.monotonic() + 60
    while len(window_files(tmp_path, "adult", *ALL_TIME)) < 6:
        assert time.monotonic() < deadline and writer.poll() is None
        time.sleep(0.02)
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait()

    files = window_files(tmp_path, "adult", *ALL_TIME)
    for path in files:
        assert pq.read_table(path).num_rows % 500 == 0  # every committed file is a whole commit
    table = read_window(tmp_path, "adult", *ALL_TIME)
    ids = sorted(int(r.split("-")[1]) for r in table["request_id"].to_pylist())
    assert ids == list(range(len(ids))) and len(ids) >= 6 * 500  # commits are in order: no gaps, no repeats
    # a new writer on the same root carries on
    with InferenceLog(InferenceLogConfig(root=str(tmp_path))) as log:
        log.append([_record(1, "after")])
    assert len(read_window(tmp_path, "adult", *ALL_TIME)) == len(ids) + 1


def test_payload_shapes():
    assert request_rows({"instances": [{"age": 1, "sex": "M"}, {"age": 2}]}) == [{"age": 1, "sex": "M"}, {"age": 2}]
    assert request_rows({"instances": [[1, "a"], [2, "b"]]}) == [{"0": 1, "1": "a"}, {"0": 2, "1": "b"}]
    assert request_rows({"inputs": {"age": [1, 2], "sex": ["M", "F"]}}) == [{"age": 1, "sex": "M"}, {"age": 2, "sex": "F"}]
    v2 = {"inputs": [
        {"name": "age", "shape": [2], "datatype": "INT64", "data": [39, 50]},
        {"name": "sex", "shape": [2, 1], "datatype": "BYTES", "data": [["Male"], ["Female"]]},
        {"name": "emb", "shape": [2, 2], "datatype": "FP32", "data": [[0.1, 0.2], [0.3, 0.4]]},
    ]}
    assert request_rows(v2) == [
        {"age": 39, "sex": "Male", "emb.0": 0.1, "emb.1": 0.2}, {"age": 50, "sex": "Female", "emb.0": 0.3, "emb.1": 0.4}
    ]
    assert response_rows({"predictions": [0.2, 0.9]}) == ([0.2, 0.9], None, None)
    out = {"model_name": "adult", "model_version": 7, "outputs": [{"name": "p", "shape": [2, 1], "datatype": "FP32", "data": [0.1, 0.8]}]}
    assert response_rows(out) == ([0.1, 0.8], "adult", "7")
    two = {"outputs": [{"name": "a", "shape": [1], "data": [1]}, {"name": "b", "shape": [1, 2], "data": [[0.3, 0.7]]}]}
    assert response_rows(two)[0] == [{"a": 1, "b": [0.3, 0.7]}]
    # kfmlops' own V2 answers (kfmlops.serving.outputs) read as their V1 form, the label left out
    label = {"name": "label", "shape": [2], "datatype": "BYTES", "data": ["Gentoo", "Adelie"]}
    binary = {"outputs": [{"name": "probability", "shape": [2], "datatype": "FP64", "data": [0.2, 0.9]}, label]}
    assert response_rows(binary)[0] == [0.2, 0.9]
    multiclass = {"outputs": [{"name": "probabilities", "shape": [2, 3], "datatype": "FP64",
                               "data": [0.1, 0.2, 0.7, 0.6, 0.3, 0.1],
                               "parameters": {"classes": '["Adelie", "Chinstrap", "Gentoo"]'}}, label]}
    assert response_rows(multiclass)[0] == [{"Adelie": 0.1, "Chinstrap": 0.2, "Gentoo": 0.7},
                                            {"Adelie": 0.6, "Chinstrap": 0.3, "Gentoo": 0.1}]
    unnamed = {"outputs": [{**multiclass["outputs"][0], "parameters": {}}]}
    assert response_rows(unnamed)[0] == [[0.1, 0.2, 0.7], [0.6, 0.3, 0.1]]  # no class names: as it is
    assert response_rows({"outputs": [{"name": "value", "shape": [1], "datatype": "FP64", "data": [512.5]}]})[0] == [512.5]
    assert request_rows({"something": 1}) == [] and response_rows("text") == ([], None, None)


def _event(kind: str, event_id: str, body, model="adult", time_=T0) -> dict:
    headers = {"ce-id": event_id, "ce-type": kind, "ce-source": "http://localhost:9081/", "ce-specversion": "1.0",
               "ce-inferenceservicename": model, "ce-endpoint": "default", "ce-time": time_.isoformat(),
               "content-type": "application/json"}
    return {"headers": headers, "content": json.dumps(body)}


def test_structured_and_bad_events():
    structured = {"id": "s1", "type": RESPONSE, "source": "x", "specversion": "1.0", "inferenceservicename": "adult",
                  "time": "2026-11-23T10:00:00.123456789Z", "data_base64": base64.b64encode(b'{"predictions": [1]}').decode()}
    event = parse_event({"content-type": "application/cloudevents+json"}, json.dumps(structured).encode(), T0)
    assert (event.id, event.kind, event.model, event.body) == ("s1", RESPONSE, "adult", {"predictions": [1]})
    assert event.time == datetime(2026, 11, 23, 10, 0, 0, 123456, tzinfo=timezone.utc)
    for headers, body, message in [
        ({"ce-type": REQUEST}, b"{}", "missing CloudEvent id"),
        ({"ce-id": "1", "ce-type": "dev.knative.other"}, b"{}", "neither"),
        ({"ce-id": "1", "ce-type": REQUEST}, b"{not json", "not JSON"),
    ]:
        with pytest.raises(EventError, match=message):
            parse_event(headers, body, T0)


def test_joiner_times_out_and_bounds_pending():
    clock = [0.0]
    joiner = EventJoiner(timeout_s=10, max_pending=3, max_pending_bytes=10_000, clock=lambda: clock[0])
    parse = lambda e: parse_event(e["headers"], e["content"].encode(), T0)  # noqa: E731
    assert joiner.add(parse(_event(REQUEST, "a", {"instances": [{"x": 1}]}))) == []
    clock[0] = 5
    for i in "bcd":
        joiner.add(parse(_event(REQUEST, i, {"instances": [{"x": 2}]})))
    assert joiner.pending == 3 and joiner.unmatched == 1  # "a" was pushed out by capacity
    clock[0] = 16
    expired = joiner.expire()
    assert [r.request_id for r in expired] == ["b", "c", "d"] and all(r.output is None for r in expired)
    late = joiner.add(parse(_event(RESPONSE, "b", {"predictions": [0.4]})))
    assert late == []  # its request was already written alone: a late duplicate is dropped
    pair = [parse(_event(RESPONSE, "e", {"predictions": [0.7]})), parse(_event(REQUEST, "e", {"instances": [{"x": 3}]}))]
    assert joiner.add(pair[0]) == []
    (record,) = joiner.add(pair[1])
    assert (record.inputs, record.output, record.model_version) == ({"x": 3}, 0.7, None)
    big = joiner.add(parse(_event(REQUEST, "big", {"instances": [{"x": "y" * 20_000}]})))
    assert [r.request_id for r in big] == ["big"] and joiner.pending == 0  # over the byte budget: written alone


@contextmanager
def running_sink(config: SinkConfig):
    """The sink app under uvicorn on a free loopback port, in a thread; stopped (and drained) on exit."""
    app = create_app(InferenceLog(config.log), config)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(server_config(app, config))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive()
        time.sleep(0.01)
    try:
        yield f"{'https' if config.tls_cert_file else 'http'}://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def test_sink_joins_kserve_events_over_http(tmp_path):
    events = []
    for i in range(120):
        if i % 2:  # V1, two instances per request
            request = {"instances": [{"age": i, "sex": "Male"}, {"age": i + 1, "sex": "Female"}]}
            response = {"predictions": [0.25, 0.75]}
        else:  # V2, one instance, the version named by the response
            request = {"inputs": [{"name": "age", "shape": [1], "datatype": "INT64", "data": [i]},
                                  {"name": "sex", "shape": [1], "datatype": "BYTES", "data": ["Male"]}]}
            response = {"model_name": "adult", "model_version": "4",
                        "outputs": [{"name": "p", "shape": [1], "datatype": "FP32", "data": [0.5]}]}
        events += [_event(REQUEST, f"id-{i}", request), _event(RESPONSE, f"id-{i}", response)]
    events += [_event(REQUEST, f"req-only-{i}", {"instances": [{"age": 1, "sex": "Male"}]}) for i in range(5)]
    events += [_event(RESPONSE, f"resp-only-{i}", {"predictions": [0.1]}) for i in range(4)]
    events += random.Random(0).sample(events, 10)  # redeliveries
    random.Random(1).shuffle(events)

    config = SinkConfig(log=InferenceLogConfig(root=str(tmp_path), max_buffered_rows=64), join_timeout_s=60)

    async def send_all(url: str) -> list[int]:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            semaphore = asyncio.Semaphore(16)

            async def post(event):
                async with semaphore:
                    return (await client.post("/", **event)).status_code

            codes = await asyncio.gather(*(post(e) for e in events))
            bad = await client.post("/", headers={"ce-id": "x", "ce-type": "other"}, content=b"{}")
            health = await client.get("/healthz")
            return [*codes, bad.status_code, health.status_code]

    with running_sink(config) as url:
        codes = asyncio.run(send_all(url))
    assert codes[:-2] == [200] * len(events) and codes[-2:] == [400, 200]

    table = read_window(tmp_path, "adult", *ALL_TIME)
    rows = {key: row for key, row in zip(_keys(table), table.to_pylist())}
    assert len(rows) == len(table) == 60 * 2 + 60 + 5 + 4  # one row per instance, redeliveries dropped
    assert rows[("id-1", 1)]["input.age"] == 2 and rows[("id-1", 1)]["prediction"] == 0.75
    assert rows[("id-2", 0)]["model_version"] == "4" and rows[("id-2", 0)]["input.sex"] == "Male"
    assert all(rows[(f"req-only-{i}", 0)]["prediction"] is None for i in range(5))
    assert all(rows[(f"resp-only-{i}", 0)]["input.age"] is None for i in range(4))
    assert {r["endpoint"] for r in rows.values()} == {"default"}


def test_sink_writes_unmatched_after_timeout(tmp_path):
    config = SinkConfig(log=InferenceLogConfig(root=str(tmp_path), flush_interval_s=0.1), join_timeout_s=0.3)
    with running_sink(config) as url:
        assert httpx.post(url, **_event(REQUEST, "lonely", {"instances": [{"age": 30}]})).status_code == 200
        deadline = time.monotonic() + 10
        while not len(table := read_window(tmp_path, "adult", *ALL_TIME)):
            assert time.monotonic() < deadline
            time.sleep(0.05)
    assert table["request_id"].to_pylist() == ["lonely"] and table["prediction"].to_pylist() == [None]


def test_ground_truth_joins_latest_label(tmp_path):
    with InferenceLog(InferenceLogConfig(root=str(tmp_path))) as log:
        log.append([_record(i) for i in range(10)])
    (tmp_path / "truth.csv").write_text("Request ID,Y\nw-1,>50K\nw-2,<=50K\nw-3, >50K \nunknown,>50K\nw-5,\n")
    assert import_ground_truth(tmp_path, str(tmp_path / "truth.csv"), label="Y", request_id="Request ID") == 4
    (tmp_path / "late.csv").write_text("request_id,label\nw-2,>50K\n")  # a corrected label arrives later
    import_ground_truth(tmp_path, str(tmp_path / "late.csv"))
    (tmp_path / "number.jsonl").write_text('{"request_id": "w-6", "label": 12.25}\n')
    (tmp_path / "boolean.jsonl").write_text('{"request_id": "w-7", "label": true}\n')
    for name in ("number.jsonl", "boolean.jsonl"):
        import_ground_truth(tmp_path, str(tmp_path / name))
    table = read_window(tmp_path, "adult", *ALL_TIME)
    labels = dict(zip(table["request_id"].to_pylist(), table["label"].to_pylist()))
    assert {k: labels[k] for k in ("w-1", "w-2", "w-3", "w-4", "w-5", "w-6", "w-7")} == {
        "w-1": ">50K", "w-2": ">50K", "w-3": ">50K", "w-4": None, "w-5": None, "w-6": "12.25", "w-7": "True"}
    assert table["label"].type == "string" and pc.sum(pc.is_valid(table["label"])).as_py() == 5


def test_outputs_kept_per_task(tmp_path):
    """A number (P(positive), a value), a {class: probability} mapping, anything else: as served."""
    outputs = [0.25, {"Adelie": 0.7, "Chinstrap": 0.2, "Gentoo": 0.1}, {"Gentoo": 1}, [3.5], "Adelie", {"a": "b"}, None]
    with InferenceLog(InferenceLogConfig(root=str(tmp_path))) as log:
        log.append([replace(_record(i), output=o) for i, o in enumerate(outputs)])
    table = read_window(tmp_path, "adult", *ALL_TIME).sort_by("request_id")
    assert table["prediction"].to_pylist() == [0.25, None, None, 3.5, None, None, None]
    assert table["output.Adelie"].to_pylist() == [None, 0.7, None, None, None, None, None]
    assert table["output.Gentoo"].to_pylist() == [None, 0.1, 1.0, None, None, None, None]
    assert table["output_json"].to_pylist() == [None, None, None, None, '"Adelie"', '{"a": "b"}', None]


def test_sink_config_from_yaml(tmp_path):
    (tmp_path / "sink.yaml").write_text("log: {root: log, max_buffered_rows: 100}\nport: 9000\njoin_timeout_s: 5\n")
    config = SinkConfig.from_yaml(tmp_path / "sink.yaml")
    assert (config.log.root, config.log.max_buffered_rows, config.port) == (str(tmp_path / "log"), 100, 9000)
    (tmp_path / "bad.yaml").write_text("log: {root: log}\njoin_timeout: 5\n")
    with pytest.raises(ValueError, match="join_timeout"):
        SinkConfig.from_yaml(tmp_path / "bad.yaml")


def test_sink_cli_imports_labels(tmp_path, capsys):
    from kfmlops.cli import main

    (tmp_path / "truth.jsonl").write_text('{"request_id": "a", "label": 1}\n{"request_id": "b", "label": 0}\n')
    assert main(["sink", "import-labels", "--root", str(tmp_path), str(tmp_path / "truth.jsonl")]) == 0
    assert "imported 2 labels" in capsys.readouterr().out


def test_bad_events_are_refused_naming_the_field():
    for time_, message in [("0001-01-01T00:00:00+05:00", "ce-time '0001-01-01T00:00:00\\+05:00' is out of range"),
                           ("yesterday", "ce-time 'yesterday' is not an RFC 3339 time"),
                           ("1969-12-31T23:00:00Z", "out of range")]:
        event = _event(REQUEST, "t", {"instances": [{"x": 1}]})
        with pytest.raises(EventError, match=message):
            parse_event({**event["headers"], "ce-time": time_}, event["content"].encode(), T0)
    structured = {"id": "s", "type": REQUEST, "time": "0001-01-01T00:00:00+05:00", "data": {"instances": [{"x": 1}]}}
    with pytest.raises(EventError, match="^time '0001"):
        parse_event({"content-type": "application/cloudevents+json"}, json.dumps(structured).encode(), T0)
    shifted = parse_event({**_event(REQUEST, "t", {})["headers"], "ce-time": "2026-11-23T12:30:00+05:00"}, b"{}", T0)
    assert shifted.time == datetime(2026, 11, 23, 7, 30, tzinfo=timezone.utc)

    empty = json.dumps({"instances": [{}] * 1000}).encode()  # 4 MB of these became 1.32 M rows
    with pytest.raises(EventError, match=r"instances\[0\] is empty") as refused:
        parse_event(_event(REQUEST, "e", {})["headers"], empty, T0, max_rows=100)
    assert refused.value.status == 400
    with pytest.raises(EventError, match=r"instances\[1\] is empty"):
        parse_event(_event(REQUEST, "e", {})["headers"], b'{"instances": [[1], []]}', T0)
    for kind, body, field in [(REQUEST, {"instances": [[i] for i in range(101)]}, "instances"),
                              (RESPONSE, {"predictions": [0.5] * 101}, "predictions")]:
        with pytest.raises(EventError, match=f"{field} holds 101 rows; the sink takes at most 100") as refused:
            parse_event(_event(kind, "big", {})["headers"], json.dumps(body).encode(), T0, max_rows=100)
        assert refused.value.status == 413
    assert len(parse_event(_event(REQUEST, "ok", {})["headers"], b'{"instances": []}', T0, max_rows=100).body["instances"]) == 0


def test_log_refuses_a_record_without_an_hour_partition_and_keeps_the_rest(tmp_path):
    log = InferenceLog(InferenceLogConfig(root=str(tmp_path)))
    bad = PredictionRecord(model="adult", request_id="bad", timestamp=datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=5))))
    with pytest.raises(ValueError, match="'bad': timestamp 0001-01-01T00:00:00\\+05:00 has no UTC hour partition"):
        log.append([_record(1), bad])
    assert log.buffered == 0  # nothing of the refused chunk was buffered
    log.append([_record(2)])
    log.close()
    assert _keys(read_window(tmp_path, "adult", *ALL_TIME)) == [("w-2", 0)]


def test_one_request_is_committed_in_one_file(tmp_path):
    with InferenceLog(InferenceLogConfig(root=str(tmp_path), max_buffered_rows=10)) as log:
        log.append([replace(_record(0, "big"), row_index=i, timestamp=T0) for i in range(25)]
                   + [replace(_record(i), timestamp=T0) for i in range(5)])
    files = window_files(tmp_path, "adult", *ALL_TIME)
    assert sorted(pq.read_table(f).num_rows for f in files) == [5, 25]


def _health(url: str) -> dict:
    return httpx.get(url + "/healthz").json()


def test_sink_refuses_bad_events_and_keeps_every_other(tmp_path):
    """A bad time, empty instances and an oversized batch are refused with 4xx naming the field; the
    events around them are joined or written alone (the background writer survives), and a failed
    commit of one partition is retried without stopping the rest."""
    blocked_hour = T0 + timedelta(hours=5)
    partition = tmp_path / "predictions" / "model=adult" / "hour=2026-11-23T14"
    partition.parent.mkdir(parents=True)
    partition.write_text("a file where the partition directory should be: commits there fail")
    config = SinkConfig(log=InferenceLogConfig(root=str(tmp_path), flush_interval_s=0.1), join_timeout_s=1.0,
                        max_rows_per_event=100)
    good = [_event(kind, f"p{i}", body) for i in range(6)
            for kind, body in ((REQUEST, {"instances": [{"age": i}]}), (RESPONSE, {"predictions": [0.5]}))]
    good += [_event(REQUEST, f"alone{i}", {"instances": [{"age": i}]}) for i in range(6)]
    good += [_event(REQUEST, "later", {"instances": [{"age": 1}]}, time_=blocked_hour)]
    with running_sink(config) as url:
        bad_time = _event(REQUEST, "bad", {"instances": [{"age": 1}]})
        bad_time["headers"]["ce-time"] = "0001-01-01T00:00:00+05:00"
        answers = [httpx.post(url, **bad_time), httpx.post(url, **good[0])]
        answers.append(httpx.post(url, headers=good[2]["headers"], content=json.dumps({"instances": [{}] * 1000})))
        answers.append(httpx.post(url, **_event(REQUEST, "huge", {"instances": [[i] for i in range(101)]})))
        codes = [a.status_code for a in answers] + [httpx.post(url, **e).status_code for e in good[1:]]
        assert codes[:4] == [400, 200, 400, 413] and codes[4:] == [200] * (len(good) - 1)
        assert "ce-time" in answers[0].json()["error"] and "instances[0] is empty" in answers[2].json()["error"]
        assert "max_rows_per_event" in answers[3].json()["error"]
        deadline = time.monotonic() + 20
        while (health := _health(url))["pending"] or not health["errors"] or len(read_window(tmp_path, "adult", *ALL_TIME)) < 12:
            assert time.monotonic() < deadline, health
            time.sleep(0.05)
        assert health["status"] == "degraded" and "committing predictions" in health["last_error"]
        partition.unlink()  # the disk is fixed: the retried commit goes through
        while read_window(tmp_path, "adult", T0, T0 + timedelta(hours=6)).num_rows < 13 or _health(url)["status"] != "ok":
            assert time.monotonic() < deadline, _health(url)
            time.sleep(0.05)
    table = read_window(tmp_path, "adult", *ALL_TIME)
    rows = dict(zip(table["request_id"].to_pylist(), table["prediction"].to_pylist()))
    assert sorted(rows) == sorted({f"p{i}" for i in range(6)} | {f"alone{i}" for i in range(6)} | {"later"})
    assert all(rows[f"p{i}"] == 0.5 for i in range(6)) and rows["alone0"] is None
    assert not any((tmp_path / "wal").iterdir())  # stopped cleanly: the write-ahead log is gone


def _start_sink_process(config: Path, stderr: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with open(stderr, "ab") as err:
        process = subprocess.Popen([sys.executable, "-m", "kfmlops.cli", "sink", "serve", "--config", str(config),
                                    "--host", "127.0.0.1", "--port", str(port)], stderr=err)
    url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 60
    while True:
        try:
            if httpx.get(url + "/healthz").status_code == 200:
                return process, url
        except httpx.TransportError:
            assert time.monotonic() < deadline and process.poll() is None, "the sink did not start"
            time.sleep(0.05)


def test_sigkill_loses_no_acknowledged_event(tmp_path):
    """A real sink process: every event answered 200 before a SIGKILL is in the log exactly once
    after a restart, whether it was committed, buffered, or waiting for its pair at the kill."""
    (tmp_path / "sink.yaml").write_text("log: {root: log, flush_interval_s: 0.5}\njoin_timeout_s: 5\n")
    sink, url = _start_sink_process(tmp_path / "sink.yaml", tmp_path / "first.log")
    acknowledged: list[str] = []

    async def send(events: list[dict]) -> None:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            semaphore = asyncio.Semaphore(16)

            async def post(event):
                async with semaphore:
                    if (await client.post("/", **event)).status_code == 200:
                        acknowledged.append(event["headers"]["ce-id"])

            await asyncio.gather(*(post(e) for e in events))

    try:
        for wave in range(6):  # waves a checkpoint apart: some events committed, some only in the write-ahead log
            ids = [f"w{wave}-{i}" for i in range(50)]
            asyncio.run(send([_event(kind, i, body) for i in ids for kind, body in (
                (REQUEST, {"instances": [{"age": 30}, {"age": 31}]}), (RESPONSE, {"predictions": [0.1, 0.9]}))]))
            time.sleep(0.3)
        asyncio.run(send([_event(REQUEST, f"open-{i}", {"instances": [{"age": 40}]}) for i in range(5)]))
        assert len(acknowledged) == 6 * 100 + 5
    finally:
        sink.kill()  # SIGKILL, at once after the last 200
        sink.wait()
    assert window_files(tmp_path / "log", "adult", *ALL_TIME)  # checkpoints committed some before the kill,
    assert list((tmp_path / "log" / "wal").glob("*/seg-*.wal"))  # the rest is in the write-ahead log only

    sink, url = _start_sink_process(tmp_path / "sink.yaml", tmp_path / "second.log")
    try:  # the responses of the requests that were waiting at the kill arrive after the restart
        asyncio.run(send([_event(RESPONSE, f"open-{i}", {"predictions": [0.7]}) for i in range(5)]))
        bad = _event(REQUEST, "bad", {"instances": [{"age": 1}]})
        bad["headers"]["ce-time"] = "0001-01-01T00:00:00+05:00"
        assert httpx.post(url, **bad).status_code == 400
    finally:
        sink.send_signal(signal.SIGTERM)
        assert sink.wait(timeout=60) in (0, -signal.SIGTERM)
    log = (tmp_path / "second.log").read_text()
    assert "replayed" in log and "shutdown failed" not in log and "Traceback" not in log

    table = read_window(tmp_path / "log", "adult", *ALL_TIME)
    keys = _keys(table)
    assert len(keys) == len(set(keys))  # nothing twice
    assert {k for k, _ in keys} == {i for i in acknowledged if i.startswith(("w", "open"))}  # nothing lost
    assert len(keys) == 6 * 50 * 2 + 5
    rows = dict(zip(keys, table.select(["input.age", "prediction"]).to_pylist()))
    assert all(rows[(f"w{w}-{i}", 1)] == {"input.age": 31, "prediction": 0.9} for w in range(6) for i in range(50))
    assert all(rows[(f"open-{i}", 0)] == {"input.age": 40, "prediction": 0.7} for i in range(5))  # joined after replay
    assert not list((tmp_path / "log" / "wal").glob("*/seg-*.wal"))


def test_write_ahead_log_adopts_only_dead_writers_and_stops_at_a_torn_tail(tmp_path):
    live = WriteAheadLog(tmp_path)
    segment, fd = live.write([(b"m1", b"body-1"), (b"m2", b"body-2")])
    sync(fd)
    other = WriteAheadLog(tmp_path)
    assert list(other.replay()) == []  # a live writer's directory is not adopted
    other.close(remove=True)
    live.close()  # dies without releasing: the next writer adopts its segments
    path = next(tmp_path.glob(f"{live.own.name}/seg-*.wal"))
    with open(path, "ab") as torn:
        torn.write(b"\x10\x00\x00\x00\x05")  # half a header: a crash in the middle of a write
    assert list(read_segment(path)) == [(b"m1", b"body-1"), (b"m2", b"body-2")]
    heir = WriteAheadLog(tmp_path)
    assert [(meta, body) for _, meta, body in heir.replay()] == [(b"m1", b"body-1"), (b"m2", b"body-2")]
    heir.release(heir.rotate())
    assert not live.own.exists()  # released: the dead writer's directory is gone
    heir.close(remove=True)
    assert not any(tmp_path.iterdir())


def _rotate(path: Path, token: str) -> None:
    """Replace the token file as the kubelet updates a Secret: a new file renamed into place."""
    (path.parent / ".new").write_text(token + "\n")
    os.replace(path.parent / ".new", path)


def test_sink_asks_for_the_bearer_token_and_follows_its_rotation(tmp_path):
    token = tmp_path / "secret" / "token"
    token.parent.mkdir()
    _rotate(token, "first-token")
    config = SinkConfig(log=InferenceLogConfig(root=str(tmp_path / "log")), auth_token_file=str(token), join_timeout_s=60)

    def post(url: str, event_id: str, authorization: str | None) -> httpx.Response:
        event = _event(REQUEST, event_id, {"instances": [{"age": 1}]})
        headers = event["headers"] | ({"authorization": authorization} if authorization else {})
        return httpx.post(url, headers=headers, content=event["content"])

    with running_sink(config) as url:
        refused = [post(url, "none", None), post(url, "wrong", "Bearer first-tokeN"), post(url, "basic", "Basic Zmlyc3Q="),
                   post(url, "prefix", "Bearer first")]
        assert [r.status_code for r in refused] == [401] * 4
        assert refused[0].headers["www-authenticate"].startswith("Bearer") and "bearer token" in refused[0].json()["error"]
        assert post(url, "ok-1", "Bearer first-token").status_code == 200
        assert post(url, "ok-2", "bearer   first-token").status_code == 200  # the scheme is case-insensitive
        _rotate(token, "second-token")
        assert post(url, "old", "Bearer first-token").status_code == 401
        assert post(url, "ok-3", "Bearer second-token").status_code == 200
        token.unlink()  # a Secret gone: every event refused, never an open sink
        assert post(url, "gone", "Bearer second-token").status_code == 401
        health = httpx.get(url + "/healthz").json()  # probes ask no token
        assert health["auth"] == "bearer" and "No such file" in health["auth_problem"]
        _rotate(token, "second-token")
        assert post(url, "ok-4", "Bearer second-token").status_code == 200
        assert httpx.get(url + "/healthz").json()["auth_problem"] is None
    ids = read_window(tmp_path / "log", "adult", *ALL_TIME)["request_id"].to_pylist()
    assert sorted(ids) == ["ok-1", "ok-2", "ok-3", "ok-4"]  # nothing refused was written


def _self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 (an IP address SAN) and its key, made here with cryptography."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kfmlops-sink-test")])
    now = datetime.now(timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "tls.crt", directory / "tls.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_sink_serves_https_with_its_certificate(tmp_path):
    import ssl

    cert, key = _self_signed(tmp_path)
    (tmp_path / "token").write_text("t0k3n")
    config = SinkConfig(log=InferenceLogConfig(root=str(tmp_path / "log")), tls_cert_file=str(cert), tls_key_file=str(key),
                        auth_token_file=str(tmp_path / "token"), join_timeout_s=60)
    trusted = ssl.create_default_context(cafile=str(cert))
    with running_sink(config) as url:
        assert url.startswith("https://127.0.0.1:")
        with httpx.Client(verify=trusted) as client:
            for kind, body in ((REQUEST, {"instances": [{"age": 7}]}), (RESPONSE, {"predictions": [0.5]})):
                event = _event(kind, "tls-1", body)
                response = client.post(url, headers=event["headers"] | {"authorization": "Bearer t0k3n"},
                                       content=event["content"])
                assert response.status_code == 200
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            httpx.get(url + "/healthz")  # a client that does not trust the certificate
        with pytest.raises(httpx.HTTPError):
            httpx.get(url.replace("https", "http") + "/healthz")  # no plain HTTP on the TLS port
    (row,) = read_window(tmp_path / "log", "adult", *ALL_TIME).to_pylist()
    assert (row["request_id"], row["input.age"], row["prediction"]) == ("tls-1", 7, 0.5)
    with pytest.raises(ValueError, match="both tls_cert_file and tls_key_file"):
        SinkConfig(log=InferenceLogConfig(root="x"), tls_cert_file=str(cert))
