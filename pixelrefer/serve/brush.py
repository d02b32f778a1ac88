"""The brush panel: an image editor whose uploads are held to the media limits before Gradio decodes them,
and its strokes as one mask."""

from __future__ import annotations

import gradio as gr
import numpy as np

from ..media.images import ImageError, check_image_file
from ..media.limits import MediaLimits
from ..media.masks import to_bool_mask

__all__ = ["brush_layer", "painter"]


def painter(limits: MediaLimits, **kwargs) -> gr.ImageEditor:
    """The brush panel. An ImageEditor decodes every image the browser sends (each layer, the background,
    the composite) before any handler runs, so each is held to the upload limits from its header first:
    a small PNG declaring 13000x13000 pixels is refused unread. The check is bound on the instance, since
    a subclass of a Gradio component makes Gradio write a `.pyi` stub beside the module that defines it."""
    editor = gr.ImageEditor(**kwargs)
    decode = editor.convert_and_format_image

    def checked(file, flatten_on_white: bool = False):
        if file is not None:
            try:
                check_image_file(file.path if hasattr(file, "path") else bytes(file), limits)
            except ImageError as exc:
                raise gr.Error(str(exc), print_exception=False) from None
        return decode(file, flatten_on_white)

    editor.convert_and_format_image = checked
    return editor


def brush_layer(editor: dict | None) -> np.ndarray | None:
    """The painted strokes of a `painter` value as one bool mask (its layers were checked on arrival)."""
    if not editor or not editor.get("layers"):
        return None
    layers = [np.asarray(layer) for layer in editor["layers"] if layer is not None]
    if not layers:
        return None
    alpha = np.zeros(layers[0].shape[:2], bool)
    for layer in layers:
        alpha |= to_bool_mask(layer[..., 3] if layer.ndim == 3 and layer.shape[2] == 4 else layer)
    return alpha
