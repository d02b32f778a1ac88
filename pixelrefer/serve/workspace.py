"""One visitor's work: the media, the marks being drawn, the objects, the tracking, the chat, the exports.

Everything a page does, without the page: the Gradio app turns events into these calls and shows what
they return, and tests drive the same calls directly. This file holds the state and its rules (the marking
state machine, media, chat); drawing the canvas and mapping its clicks are in `pixelrefer.serve.canvas`,
writing the downloads in `pixelrefer.serve.exports`. A workspace owns a temporary folder for its exports
and deletes it on `close()`.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import threading
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..chat.session import ChatObject, ChatSession, Reply
from ..media.images import load_image, shrink_image
from ..media.masks import clean_mask, fit_mask
from ..media.video import Clip, load_clip
from ..model.generation import GenerationSettings
from ..runtime.errors import InputError
from ..segment.base import Prompt, PromptError, SegmentResult, scribble_mask
from . import exports
from .budget import budgeted, need_answer, need_clip, need_image, need_tracking
from .canvas import DISPLAY_SIDE, display_copy, draw_canvas, to_frame
from .service import Service

if TYPE_CHECKING:
    from .examples import Example

__all__ = ["DISPLAY_SIDE", "MarkMode", "Workspace"]

MarkMode = str
"""'positive' (click on the object), 'negative' (click on background), 'box' (two corner clicks)."""


@dataclass
class _Draft:
    """Marks in progress on the current frame, and the mask they give."""

    prompt: Prompt
    result: SegmentResult | None = None
    corner: tuple[float, float] | None = None


class Workspace:
    """One visitor's state. Not thread-safe by itself: the app serialises a visitor's events."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.image: np.ndarray | None = None
        self.clip: Clip | None = None
        self.notes: tuple[str, ...] = ()
        self.session: ChatSession | None = None
        self.position = 0
        self.draft = _Draft(Prompt())
        self.target: int | None = None
        self.marks: dict[int, dict[int, Prompt]] = {}
        self.tracked = False
        self.page_settings: dict = {}
        """The generation settings of the last answer, for the page to show again after a reload."""
        self._shown: tuple[np.ndarray, np.ndarray] | None = None
        self._folder: Path | None = None
        self._remove_folder: weakref.finalize | None = None
        self.cancel = threading.Event()
        self.copies: set[Path] = set()
        """Copies of this visitor's files kept elsewhere (the web server's download cache), deleted on close."""
        self.on_file: Callable[[Workspace, Path], None] | None = None
        """Called as `on_file(workspace, path)` for every file written for the visitor (exports, overlays),
        e.g. to note the copy that is served (`pixelrefer.serve.servedfiles.record_copy`)."""
        weakref.finalize(self, _delete_files, self.copies)  # also when the web server drops it unclosed
        service.budget.register(self)

    @property
    def folder(self) -> Path:
        """This visitor's temporary folder (exports, overlay clips), made on first use, so that a visitor
        whose first upload is refused leaves nothing behind. It is deleted by `close()`, or when the
        workspace is garbage-collected without one (Gradio drops sessions beyond its capacity silently)."""
        if self._folder is None:
            self._folder = Path(tempfile.mkdtemp(prefix="pixelrefer-visitor-"))
            self._remove_folder = weakref.finalize(self, shutil.rmtree, self._folder, ignore_errors=True)
        return self._folder

    # ------------------------------------------------------------------ media

    def _reset(self) -> None:
        self.service.warmer.drop(self)
        if self.session is not None:
            self.session.close()
        self.session = None
        self._shown = None
        self.image = self.clip = None
        self.notes = ()
        self.position = 0
        self.draft = _Draft(Prompt())
        self.target = None
        self.marks = {}
        self.tracked = False

    @budgeted(need_image, "This picture")
    def open_image(self, source) -> None:
        """Start over with an image (array, PIL image or path)."""
        image = load_image(source, limits=self.service.settings.media)
        self._reset()
        self.image_source_shape = image.shape[:2]
        image = shrink_image(image, self.service.settings.media.max_side)
        self.image = image
        self.session = ChatSession(self._model(), image=image, limits=self.service.settings.chat)
        self._warm()
        self._prefetch()

    @budgeted(need_clip, "This clip")
    def open_video(self, path: str | Path) -> tuple[str, ...]:
        """Start over with a clip: sampled by the official rule within the limits; returns what was trimmed."""
        clip = load_clip(path, self.service.settings.media)
        self._reset()
        self.clip = clip
        self.notes = clip.notes
        self.session = ChatSession(self._model(), clip=clip, limits=self.service.settings.chat)
        self._warm()
        self._prefetch()
        return clip.notes

    def open_example(self, example: Example) -> str:
        """Load an example with its pre-marked objects; returns its question."""
        if example.kind == "image":
            self.open_image(example.path)
        else:
            self.open_video(example.path)
        for obj in example.objects:
            masks = {f: m for f, m in obj.masks.items() if f in self.session.frames}
            added = self.session.add_object(masks, marked_frames=obj.marked_frames, name=obj.name)
            self.marks[added.id] = {}
        self.tracked = self.clip is not None
        self._warm()
        return example.question

    @property
    def kind(self) -> str:
        return "image" if self.image is not None else "video" if self.clip is not None else "none"

    @property
    def frame(self) -> np.ndarray:
        """The picture being marked: the image, or the clip's current sampled frame."""
        if self.image is not None:
            return self.image
        if self.clip is None:
            raise InputError("Upload an image or a clip first")
        return self.clip.frames[self.position]

    @property
    def frame_index(self) -> int:
        """The current frame's index in the source clip (0 for an image)."""
        return 0 if self.clip is None else self.clip.indices[self.position]

    def seek(self, position: int) -> None:
        """Show another sampled frame; marks in progress are dropped."""
        if self.clip is None:
            return
        self.position = int(np.clip(position, 0, len(self.clip) - 1))
        self.draft = _Draft(self._stored_prompt())
        self._prefetch()

    def fit_mask(self, mask: np.ndarray) -> np.ndarray:
        """A mask drawn on the media as uploaded or as held here, at the held frame's size (the library's one
        rule, `pixelrefer.media.masks.fit_mask`); any other size is an InputError."""
        frame = self.frame.shape[:2]  # refuses first when nothing is open
        source = self.clip.source_shape if self.clip is not None else self.image_source_shape
        return fit_mask(mask, frame, source_shape=source)

    def _model(self):
        if self.service.model is None:
            raise RuntimeError("The model is not loaded")
        return self.service.model

    def _warm(self) -> None:
        """Precompute the next answer while the visitor goes on marking or typing (`pixelrefer.chat.warmup`):
        the media's features, the objects' tokens, the prompt up to the question. Names never reach the model,
        so renaming does not call this."""
        if self.session is not None:
            self.session.gate = self.service.gate
            self.service.warmer.schedule(self, self.session)

    def _prefetch(self) -> None:
        """SAM's embedding of the picture now shown, computed while the visitor looks at it, so the first click
        runs only the decoder (`pixelrefer.serve.prefetch`); the previous picture's job is cancelled."""
        self.service.prefetcher.show(self, self.frame)

    def sync_model(self) -> bool:
        """Follow a model switch: objects stay, the conversation restarts. True when it happened."""
        if self.session is not None and self.session.model is not self.service.model:
            self.session = self.session.move_to(self._model())
            self._warm()
            return True
        return False

    # ------------------------------------------------------------------ marking

    def _require_media(self) -> None:
        if self.kind == "none":
            raise InputError("Upload an image or a clip first")

    def _stored_prompt(self) -> Prompt:
        if self.target is None:
            return Prompt()
        return self.marks.get(self.target, {}).get(self.position, Prompt())

    def select(self, object_id: int | None) -> None:
        """Choose what new marks do: refine `object_id`, or (None) start a new object."""
        if object_id is not None:
            self._session().get(object_id)
        self.target = object_id
        self.draft = _Draft(self._stored_prompt())

    @budgeted()
    def _segment(self, prompt: Prompt) -> SegmentResult:
        segmenter = self.service.segmenter
        if segmenter is None:
            raise RuntimeError("No segmenter is loaded")
        with self.service.gate.event():
            result = self.service.calls.segment(self.frame, prompt)
        self.draft = _Draft(prompt, result)
        return result

    def click(self, x: float, y: float, mode: MarkMode) -> SegmentResult | None:
        """A click on the frame: a point on the object or the background, or a box corner."""
        self._require_media()
        if mode == "box":
            if self.draft.corner is None:
                self.draft.corner = (float(x), float(y))
                return None
            (x0, y0), corner = self.draft.corner, (float(x), float(y))
            self.draft.corner = None
            box = (min(x0, corner[0]), min(y0, corner[1]), max(x0, corner[0]), max(y0, corner[1]))
            if box[2] - box[0] < 2 or box[3] - box[1] < 2:
                raise PromptError("The box is too small: click two opposite corners of the object")
            prompt = Prompt(
                self.draft.prompt.points, self.draft.prompt.positive, box, self.draft.prompt.scribble
            )
            return self._segment(prompt)
        if mode not in ("positive", "negative"):
            raise InputError(f"Unknown marking mode {mode!r}")
        prompt = self.draft.prompt.with_point(x, y, positive=mode == "positive")
        if not prompt.has_object_marks:
            self.draft = _Draft(prompt)
            return None
        return self._segment(prompt)

    def scribble(self, layer: np.ndarray, *, as_mask: bool = False) -> SegmentResult:
        """A brush stroke: used as SAM prompt points, or (`as_mask`) as the mask itself, cleaned the way SAM's
        masks are (`clean_mask`: tiny specks apart from the stroke dropped, tiny holes filled), since one stray
        dot far away would make the object's crop too large to encode."""
        self._require_media()
        if as_mask:
            result = scribble_mask(clean_mask(layer))
            self.draft = _Draft(Prompt(mask=result.mask) if not result.empty else self.draft.prompt, result)
            return result
        prompt = Prompt(self.draft.prompt.points, self.draft.prompt.positive, self.draft.prompt.box, layer)
        return self._segment(prompt)

    def clear_marks(self) -> None:
        self.draft = _Draft(Prompt())

    def keep(self, name: str = "") -> ChatObject:
        """Turn the draft mask into a new object, or into the selected object's mask on this frame."""
        result = self.draft.result
        if result is None:
            raise InputError("Mark the object first (click on it, draw a box or paint over it)")
        mask = result.require()
        session = self._session()
        if self.target is None:
            obj = self._add(mask, self.frame_index, name)
        else:
            obj = session.get(self.target)
            masks = dict(obj.masks) if self.clip is not None else {}
            masks[self.frame_index] = mask
            marked = sorted({*obj.marked_frames, self.frame_index})
            session.replace_object(obj.id, masks, marked_frames=marked)
        self.marks[obj.id][self.position] = self.draft.prompt
        if self.clip is not None:
            self.tracked = False
        self.target = None
        self.draft = _Draft(Prompt())
        self._warm()
        return obj

    def add_mask(self, mask: np.ndarray, frame_index: int) -> ChatObject:
        """A new object from a mask drawn elsewhere (the named API) on source frame `frame_index`: fitted to
        the frame's size, then added as Keep adds one (its marks entry, the warm-up)."""
        obj = self._add(self.fit_mask(mask), frame_index)
        self._warm()
        return obj

    def _add(self, mask: np.ndarray, frame_index: int, name: str = "") -> ChatObject:
        obj = self._session().add_object({frame_index: mask}, marked_frames=[frame_index], name=name)
        self.marks[obj.id] = {}
        return obj

    def delete(self, object_id: int) -> None:
        self._session().remove_object(object_id)
        self.marks.pop(object_id, None)
        self._warm()
        if self.target == object_id:
            self.select(None)

    def rename(self, object_id: int, name: str) -> None:
        self._session().rename_object(object_id, name.strip()[:60])

    # ------------------------------------------------------------------ clips

    @budgeted(need_tracking, "Tracking")
    def track(self, progress: Callable[[int, int], None] | None = None) -> None:
        """Follow every object through all sampled frames from the frames it was marked on."""
        if self.clip is None:
            raise InputError("Tracking needs a clip")
        session = self._session()
        if not session.objects:
            raise InputError("Mark at least one object before tracking")
        prompts = {}
        for obj in session.objects:
            marked = self.marks.get(obj.id) or {}
            prompts[obj.id] = dict(marked) or {
                self.clip.indices.index(f): Prompt(mask=m)
                for f, m in obj.masks.items()
                if f in self.clip.indices
            }
        self.cancel.clear()
        with self.service.gate.event():
            tracks = self.service.calls.track(list(self.clip.frames), prompts, progress, self.cancel)
        for obj in session.objects:
            masks = {self.clip.indices[p]: m for p, m in tracks[obj.id].items() if m.any()}
            if masks:
                session.replace_object(obj.id, masks, marked_frames=obj.marked_frames)
        self.tracked = True
        self._warm()

    # ------------------------------------------------------------------ the canvas (`pixelrefer.serve.canvas`)

    def canvas(self) -> np.ndarray:
        """The current frame as the page shows it (at most `DISPLAY_SIDE` pixels on its longer side), with the
        objects, the draft mask and the marks in progress drawn on it."""
        masks, colors = self._shown_masks()
        shown = self._display_frame()
        return draw_canvas(
            shown, self.frame.shape, masks, colors, self.draft.prompt, self.draft.corner, picked=self.target
        )

    def from_display(self, x: float, y: float) -> tuple[float, float]:
        """A point clicked on the canvas picture, in the frame's pixels."""
        return to_frame(x, y, self.frame.shape, self._display_frame().shape)

    def _display_frame(self) -> np.ndarray:
        """The canvas's copy of the current frame, made once per frame (the pair holds the frame itself, so
        the identity test cannot be fooled by a new frame at the same address)."""
        frame = self.frame
        if self._shown is None or self._shown[0] is not frame:
            self._shown = (frame, display_copy(frame))
        return self._shown[1]

    def _shown_masks(self) -> tuple[dict, dict]:
        """The masks drawn on this frame with their colour indices: every object's (the picked one's shown
        highlighted, `draw_canvas`), the draft's in place of the object it re-marks."""
        masks, colors = {}, {}
        draft = self.draft.result
        drafting = draft is not None and not draft.empty
        for obj in self.objects():
            if self.frame_index in obj.masks and not (drafting and obj.id == self.target):
                masks[obj.id] = obj.masks[self.frame_index]
                colors[obj.id] = obj.color_index
        if drafting:
            label = self.target if self.target is not None else "new"
            masks[label] = draft.mask
            colors[label] = self._session().get(self.target).color_index if self.target is not None else 11
        return masks, colors

    # ------------------------------------------------------------------ chat

    def objects(self) -> list[ChatObject]:
        return list(self.session.objects) if self.session else []

    def _session(self) -> ChatSession:
        if self.session is None:
            raise InputError("Upload an image or a clip first")
        return self.session

    @budgeted(need_answer, "This answer")
    def ask(self, question: str, settings: GenerationSettings) -> Iterator[Reply]:
        return self.service.calls.answer(self._session(), "ask", (question,), settings)

    @budgeted(need_answer, "This answer")
    def describe(self, object_id: int, settings: GenerationSettings) -> Iterator[Reply]:
        """The official caption prompt when the object is the only one marked; with others marked the same
        request goes as a question, since the model must be told about every marked object."""
        session = self._session()
        obj = session.get(object_id)
        if len(session.objects) == 1:
            return self.service.calls.answer(session, "describe", (object_id,), settings)
        return self.service.calls.answer(session, "ask", (f"Describe {obj.tag} in detail.",), settings)

    @budgeted(need_answer, "This answer")
    def regenerate(self, settings: GenerationSettings) -> Iterator[Reply]:
        return self.service.calls.answer(self._session(), "regenerate", (), settings)

    def stop(self) -> None:
        if self.session is not None:
            self.service.calls.stop(self.session)
        self.cancel.set()

    # ------------------------------------------------------------------ files (`pixelrefer.serve.exports`)

    def export_masks_zip(self) -> Path:
        return self._written(exports.masks_zip(self._session(), self.folder))

    def export_masks_json(self) -> Path:
        return self._written(exports.masks_json(self._session(), self.folder))

    def export_transcript(self, fmt: str) -> Path:
        """The conversation as Markdown (`fmt` "md") or JSON ("json")."""
        write = exports.transcript_json if fmt == "json" else exports.transcript_markdown
        return self._written(write(self._session(), self.folder, self.service.preview))

    def overlay_png(self) -> Path:
        """The image with every object drawn on it, as a PNG."""
        if self.image is None:
            raise InputError("Only images have an overlay picture; a clip's overlay is a video")
        return self._written(exports.overlay_png(self.image, self._session(), self.folder))

    @budgeted()
    def overlay_video(self) -> Path:
        """The clip with every object drawn on every sampled frame, as a browser-playable mp4."""
        if self.clip is None:
            raise InputError("Only clips have an overlay video")
        return self._written(exports.overlay_video(self.clip, self._session(), self.folder))

    def _written(self, path: Path) -> Path:
        if self.on_file is not None:
            self.on_file(self, path)
        return path

    def close(self) -> None:
        """Free the session's caches and delete this visitor's files, and the copies of them served."""
        self.cancel.set()
        self.service.warmer.drop(self)
        self.service.prefetcher.drop(self)
        if self.session is not None:
            self.session.close()
        self.session = None
        if self._remove_folder is not None:
            self._remove_folder()
        _delete_files(self.copies)
        self.service.budget.forget(self)

    def drop_caches(self) -> None:
        """Free what can be computed again, when the memory budget needs room (`pixelrefer.serve.budget`):
        the chat's features, object tokens and KV prefix, and the canvas's display copy."""
        self.service.warmer.drop(self)
        self._shown = None
        if self.session is not None:
            self.session.feature_cache.clear()
            self.session.prefix_cache.clear()
            self.session.last_prompt = None


def _delete_files(copies: set[Path]) -> None:
    """Delete the served copies of a visitor's files, and Gradio's per-file folder when nothing else is in it."""
    for copy in list(copies):
        copy.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            copy.parent.rmdir()
    copies.clear()
