"""Probing a running predictor: SLO traffic from the test split, and a battery of malformed requests.

:func:`probe` consumes a predictor's base URL, the model name, test rows (a DataFrame of the
feature columns), a :class:`~kfmlops.serving.config.Probe`, the model's task and the protocol; it
sends the rows as V1 (or V2, :func:`v2_body`) requests from ``concurrency`` concurrent clients,
bounded in count and time, and produces a :class:`ProbeReport` (status counts, p50/p99 latency, and
each row's scores read back from kfmlops's outputs, :mod:`kfmlops.serving.outputs`; without a task,
as for KServe's own runtimes, the answers are not read).

:func:`bad_requests` builds requests that a correct predictor must refuse with a 4xx (missing
column, wrong type, unseen category, null in a required column, empty and oversized batches,
malformed JSON, bad V2 tensors); :func:`send_bad_requests` sends them and reports each answer.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import httpx
import numpy as np
import orjson
import pandas as pd

from kfmlops.serving.config import Probe
from kfmlops.serving.outputs import scores_from_v1, scores_from_v2
from kfmlops.serving.predictor import records
from kfmlops.serving.schema import NUMERIC_TYPES
from kfmlops.tasks import Task

JSON = {"content-type": "application/json"}


@dataclass(frozen=True)
class ProbeReport:
    """What a predictor answered to the probe; ``predictions``: the scores of each row (``[n, K]`` or
    ``[n]``; NaN where a row was not scored or its answer not read)."""

    requests: int
    rows: int
    ok: int
    rejected: int
    errors: int
    seconds: float
    p50_ms: float
    p99_ms: float
    predictions: np.ndarray = field(repr=False)
    error_samples: list[str] = field(default_factory=list)

    @property
    def error_rate(self) -> float:
        """5xx answers, transport errors and 200 answers that are not the task's outputs, per request."""
        return self.errors / self.requests if self.requests else 1.0

    @property
    def rejected_rate(self) -> float:
        return self.rejected / self.requests if self.requests else 0.0

    def summary(self) -> dict:
        return {
            "requests": self.requests,
            "rows": self.rows,
            "ok": self.ok,
            "rejected": self.rejected,
            "errors": self.errors,
            "seconds": round(self.seconds, 3),
            "rows_per_second": round(self.rows / self.seconds, 1) if self.seconds else 0.0,
            "p50_ms": round(self.p50_ms, 3),
            "p99_ms": round(self.p99_ms, 3),
            "error_samples": self.error_samples,
        }


def probe(url: str, model_name: str, frame: pd.DataFrame, config: Probe, task: Task | None, protocol: str = "v1",
          request_ids: str | None = None) -> ProbeReport:
    """Send ``frame``'s first ``config.rows`` rows to ``url``; see the module docstring. With
    ``request_ids``, the request that starts at row ``i`` carries ``x-request-id: {request_ids}{i}``
    (so that labels can be sent for it later)."""
    head = frame.head(config.rows).reset_index(drop=True)
    return asyncio.run(_probe(url, model_name, head, config, task, protocol, request_ids))


def v2_body(frame: pd.DataFrame) -> dict:
    """An Open Inference request for ``frame``: one tensor per column (BYTES for text, INT64, FP64 or
    BOOL by the column's dtype; missing values as null)."""
    inputs = []
    for column in frame.columns:
        kind = frame[column].dtype.kind
        datatype = {"i": "INT64", "u": "INT64", "f": "FP64", "b": "BOOL"}.get(kind, "BYTES")
        values = frame[column].astype(object).where(frame[column].notna(), None).tolist()
        inputs.append({"name": column, "shape": [len(frame)], "datatype": datatype, "data": values})
    return {"inputs": inputs}


async def _probe(url: str, model_name: str, frame: pd.DataFrame, config: Probe, task: Task | None, protocol: str,
                 request_ids: str | None) -> ProbeReport:
    step = config.rows_per_request
    if protocol == "v2":
        path = f"/v2/models/{model_name}/infer"
        chunks = [(start, orjson.dumps(v2_body(frame.iloc[start : start + step]))) for start in range(0, len(frame), step)]
    else:
        path = f"/v1/models/{model_name}:predict"
        rows = records(frame)
        chunks = [(start, orjson.dumps({"instances": rows[start : start + step]})) for start in range(0, len(rows), step)]
    width = (len(frame), len(task.classes)) if task is not None and task.is_classification else (len(frame),)
    predictions = np.full(width, np.nan)
    latencies: list[float] = []
    counts = {"ok": 0, "rejected": 0, "errors": 0}
    samples: list[str] = []
    deadline = time.monotonic() + config.timeout_s
    pending = iter(chunks)

    def read(start: int, response: httpx.Response) -> bool:
        """Record the answer's scores; False (an error) when it is not kfmlops's output for the task."""
        if task is None:
            return True
        try:
            body = response.json()
            scored = scores_from_v2(task, body["outputs"]) if protocol == "v2" else scores_from_v1(task, body["predictions"])
        except (KeyError, TypeError, ValueError) as exc:
            samples.append(f"unreadable answer: {type(exc).__name__}: {exc}")
            return False
        predictions[start : start + len(scored)] = scored
        return True

    async def worker(client: httpx.AsyncClient) -> None:
        for start, body in pending:
            if time.monotonic() > deadline:
                return
            began = time.perf_counter()
            try:
                headers = JSON if request_ids is None else {**JSON, "x-request-id": f"{request_ids}{start}"}
                response = await client.post(path, content=body, headers=headers)
            except httpx.HTTPError as exc:
                counts["errors"] += 1
                samples.append(f"{type(exc).__name__}: {exc}")
                continue
            latencies.append(time.perf_counter() - began)
            if response.status_code == 200:
                counts["ok" if read(start, response) else "errors"] += 1
            else:
                counts["rejected" if response.status_code < 500 else "errors"] += 1
                samples.append(f"{response.status_code}: {response.text[:300]}")

    limits = httpx.Limits(max_connections=config.concurrency, max_keepalive_connections=config.concurrency)
    began = time.perf_counter()
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=config.timeout_s) as client:
        await asyncio.gather(*(worker(client) for _ in range(config.concurrency)))
    seconds = time.perf_counter() - began
    sent = sum(counts.values())
    p50, p99 = (float(np.percentile(latencies, q)) * 1000 for q in (50, 99)) if latencies else (float("nan"),) * 2
    return ProbeReport(
        requests=sent,
        rows=min(len(frame), sent * step),
        ok=counts["ok"],
        rejected=counts["rejected"],
        errors=counts["errors"],
        seconds=seconds,
        p50_ms=p50,
        p99_ms=p99,
        predictions=predictions,
        error_samples=samples[:5],
    )


