"""Tenants stay apart everywhere: source folders, the embedding cache, webhook ids."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import KEY_BETA, SECRET_BETA, Harness
from tests.fakes.embedder import HashEmbedder
from tests.fakes.webhooks import file_event

SECRET_TEXT = "The acquisition of Initech closes on 14 March for 38 million."


def test_one_plain_source_folder_for_several_workspaces_is_refused_at_start(
    make_harness: Callable[..., Harness], tmp_path: Path
) -> None:
    """With one folder for every workspace, workspace B's secret could index A's files by path."""
    (tmp_path / "shared").mkdir()
    with pytest.raises(ValueError, match=r"2 workspaces are configured \(acme, beta\).*\{workspace\}"):
        make_harness(model=HashEmbedder(), source_root=str(tmp_path / "shared"))


def test_each_workspace_reads_only_its_own_folder(make_harness: Callable[..., Harness], tmp_path: Path) -> None:
    (tmp_path / "acme").mkdir()
    (tmp_path / "beta").mkdir()
    (tmp_path / "acme" / "deal.md").write_text(f"# Deal\n\n{SECRET_TEXT}")
    h = make_harness(model=HashEmbedder(), source_root=str(tmp_path / "{workspace}"))
    assert h.post_event(file_event("created", "deal", path="deal.md", version=1)).status_code == 202
    # Beta asks for the same path: it reads beta's folder, where there is no such file.
    stolen = h.post_event(
        file_event("created", "deal", path="deal.md", version=1, workspace="beta"), secret=SECRET_BETA
    )
    assert stolen.status_code == 202
    up = h.post_event(
        file_event("created", "up", path="../acme/deal.md", version=1, workspace="beta"), secret=SECRET_BETA
    )
    assert up.status_code == 422 and "outside the source root" in up.json()["detail"]
    h.drain()
    assert h.get("/documents/deal").json()["status"] == "indexed"
    beta_doc = h.get("/documents/deal", key=KEY_BETA).json()
    assert beta_doc["status"] == "failed" and "does not exist" in beta_doc["last_error"]
    answer = h.query("When does the acquisition close?", key=KEY_BETA, extractive=True).json()
    assert all("Initech" not in c["text"] for c in answer["citations"])
    assert h.query("When does the acquisition close?", extractive=True).json()["citations"]


def test_a_folder_map_names_each_workspace_folder(make_harness: Callable[..., Harness], tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "deal.md").write_text(f"# Deal\n\n{SECRET_TEXT}")
    h = make_harness(model=HashEmbedder(), source_root=f'{{"acme": "{tmp_path / "a"}"}}')
    assert h.post_event(file_event("created", "deal", path="deal.md", version=1)).status_code == 202
    # A workspace the map does not name has no folder at all.
    r = h.post_event(file_event("created", "deal", path="deal.md", version=1, workspace="beta"), secret=SECRET_BETA)
    assert r.status_code == 422 and "workspace 'beta'" in r.json()["detail"]
    h.drain()
    assert h.get("/documents/deal").json()["status"] == "indexed"


def test_the_embedding_cache_never_tells_one_tenant_what_another_indexed(
    make_harness: Callable[..., Harness],
) -> None:
    """`reused` counts chunks whose vectors came from the cache: across tenants it would reveal that the
    other has indexed an exact passage."""
    h = make_harness(model=HashEmbedder())
    h.post_event(file_event("created", "deal", content=f"# Deal\n\n{SECRET_TEXT}", version=1))
    h.drain()
    assert h.get("/documents/deal").json()["embedded"] >= 1
    # Beta guesses the exact passage (and the path, which is embedded with every chunk as its title).
    h.post_event(
        file_event("created", "deal", content=f"# Deal\n\n{SECRET_TEXT}", version=1, workspace="beta"),
        secret=SECRET_BETA,
    )
    h.drain()
    guess = h.get("/documents/deal", key=KEY_BETA).json()
    assert (guess["reused"], guess["embedded"]) == (0, guess["chunk_count"])
    # Within one tenant the cache still works: the passage again (a new version of the file) is reused.
    h.post_event(file_event("updated", "deal", content=f"# Deal\n\n{SECRET_TEXT}", version=2))
    h.drain()
    again = h.get("/documents/deal").json()
    assert again["version"] == 2 and again["reused"] == again["chunk_count"] >= 1


def test_another_workspace_cannot_squat_a_webhook_id(make_harness: Callable[..., Harness]) -> None:
    h = make_harness(model=HashEmbedder())
    squat = h.post_event(
        file_event("created", "x", content="beta's text", version=1, workspace="beta"),
        secret=SECRET_BETA,
        event_id="msg_shared",
    )
    assert squat.status_code == 202
    leave = file_event("created", "leave", content="Leave is 25 days.", version=1)
    genuine = h.post_event(leave, event_id="msg_shared")
    assert genuine.status_code == 202 and genuine.json()["duplicate"] is False
    h.drain()
    mine = h.get("/events/msg_shared").json()
    theirs = h.get("/events/msg_shared", key=KEY_BETA).json()
    assert (mine["workspace"], mine["file_id"], mine["status"]) == ("acme", "leave", "done")
    assert (theirs["workspace"], theirs["file_id"]) == ("beta", "x")
    assert h.get("/documents/leave").json()["status"] == "indexed"


def test_a_rejected_delivery_does_not_swallow_a_later_valid_one(make_harness: Callable[..., Harness]) -> None:
    h = make_harness(model=HashEmbedder())
    bad = file_event("created", "leave", content="Leave is 25 days.", version=1)
    bad["data"]["path"] = ""  # invalid: refused with 422 and recorded as rejected
    r = h.post_event(bad, event_id="msg_retry")
    assert r.status_code == 422
    assert h.get("/events/msg_retry").json()["status"] == "rejected"
    # The sender fixes the body and delivers again with the same id.
    good = h.post_event(file_event("created", "leave", content="Leave is 25 days.", version=1), event_id="msg_retry")
    assert good.status_code == 202 and good.json()["duplicate"] is False, good.text
    h.drain()
    assert h.get("/events/msg_retry").json()["status"] == "done"
    assert h.get("/documents/leave").json()["status"] == "indexed"
    # A valid event, once stored, is not replaced by a later invalid delivery with its id.
    again = h.post_event(bad, event_id="msg_retry")
    assert again.status_code == 422
    assert h.get("/events/msg_retry").json()["status"] == "done"
