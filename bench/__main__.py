"""`python -m bench`: every figure of docs/performance.md, measured in one run, printed as ratios.

    python -m bench                       # ingest per backend, re-sync, /query, cold start, search at scale,
                                          # the Edge shard optimized online
    python -m bench --quick               # smaller sizes, for a smoke run
    python -m bench --peers               # also LlamaIndex and LangChain (pip install -e ".[bench]")
    python -m bench --sections peers      # only the peers: LlamaIndex, LangChain, eventrag, raw encode
    python -m bench --json out.json       # also write every figure

Ratios are the point: absolute times depend on the machine and on what else runs on it, but both sides of
a ratio are measured in the same run, one after the other, on the same data.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import SCIFACT, scifact_docs, scifact_queries


def _table(title: str, rows: list[dict[str, Any]], columns: list[str]) -> str:
    lines = [f"\n{title}", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        lines.append("| " + " | ".join("" if r.get(c) is None else str(r.get(c)) for c in columns) + " |")
    return "\n".join(lines)


def _on_store(
    store: Any,
    first: dict[str, Any],
    docs: list[Any],
    questions: list[str],
    sections: set[str],
    report: dict[str, Any],
    emit: Any,
) -> None:
    from bench.ingest import resync

    n = len(docs)
    try:
        if "resync" in sections:
            res = resync(store, docs, first["seconds"])
            report["resync"] = res
            emit(
                _table(
                    f"Re-sync of {n} unchanged documents as new versions ({first['backend']})",
                    res["unchanged"],
                    [
                        "version",
                        "seconds",
                        "receive_seconds",
                        "embedded",
                        "ratio_to_first_ingest",
                        "ratio_incl_receive",
                    ],
                )
            )
            emit(
                _table(
                    "Re-sync of 10 edited documents",
                    [res["edited"]],
                    ["documents", "seconds", "embedded", "changed_chunks", "ratio_to_10_docs_of_first_ingest"],
                )
            )
        if "query" in sections:
            from bench.service import query_overhead

            q = query_overhead(store, questions)
            report["query"] = q
            emit(_table("/query against question embedding + engine search", [q], list(q)))
    finally:
        store.close(keep_files=True)
    if "cold" in sections:
        from bench.service import cold_start

        cold = cold_start(store.data_dir, Path(store.container.query_embedder.folder), first["backend"])
        report["cold_start"] = cold
        emit(_table("Cold start of the API function vs a bare FastAPI + Mangum app", [cold], list(cold)))
    store.cleanup()


SECTIONS = ("ingest", "resync", "query", "cold", "search", "optimize", "peers")


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, set[str]]:
    """The options and the sections to run: `--sections` (default: all but the peers), plus the peers with
    `--peers`."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=1000, help="SciFact abstracts to ingest")
    parser.add_argument("--backends", default="torch,onnx,onnx-int8")
    parser.add_argument("--sizes", default="10000,50000,200000", help="chunks for the engine search bench")
    parser.add_argument("--local-max", type=int, default=50000, help="largest size measured on local mode")
    parser.add_argument(
        "--sections",
        default="ingest,resync,query,cold,search,optimize",
        help=f"comma-separated, of {', '.join(SECTIONS)}",
    )
    parser.add_argument(
        "--terms",
        default="text",
        choices=("text", "flat"),
        help="synthetic sparse vectors of the search and optimize sections: text-shaped (BM25 values, calibrated "
        "on SciFact) or flat (every value 1.0: the worst case for ties)",
    )
    parser.add_argument("--optimize-size", type=int, default=50000, help="chunks for the online optimize bench")
    parser.add_argument(
        "--peers", action="store_true", help='also LlamaIndex and LangChain (the extra: pip install -e ".[bench]")'
    )
    parser.add_argument("--quick", action="store_true", help="200 docs, 2,000 / 10,000 chunks")
    parser.add_argument("--scifact", type=Path, default=SCIFACT)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.quick:
        args.docs, args.sizes, args.local_max, args.optimize_size = 200, "2000,10000", 10000, 10000
    sections = {s for s in args.sections.split(",") if s}
    unknown = sections - set(SECTIONS)
    if unknown:
        parser.error(f"unknown section(s) {', '.join(sorted(unknown))}: choose from {', '.join(SECTIONS)}")
    if args.peers:
        sections.add("peers")
    return args, sections


