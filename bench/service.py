"""The read path as users meet it: `/query` against its own parts, and the cold start of the API function
against a bare FastAPI + Mangum app, each in a fresh process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import REPO, Store, median, percentile

API_KEY = "bench-key-0123456789abcdef"


def query_overhead(store: Store, questions: list[str]) -> dict[str, Any]:
    """p50 of POST /query (extractive, top 5) against the question embedding plus the engine reads it
    contains (the hybrid ranking of 25 points, the 5 passages kept, their BM25 scores), on the same store
    and questions. /query is timed through the API function's own delivery (the app under Mangum, called
    with an API Gateway HTTP API event, as Lambda calls `app.handlers.api_handler`) and through FastAPI's
    TestClient; a bare FastAPI app echoing the body is timed beside each: the HTTP stack's own share, which
    `ratio_beyond_http` leaves out."""
    from fastapi import FastAPI
    from fastapi.testclient import TestClient
    from mangum import Mangum

    from app.handlers import lambda_api
    from app.main import create_app
    from stores.ports import SearchMode

    c = store.container
    c.settings.api_keys = {API_KEY: "bench"}
    encoder, sparse, index = c.query_embedder, c.sparse, c.index
    encoder.embed_query("warm up")
    bare_app = FastAPI()

    @bare_app.post("/query")
    def echo(body: dict[str, Any]) -> dict[str, Any]:
        return body

    app = create_app(c, start_worker=False)  # as `eventrag serve` runs it
    template = json.loads((REPO / "tests" / "events" / "apigw_http_v2.json").read_text())
    # As the API function runs them, called (event, context).
    lambdas: list[Any] = [lambda_api(c), Mangum(bare_app, lifespan="off")]
    times: dict[str, list[float]] = {k: [] for k in ("parts", "lambda", "lambda_bare", "client", "client_bare")}
    with TestClient(app) as client, TestClient(bare_app) as bare_client:
        # `embed_query` remembers its last questions (one /query embeds its question twice): each timed
        # call starts without it, or the ones after the first would skip the model.
        forget = getattr(encoder, "forget_queries", lambda: None)
        for i, q in enumerate(["warm up", *questions]):
            body = {"question": q, "top_k": 5}
            forget()
            t0 = time.perf_counter()
            dense = encoder.embed_query(q)
            terms = sparse.encode_query(q)
            ranked = index.rank("bench", dense=dense, sparse=terms, mode=SearchMode.HYBRID, limit=25)
            hits = index.hits("bench", ranked[:5], dense)
            index.keyword_scores("bench", terms, [h.point_id for h in hits])
            # Interleaved, question by question, so a change in the machine's load hits every column alike.
            took = [time.perf_counter() - t0]
            for handler in lambdas:
                event = _post_event(template, "/query", body)
                forget()
                t0 = time.perf_counter()
                r = handler(event, None)
                took.append(time.perf_counter() - t0)
                assert r["statusCode"] == 200, r
            for http in (client, bare_client):
                forget()
                t0 = time.perf_counter()
                answer = http.post("/query", json=body, headers={"X-API-Key": API_KEY})
                took.append(time.perf_counter() - t0)
                assert answer.status_code == 200, answer.text
            if i:  # the first round warms every path up
                for key, seconds in zip(times, took, strict=True):
                    times[key].append(seconds)
    p50 = {k: median(v) for k, v in times.items()}
    return {
        "questions": len(questions),
        "embed_plus_search_p50_ms": round(p50["parts"] * 1000, 2),
        "lambda_query_p50_ms": round(p50["lambda"] * 1000, 2),
        "lambda_query_p99_ms": round(percentile(times["lambda"], 99) * 1000, 2),
        "ratio": round(p50["lambda"] / p50["parts"], 3),
        "lambda_bare_p50_ms": round(p50["lambda_bare"] * 1000, 2),
        "ratio_beyond_http": round((p50["lambda"] - p50["lambda_bare"]) / p50["parts"], 3),
        "testclient_query_p50_ms": round(p50["client"] * 1000, 2),
        "testclient_ratio": round(p50["client"] / p50["parts"], 3),
        "testclient_bare_p50_ms": round(p50["client_bare"] * 1000, 2),
    }


def _post_event(template: dict[str, Any], path: str, body: dict[str, Any]) -> dict[str, Any]:
    """An API Gateway HTTP API (v2) event of a JSON POST with the bench's API key."""
    http = {**template["requestContext"]["http"], "method": "POST", "path": path}
    return {
        **template,
        "rawPath": path,
        "requestContext": {**template["requestContext"], "http": http},
        "headers": {**template["headers"], "content-type": "application/json", "x-api-key": API_KEY},
        "body": json.dumps(body),
        "isBase64Encoded": False,
    }


