"""`python -m bench --peers` needs the optional `bench` extra (LlamaIndex, LangChain), which CI does not
install: without it the bench says how to install it before running anything, and every bench module still
imports. The libraries' absence is simulated by `None` in `sys.modules` (what makes `import` raise
ImportError), so these tests mean the same with or without the extra installed. The peers' figures come from
the bench itself (docs/performance.md), never from a test.
"""

from __future__ import annotations

import importlib
import sys
import types
from pathlib import Path

import pytest

from bench.__main__ import main, parse_args
from bench.peers import INSTALL, REQUIRED, MissingExtras, missing_extras, require_extras, summarize


@pytest.fixture
def without_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    for module in REQUIRED:
        monkeypatch.setitem(sys.modules, module, None)


@pytest.fixture
def with_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    for module in REQUIRED:
        monkeypatch.setitem(sys.modules, module, types.ModuleType(module))


@pytest.mark.parametrize("argv", [["--peers"], ["--sections", "peers"], ["--sections", "search", "--peers"]])
def test_peers_without_the_extra_name_the_install_command_before_anything_runs(
    without_extra: None, argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The dataset does not exist: had any section (or the document loader) run first, this would raise.
    code = main([*argv, "--docs", "5", "--scifact", str(tmp_path / "no-scifact-here")])
    assert code == 2
    captured = capsys.readouterr()
    assert INSTALL in captured.err and 'pip install -e ".[bench]"' in captured.err
    for dist in REQUIRED.values():
        assert dist in captured.err
    assert captured.out == ""


def test_one_missing_library_is_named_alone(with_extra: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "langchain_huggingface", None)
    assert missing_extras() == ["langchain-huggingface"]
    with pytest.raises(MissingExtras, match=r"langchain-huggingface is not installed: pip install -e \"\.\[bench\]\""):
        require_extras()


def test_the_check_passes_with_the_extra(with_extra: None) -> None:
    assert missing_extras() == []
    require_extras()


def test_every_bench_module_imports_without_the_extra(without_extra: None, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [m for m in sys.modules if m == "bench" or m.startswith("bench.")]:
        monkeypatch.delitem(sys.modules, name)
    for path in sorted((Path(__file__).resolve().parent.parent / "bench").glob("*.py")):
        module = "bench" if path.stem == "__init__" else f"bench.{path.stem}"
        importlib.import_module(module)
    for module in REQUIRED:
        assert sys.modules[module] is None, f"importing the bench imported {module}"


def test_the_peers_run_only_when_asked() -> None:
    assert "peers" not in parse_args([])[1]
    assert parse_args(["--peers"])[1] == {"ingest", "resync", "query", "cold", "search", "optimize", "peers"}
    assert parse_args(["--sections", "peers"])[1] == {"peers"}
    assert parse_args(["--sections", "search", "--peers"])[1] == {"search", "peers"}


def test_an_unknown_section_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parse_args(["--sections", "ingest,peer"])
    assert exc.value.code == 2
    assert "unknown section(s) peer" in capsys.readouterr().err


@pytest.mark.parametrize(("int8_seconds", "ratio", "met"), [(40.0, 2.5, True), (50.0, 2.0, True), (60.0, 1.67, False)])
def test_the_summary_divides_docs_per_second_by_llamaindexs(int8_seconds: float, ratio: float, met: bool) -> None:
    ingest = [
        {"pipeline": "LlamaIndex IngestionPipeline", "backend": "torch", "chunks": 150, "seconds": 100.0},
        {"pipeline": "eventrag worker", "backend": "torch", "chunks": 160, "seconds": 80.0},
        {"pipeline": "eventrag worker", "backend": "onnx-int8", "chunks": 160, "seconds": int8_seconds},
    ]
    for row, cpu in zip(ingest, (180.0, 150.0, 60.0), strict=True):
        row["cpu_seconds"] = cpu
    rounds = {
        name: {"seconds": 0.5 + i, "cpu_seconds": 0.25, "embedded": i}
        for i, name in enumerate(("unchanged", "edited", "full_sync_edited"))
    }
    out = summarize(ingest, [{"pipeline": "p", **rounds}], documents=100)
    assert [r["x_llamaindex"] for r in out["ingest"]] == [1.0, 1.25, ratio]
    assert [r["x_llamaindex_cpu"] for r in out["ingest"]] == [1.0, 1.2, 3.0]
    assert out["ingest"][2]["docs_per_second"] == round(100 / int8_seconds, 2)
    assert out["eventrag_int8_x_llamaindex"] == ratio
    assert out["eventrag_int8_x_llamaindex_cpu"] == 3.0
    assert out["goal_met"] is met
    assert out["resync"] == [
        {
            "pipeline": "p",
            "unchanged_seconds": 0.5,
            "unchanged_cpu_seconds": 0.25,
            "unchanged_embedded": 0,
            "edited_seconds": 1.5,
            "edited_cpu_seconds": 0.25,
            "edited_embedded": 1,
            "full_sync_edited_seconds": 2.5,
            "full_sync_edited_cpu_seconds": 0.25,
            "full_sync_edited_embedded": 2,
        }
    ]
