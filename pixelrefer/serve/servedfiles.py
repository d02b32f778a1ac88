"""The copies of a visitor's files that the web server serves, deleted with the visitor's session.

Gradio serves a handler's output file from its own cache, a copy named by the file's content hash
(`<cache>/<sha256>/masks.zip`), and serves any file in that cache to anyone who has the URL; nothing ties
the copy to the session, so an export stayed downloadable long after its session ended. The workspace
tells the app about every file it writes for the visitor (`Workspace.on_file`); `record_copy` adds the
copy Gradio is about to make of it to the workspace's `copies`, which `Workspace.close()` deletes.

Uploads are named by their content too, and two visitors who upload the same picture share one file, so
they are not deleted per session: `cache_schedule` has Gradio's own sweep delete every cached file
(uploads and outputs) once it is older than a session can live.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from gradio import processing_utils
from gradio_client.utils import strip_invalid_filename_characters

if TYPE_CHECKING:
    from .workspace import Workspace

__all__ = ["cache_schedule", "record_copy", "served_copy"]


def served_copy(path: Path) -> Path:
    """Where Gradio's cache will keep (or keeps) the copy of `path` it serves."""
    folder = Path(processing_utils.get_upload_folder()) / processing_utils.hash_file(path)
    return Path(processing_utils.abspath(folder / strip_invalid_filename_characters(path.name)))


def record_copy(ws: Workspace, path: Path) -> None:
    """`Workspace.on_file` for the app: the served copy of `path` is deleted when the session closes."""
    ws.copies.add(served_copy(Path(path)))


def cache_schedule(session_ttl_s: float) -> tuple[int, int]:
    """`Blocks.delete_cache`: (how often, after how many seconds) Gradio deletes what it cached. Files older
    than the longest a session lives are swept every tenth of that (at least once a minute, at most every
    ten minutes)."""
    age = max(60, int(session_ttl_s))
    return max(60, min(600, age // 10)), age