def main(argv: list[str] | None = None) -> int:
    args, sections = parse_args(argv)
    if "peers" in sections:
        from bench.peers import MissingExtras, require_extras

        try:  # before anything else runs: the extra missing is not news to learn after the other sections
            require_extras()
        except MissingExtras as exc:
            print(f"python -m bench: {exc}", file=sys.stderr)
            return 2
    backends = [b for b in args.backends.split(",") if b]

    report: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
            "python": platform.python_version(),
        },
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    out: list[str] = []

    def emit(text: str) -> None:
        out.append(text)
        print(text, flush=True)

    docs = scifact_docs(args.docs, args.scifact)
    questions = scifact_queries(100, args.scifact)
    if sections & {"ingest", "resync", "query", "cold"}:
        from bench.ingest import ingest

        rows = []
        for n, backend in enumerate(backends):
            row, store = ingest(docs, backend, keep=n == 0)
            rows.append(row)
            print(f"  ingest {backend}: {row['seconds']} s, {row['ratio_to_raw']}x raw", flush=True)
            if store is not None:
                # The first backend's store, right away: the re-sync, /query and cold start sections.
                _on_store(store, row, docs, questions, sections, report, emit)
        report["ingest"] = rows
        emit(
            _table(
                f"Ingest: {args.docs} SciFact abstracts, worker total vs one raw encode of the same texts",
                rows,
                [
                    "backend",
                    "chunks",
                    "seconds",
                    "embedding_runs",
                    "raw_encode_seconds",
                    "ratio_to_raw",
                    "cpu_ratio_to_raw",
                    "raw_runs_encode_seconds",
                    "ratio_to_raw_runs",
                    "padding_over_sorted",
                    "docs_per_second",
                    "chunks_per_second",
                    "outside_model_seconds",
                    "full_batches",
                    "batches",
                ],
            )
        )
    if "peers" in sections:
        from bench.peers import peers

        res = peers(docs)
        report["peers"] = res
        emit(
            _table(
                f"Peers: {args.docs} SciFact abstracts, the same model, {res['torch_threads']} torch threads, "
                f"chunks of {res['chunk_tokens_overlap'][0]} tokens with {res['chunk_tokens_overlap'][1]} of overlap",
                res["ingest"],
                [
                    "pipeline",
                    "backend",
                    "chunks",
                    "seconds",
                    "docs_per_second",
                    "chunks_per_second",
                    "x_llamaindex",
                    "cpu_seconds",
                    "x_llamaindex_cpu",
                ],
            )
        )
        emit(
            _table(
                f"Peers re-sync: {args.docs} unchanged, 10 edited, all {args.docs} again with 20 edited "
                "(seconds, texts embedded)",
                res["resync"],
                ["pipeline"]
                + [f"{r}_{k}" for r in ("unchanged", "edited", "full_sync_edited") for k in ("seconds", "embedded")],
            )
        )
        emit(
            f"\neventrag onnx-int8 docs/s / LlamaIndex docs/s: {res['eventrag_int8_x_llamaindex']} (goal >= 2: "
            f"{'met' if res['goal_met'] else 'not met'}; by CPU seconds: {res['eventrag_int8_x_llamaindex_cpu']}); "
            f"raw encode at the end / at the start: {res['raw_drift']}"
        )
    if "search" in sections:
        from bench.search import measure

        rows = []
        for size in [int(x) for x in args.sizes.split(",") if x]:
            edge = measure("edge", size, 200, terms=args.terms)
            rows.append(edge)
            print(f"  edge {size}: p50 {edge['hybrid_p50_ms']} ms", flush=True)
            if size <= args.local_max:
                local = measure("qdrant-local", size, 20 if size > 10000 else 50, terms=args.terms)
                local["edge_speedup_p50"] = round(local["hybrid_p50_ms"] / edge["hybrid_p50_ms"], 1)
                rows.append(local)
                print(f"  local {size}: p50 {local['hybrid_p50_ms']} ms", flush=True)
        report["search"] = rows
        emit(
            _table(
                "Engines on synthetic vectors (384-d dense + sparse IDF, workspace filter, through the adapters)",
                rows,
                [
                    "engine",
                    "chunks",
                    "hybrid_p50_ms",
                    "hybrid_p99_ms",
                    "dense_p50_ms",
                    "upsert_points_per_s",
                    "delete_file_p50_ms",
                    "reopen_s",
                    "edge_speedup_p50",
                ],
            )
        )
    if "optimize" in sections:
        from bench.online_optimize import measure_online

        online = measure_online(args.optimize_size, terms=args.terms)
        report["optimize"] = online
        stalls = online.pop("longest_stall_ms")
        emit(_table("Edge optimized online while serving (synthetic, clustered vectors)", [online], list(online)))
        emit(_table("Longest wait of the serving process's other threads, per step", [stalls], list(stalls)))
    report["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    emit(
        f"\nload average (1, 5, 15 min) at start {report['machine']['load_average_at_start']}, at end "
        f"{report['machine']['load_average_at_end']} on {report['machine']['cpus']} cpus"
    )
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