COLD = r"""
import json, sys, time
t0 = time.perf_counter()
from pathlib import Path
event = json.loads(Path(sys.argv[1]).read_text())
def call(handler, method, path, body=None):
    e = dict(event)
    e["rawPath"] = path
    http = {**e["requestContext"]["http"], "method": method, "path": path}
    e["requestContext"] = {**e["requestContext"], "http": http}
    e["body"] = json.dumps(body) if body is not None else None
    e["isBase64Encoded"] = False
    e["headers"] = {**e["headers"], "content-type": "application/json", "x-api-key": sys.argv[2]}
    return handler(e, None)
if sys.argv[3] == "bare":
    from fastapi import FastAPI
    from mangum import Mangum
    app = FastAPI()
    @app.get("/healthz")
    def healthz():
        return {"status": "ok"}
    handler = Mangum(app, lifespan="off")
    imported = time.perf_counter() - t0
    assert call(handler, "GET", "/healthz")["statusCode"] == 200
    health = time.perf_counter() - t0
    print(json.dumps({"import": imported, "healthz": health, "query": None, "torch": "torch" in sys.modules}))
else:
    import app.handlers as h
    imported = time.perf_counter() - t0
    assert call(h.api_handler, "GET", "/healthz")["statusCode"] == 200
    health = time.perf_counter() - t0
    r = call(h.api_handler, "POST", "/query", {"question": "What causes tuberculosis?", "top_k": 5})
    assert r["statusCode"] == 200, r
    query = time.perf_counter() - t0
    print(json.dumps({"import": imported, "healthz": health, "query": query,
                      "torch": any(m in sys.modules for m in ("torch", "transformers", "sentence_transformers"))}))
"""


def cold_start(data_dir: Path, onnx_dir: Path, backend: str, runs: int = 3) -> dict[str, Any]:
    """Median over `runs` fresh processes each: python start -> handler imported -> /healthz answered ->
    first /query answered; the bare app in the same run, alternating."""
    env = {
        **os.environ,
        "EVENTRAG_DATA_DIR": str(data_dir),
        "EVENTRAG_API_KEYS": json.dumps({API_KEY: "bench"}),
        "EVENTRAG_WEBHOOK_SECRETS": json.dumps({"bench": ["whsec_MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="]}),
        "EVENTRAG_ONNX_DIR": str(onnx_dir),
        "EVENTRAG_EMBEDDING_BACKEND": backend,  # an int8 index is queried with the int8 encoder
        "HF_HUB_OFFLINE": "1",
    }
    event = str(REPO / "tests" / "events" / "apigw_http_v2.json")
    rows: dict[str, list[dict[str, Any]]] = {"bare": [], "eventrag": []}
    for _ in range(runs):
        for kind in ("bare", "eventrag"):
            t0 = time.perf_counter()
            out = subprocess.run(
                [sys.executable, "-c", COLD, event, API_KEY, kind],
                cwd=REPO,
                env=env,
                capture_output=True,
                text=True,
                timeout=300,
                check=True,
            )
            row = json.loads(out.stdout.strip().splitlines()[-1])
            row["process"] = time.perf_counter() - t0
            rows[kind].append(row)

    def med(kind: str, key: str) -> float:
        return median([r[key] for r in rows[kind] if r[key] is not None])

    bare = med("bare", "healthz")
    return {
        "runs": runs,
        "bare_import_healthz_s": round(bare, 3),
        "eventrag_import_s": round(med("eventrag", "import"), 3),
        "eventrag_healthz_s": round(med("eventrag", "healthz"), 3),
        "eventrag_first_query_s": round(med("eventrag", "query"), 3),
        "healthz_ratio": round(med("eventrag", "healthz") / bare, 2),
        "first_query_ratio": round(med("eventrag", "query") / bare, 2),
        "torch_imported": any(r["torch"] for r in rows["eventrag"]),
    }
