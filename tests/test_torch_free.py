"""The query function runs without torch: a fresh process imports the Lambda API handler, answers
`/healthz` (building nothing) and a real `/query` through Mangum (the ONNX query encoder and the index,
nothing else), and never imports torch, transformers or sentence-transformers.

The index is filled first by the torch model in this process, as the worker would: the ONNX encoder's
questions must find what torch embedded.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from fastapi.testclient import TestClient

from app.container import build_container
from app.main import create_app
from stores.embedding import SentenceTransformerEmbedder
from tests.conftest import KEY_ACME, SECRET_ACME, base_settings
from tests.fakes.webhooks import file_event, sign

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "transformers", "sentence_transformers")

PROBE = r"""
import json, sys, time
from pathlib import Path

t0 = time.perf_counter()
import app.handlers as handlers
imported = time.perf_counter() - t0

event = json.loads(Path(sys.argv[1]).read_text())
def call(method, path, body=None):
    e = dict(event)
    path, _, e["rawQueryString"] = path.partition("?")
    e["rawPath"] = path
    e["requestContext"] = {**e["requestContext"], "http": {**e["requestContext"]["http"], "method": method,
                           "path": path}}
    e["body"] = json.dumps(body) if body is not None else None
    e["isBase64Encoded"] = False
    e["headers"] = {**e["headers"], "content-type": "application/json", "x-api-key": sys.argv[2]}
    return handlers.api_handler(e, None)

def loaded(names):
    return sorted(n for n in names if n in sys.modules)

watch = ("torch", "transformers", "sentence_transformers", "onnxruntime", "tokenizers", "qdrant_edge",
         "qdrant_client", "ingest", "openai", "mcp")
after_import = loaded(watch)
health = call("GET", "/healthz")
after_health = loaded(watch)
built_after_health = sorted(handlers.container()._built)
query = call("POST", "/query", {"question": "Which level is visitor parking on?", "top_k": 3})
# The operator's read routes (issue 14) on the same function: listings with cursors, a document's chunks
# and a passage of it, the workspace's figures and the Prometheus scrape.
reads = {path: call("GET", path) for path in ("/documents?limit=1", "/documents/parking/chunks",
         "/documents/parking/passage?start=0&end=7", "/events?limit=5", "/stats", "/metrics")}
print(json.dumps({
    "import_seconds": imported,
    "after_import": after_import,
    "health": health["statusCode"],
    "after_health": after_health,
    "built_after_health": built_after_health,
    "query": query["statusCode"],
    "answer": json.loads(query["body"]),
    "after_query": loaded(watch),
    "built_after_query": sorted(handlers.container()._built),
    "reads": {p: [r["statusCode"], r["body"]] for p, r in reads.items()},
    "after_reads": loaded(watch),
}))
"""


def test_the_api_function_answers_without_torch(
    tmp_path: Path, embedder: SentenceTransformerEmbedder, onnx_dir: Path
) -> None:
    data = tmp_path / "data"
    settings = base_settings(data)
    c = build_container(settings, embedder=embedder)  # the worker's side: torch
    try:
        raw, headers = sign(
            SECRET_ACME,
            file_event(
                "created",
                "parking",
                content="# Parking\n\nVisitor parking is on level minus two, spaces 40 to 60.",
                version=1,
            ),
        )
        with TestClient(create_app(c, start_worker=False)) as client:
            assert client.post("/webhooks", content=raw, headers=headers).status_code == 202
        assert c.loop is not None and c.loop.drain() == 1
    finally:
        c.close()

    env = {
        **os.environ,
        "EVENTRAG_DATA_DIR": str(data),
        "EVENTRAG_API_KEYS": json.dumps({KEY_ACME: "acme"}),
        "EVENTRAG_WEBHOOK_SECRETS": json.dumps({"acme": [SECRET_ACME]}),
        "EVENTRAG_ONNX_DIR": str(onnx_dir),
        "EVENTRAG_METRICS_API_KEY": KEY_ACME,
        "HF_HUB_OFFLINE": "1",
    }
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(ROOT / "tests" / "events" / "apigw_http_v2.json"), KEY_ACME],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert (r["health"], r["query"]) == (200, 200), r
    # /healthz loads no model, opens no index, builds no port.
    assert r["after_health"] == [] and r["built_after_health"] == [], r
    # /query: the ONNX encoder and the Edge index; never torch, transformers, the write path or the LLM client.
    assert {"onnxruntime", "tokenizers", "qdrant_edge"} <= set(r["after_query"]), r
    assert not set(r["after_query"]) & {*HEAVY, "ingest", "qdrant_client", "openai", "mcp"}, r
    assert "embedder" not in r["built_after_query"] and "query_embedder" in r["built_after_query"]
    # And it found what the torch model indexed.
    citations = r["answer"]["citations"]
    assert citations and citations[0]["file_id"] == "parking" and "level minus two" in citations[0]["text"]
    # The read routes answer on the Edge index and the registry, and still import no heavy module.
    statuses = {path: status for path, (status, _) in r["reads"].items()}
    assert set(statuses.values()) == {200}, r["reads"]
    listing = json.loads(r["reads"]["/documents?limit=1"][1])
    assert [d["file_id"] for d in listing["documents"]] == ["parking"] and listing["total"] == 1, listing
    chunks = json.loads(r["reads"]["/documents/parking/chunks"][1])
    assert any("level minus two" in ch["text"] for ch in chunks["chunks"]), chunks
    first = min(chunks["chunks"], key=lambda ch: ch["start"])
    passage = json.loads(r["reads"]["/documents/parking/passage?start=0&end=7"][1])
    assert first["start"] == 0 and passage["text"] == first["text"][:7], (passage, first)
    assert "eventrag_" in r["reads"]["/metrics"][1]
    assert not set(r["after_reads"]) & {*HEAVY, "ingest", "qdrant_client", "openai"}, r["after_reads"]
