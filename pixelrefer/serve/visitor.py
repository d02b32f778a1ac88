"""A visitor's workspace as the page and the named API get it: made on first use, following the served model.

Gradio keeps one value per browser tab or API client in a `gr.State`; it starts as None. Every event that
needs the workspace passes that value through `workspace_for`, and Gradio calls `close_workspace` when the
session ends, so the visitor's files and caches go with it.
"""

from __future__ import annotations

import gradio as gr

from .servedfiles import record_copy
from .service import Service
from .workspace import Workspace

__all__ = ["close_workspace", "workspace_for"]


def workspace_for(service: Service, ws: Workspace | None) -> Workspace:
    """This visitor's workspace, created on first use and kept in sync with the served model."""
    if ws is None:
        ws = Workspace(service)
        ws.on_file = record_copy  # its downloads are deleted with the session
    if ws.sync_model():
        gr.Info(
            f"The model was switched to {service.display_name}: your objects are kept, the chat restarted."
        )
    return ws


def close_workspace(ws: Workspace | None) -> None:
    """Gradio's delete callback for the state: free the session's caches and delete the visitor's files."""
    if ws is not None:
        ws.close()