@dataclass(frozen=True)
class BadRequest:
    case: str
    path: str  # relative to the model: ":predict" (V1) or "/infer" (V2)
    body: bytes


@dataclass(frozen=True)
class BadRequestResult:
    case: str
    status: int | None
    message: str

    @property
    def refused(self) -> bool:
        """Answered with a 4xx, as it must be."""
        return self.status is not None and 400 <= self.status < 500


def bad_requests(
    signature: list[tuple[str, str, bool]], row: dict, *, max_rows: int, unseen_rejected: bool = True
) -> list[BadRequest]:
    """Requests a predictor must refuse, built from the signature (``[(name, type, required)]``, the
    columns the model reads) and a valid row; ``unseen_rejected``: the predictor knows the categories
    (a kfmlops bundle with ``serving.unseen_categories: reject``)."""
    numeric = next((name for name, type_, _ in signature if type_ in NUMERIC_TYPES), None)
    required_numeric = next((name for name, type_, required in signature if type_ in NUMERIC_TYPES and required), None)
    categorical = next((name for name, type_, _ in signature if type_ == "string"), None)

    def v1(rows) -> bytes:
        return orjson.dumps({"instances": rows})

    cases = [
        BadRequest("missing_columns", ":predict", v1([{"not_a_column": 1}])),
        BadRequest("empty_instances", ":predict", v1([])),
        BadRequest("oversized_batch", ":predict", v1([row] * (max_rows + 1))),
        BadRequest("malformed_json", ":predict", b'{"instances": [{"age": '),
        BadRequest("not_an_object", ":predict", b"[1, 2, 3]"),
        BadRequest("instances_not_a_list", ":predict", b'{"instances": "x"}'),
        BadRequest("short_list_row", ":predict", v1([[1, 2]])),
        BadRequest("v2_no_inputs", "/infer", orjson.dumps({"inputs": []})),
        BadRequest("v2_malformed_json", "/infer", b'{"inputs": [{'),
        BadRequest("v2_missing_inputs", "/infer", orjson.dumps({"inputs": [{"name": "x", "shape": [1], "datatype": "FP64", "data": [1.0]}]})),
    ]
    if numeric:
        cases.append(BadRequest("string_in_numeric_column", ":predict", v1([{**row, numeric: "not-a-number"}])))
        cases.append(BadRequest("bool_in_numeric_column", ":predict", v1([{**row, numeric: True}])))
        tensors = [_tensor(name, value) for name, value in row.items()]
        tensors = [t if t["name"] != numeric else {**t, "datatype": "BYTES", "data": ["1"]} for t in tensors]
        cases.append(BadRequest("v2_wrong_datatype", "/infer", orjson.dumps({"inputs": tensors})))
    if required_numeric:
        cases.append(BadRequest("null_in_required_numeric_column", ":predict", v1([{**row, required_numeric: None}])))
    if categorical:
        cases.append(BadRequest("number_in_categorical_column", ":predict", v1([{**row, categorical: 7}])))
        if unseen_rejected:
            cases.append(BadRequest("unseen_category", ":predict", v1([{**row, categorical: "__kfmlops_unseen__"}])))
    return cases


def _tensor(name: str, value) -> dict:
    datatype = "BYTES" if value is None or isinstance(value, str) else "FP64"
    return {"name": name, "shape": [1], "datatype": datatype, "data": [value]}


def send_bad_requests(url: str, model_name: str, cases: list[BadRequest], timeout_s: float = 30.0) -> list[BadRequestResult]:
    """POST each case and record the answer (status None when the connection failed)."""
    results = []
    with httpx.Client(base_url=url, timeout=timeout_s) as client:
        for case in cases:
            prefix = "/v1/models/" if case.path == ":predict" else "/v2/models/"
            try:
                response = client.post(prefix + model_name + case.path, content=case.body, headers=JSON)
            except httpx.HTTPError as exc:
                results.append(BadRequestResult(case.case, None, f"{type(exc).__name__}: {exc}"))
                continue
            results.append(BadRequestResult(case.case, response.status_code, response.text[:500]))
    return results
