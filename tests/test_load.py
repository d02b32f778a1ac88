"""Eight visitors at once against the app in offline preview (the small version of `bench/load.py`).

Every visitor has their own picture and objects; all of them must be answered, each exactly as when
asking alone (greedy decoding: any difference is cross-talk); every workspace is closed and its files
deleted once its client leaves; visitors beyond the queue bound are told the queue is full, none hangs.
"""

from __future__ import annotations

import importlib.util
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import pytest

from pixelrefer.serve import workspace as workspace_module

from .conftest import REPO

if TYPE_CHECKING:
    from .conftest import PreviewApp  # the fixture's type; only for annotations

SESSIONS = 8
TOKENS = 12


def bench() -> ModuleType:
    """`bench/load.py` as a module (bench/ is scripts, not a package)."""
    if "bench_load" not in sys.modules:
        spec = importlib.util.spec_from_file_location("bench_load", REPO / "bench" / "load.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["bench_load"] = module  # dataclasses look their module up while the file runs
        spec.loader.exec_module(module)
    return sys.modules["bench_load"]


@pytest.fixture()
def workspaces(monkeypatch: pytest.MonkeyPatch) -> list[workspace_module.Workspace]:
    """Every workspace the app creates during the test (closed sessions are freed within about a second:
    Gradio's end-to-end test switch shortens the hour it keeps a closed tab's state)."""
    monkeypatch.setenv("GRADIO_IS_E2E_TEST", "1")
    created: list[workspace_module.Workspace] = []
    init = workspace_module.Workspace.__init__

    def recording(self, *args, **kwargs) -> None:
        init(self, *args, **kwargs)
        created.append(self)

    monkeypatch.setattr(workspace_module.Workspace, "__init__", recording)
    return created


@pytest.fixture()
def one_address(preview_app: PreviewApp, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every simulated visitor here connects from 127.0.0.1, which the route guard counts as one client
    (`pixelrefer.serve.clients`); its per-client caps are lifted for the test, the server-wide bounds stay.
    (tests/test_server_limits.py gives each client its own address instead.)"""
    from dataclasses import replace

    from pixelrefer.serve.webguard import RouteGuard

    node = preview_app.demo.server_app.middleware_stack
    while node is not None and not isinstance(node, RouteGuard):
        node = getattr(node, "app", None)
    assert node is not None, "the app is served without its route guard"
    many = replace(
        node.limits, requests_per_client=1000, sessions_per_client=1000, waiting_per_visitor=1000,
        waiting_per_client=1000, queued_per_client=1000,
    )  # fmt: skip
    monkeypatch.setattr(node, "limits", many)
    monkeypatch.setattr(node.ledger, "limits", many)


def visitor_folders() -> set[Path]:
    return set(Path(tempfile.gettempdir()).glob("pixelrefer-visitor-*"))


def all_closed(created: list, before: set[Path], timeout_s: float = 30.0) -> bool:
    """Every workspace made since `before` is closed and no visitor folder was left behind."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if all(ws.session is None for ws in created) and not visitor_folders() - before:
            return True
        time.sleep(0.1)
    return False


def test_eight_visitors_at_once_get_their_own_answers_and_are_freed(
    preview_app: PreviewApp, tmp_path: Path, workspaces: list, one_address: None
) -> None:
    load = bench()
    before = visitor_folders()
    visitors = load.make_visitors(tmp_path, SESSIONS)
    references = load.alone(preview_app.url, visitors, TOKENS)
    assert len(set(references.values())) > 1, "the visitors' answers must differ for cross-talk to show"
    assert all_closed(workspaces, before)

    visits = load.together(preview_app.url, visitors, TOKENS)
    answered, crossed, errors = load.check_round(visits, references)
    assert errors == []
    assert (answered, crossed) == (SESSIONS, 0)
    assert all_closed(workspaces, before)
    assert len(workspaces) == 2 * SESSIONS


def test_visitors_beyond_the_queue_bound_are_told_it_is_full(
    preview_app: PreviewApp,
    tmp_path: Path,
    workspaces: list,
    monkeypatch: pytest.MonkeyPatch,
    one_address: None,
) -> None:
    """The app's queue holds `--queue-size` waiting events; here 3, so eight long answers overflow it."""
    load = bench()
    before = visitor_folders()
    monkeypatch.setattr(preview_app.demo._queue, "max_size", 3)
    result = load.flood(preview_app.url, load.make_visitors(tmp_path, SESSIONS), tokens=300)
    assert result.failed == [] and result.hung == 0
    assert result.busy >= 1 and result.answered >= 1
    assert result.answered + result.busy == SESSIONS
    assert result.busy_message == "Queue is full! Please try again."
    assert all_closed(workspaces, before)
