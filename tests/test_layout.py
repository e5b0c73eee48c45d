"""The shape of the code base: imports run one way along the data flow, and the query side never loads
the write path.

    app/         imports anything
    ingest/      imports ingest/ and stores/          (the write path)
    retrieval/   imports retrieval/ and stores/       (the read path)
    stores/      imports stores/ only                 (the ground)

Every import counts, including those inside functions and under `TYPE_CHECKING`: a lazy import is still a
dependency.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("app", "ingest", "retrieval", "stores")
ALLOWED = {
    "app": set(PACKAGES),
    "ingest": {"ingest", "stores"},
    "retrieval": {"retrieval", "stores"},
    "stores": {"stores"},
}


def imported_packages(path: Path) -> list[tuple[int, str]]:
    """(line, top-level package) of every first-party import in a module."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name.split(".")[0]) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module.split(".")[0]))
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            found.append((node.lineno, path.relative_to(ROOT).parts[0]))  # relative: its own package
    return [(line, top) for line, top in found if top in PACKAGES]


def layout_violations() -> list[str]:
    problems = []
    for package, allowed in ALLOWED.items():
        for path in sorted((ROOT / package).rglob("*.py")):
            for line, top in imported_packages(path):
                if top not in allowed:
                    problems.append(f"{path.relative_to(ROOT)}:{line} imports {top}")
    return problems


def test_imports_follow_the_data_flow() -> None:
    assert layout_violations() == []


def test_the_check_sees_a_backwards_import(tmp_path: Path) -> None:
    """The checker itself: a lazy import from the ground into the read path is caught."""
    bad = ROOT / "stores" / "_layout_probe.py"
    bad.write_text("def f():\n    from retrieval.search import Searcher\n    return Searcher\n")
    try:
        assert layout_violations() == ["stores/_layout_probe.py:2 imports retrieval"]
    finally:
        bad.unlink()


QUERY_PROBE = r"""
import json, sys
from pathlib import Path

import app.handlers as handlers

after_import = sorted(m for m in ("ingest", "retrieval", "stores") if m in sys.modules)

event = json.loads(Path(sys.argv[1]).read_text())
def call(method, path, body=None):
    e = dict(event)
    e["rawPath"] = path
    e["requestContext"] = {**e["requestContext"], "http": {**e["requestContext"]["http"], "method": method,
                           "path": path}}
    e["body"] = json.dumps(body) if body is not None else None
    e["isBase64Encoded"] = False
    e["headers"] = {**e["headers"], "content-type": "application/json", "x-api-key": sys.argv[2]}
    return handlers.api_handler(e, None)

health = call("GET", "/healthz")
query = call("POST", "/query", {"question": "what is the leave policy?"})
print(json.dumps({
    "after_import": after_import,
    "health": health["statusCode"],
    "query": query["statusCode"],
    "loaded": sorted({m.split(".")[0] for m in sys.modules} & {"app", "ingest", "retrieval", "stores"}),
}))
"""


def test_the_query_function_never_imports_the_write_path(tmp_path: Path, onnx_dir: Path) -> None:
    """The Lambda API handler, imported and answering /healthz and /query in a fresh process, loads
    app, retrieval and stores only: `ingest` is imported by the routes that need it, on first use."""
    key = "key-layout-0123456789abcdef"
    env = {
        **os.environ,
        "EVENTRAG_DATA_DIR": str(tmp_path / "data"),
        "EVENTRAG_API_KEYS": json.dumps({key: "acme"}),
        "EVENTRAG_WEBHOOK_SECRETS": json.dumps({"acme": ["whsec_" + "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="]}),
        "EVENTRAG_ONNX_DIR": str(onnx_dir),
        "HF_HUB_OFFLINE": "1",
    }
    out = subprocess.run(
        [sys.executable, "-c", QUERY_PROBE, str(ROOT / "tests" / "events" / "apigw_http_v2.json"), key],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert "ingest" not in result["after_import"]
    assert (result["health"], result["query"]) == (200, 200)
    assert "ingest" not in result["loaded"]
    assert {"app", "retrieval", "stores"} <= set(result["loaded"])


def test_the_page_metrics_and_relay_import_neither_torch_nor_the_write_path() -> None:
    """`/`, `/metrics`, `/stats` and the outbound relay (the AWS outbound function) stay light: importing
    them loads neither torch nor `ingest`."""
    probe = (
        "import sys, json\n"
        "import app.routes.web, app.routes.metrics, app.routes.stats, app.routes.deliveries\n"
        "import app.routes.subscriptions, app.outbound.relay\n"
        "print(json.dumps(sorted(m for m in ('torch', 'ingest', 'sentence_transformers') if m in sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
