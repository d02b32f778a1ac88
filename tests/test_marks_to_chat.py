"""Marks to chat, end to end: a generated clip with two objects marked on different frames is tracked into
masks on every sampled frame (SAM 2.1 tiny and GrabCut), and those masks drive a chat with both variants."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from moviepy.video.io.ffmpeg_writer import FFMPEG_VideoWriter

from pixelrefer import ChatSession, GenerationSettings, PixelRefer
from pixelrefer.media.video import Clip, load_clip
from pixelrefer.segment.base import Prompt
from pixelrefer.segment.grabcut import GrabCutSegmenter

from .conftest import fixtures_root
from .scenes import iou, moving_scene

SOURCE_FRAMES = 16
NATIVE_FPS = 8
QUESTION = "What is the relationship between <object1> and <object2>?"


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> tuple[Clip, list[dict[str, np.ndarray]]]:
    """The moving two-object scene as an H.264 file, loaded at 4 fps (every second source frame)."""
    frames, truths = moving_scene(SOURCE_FRAMES)
    path = tmp_path_factory.mktemp("scene") / "scene.mp4"
    with FFMPEG_VideoWriter(
        str(path), (200, 160), NATIVE_FPS, codec="libx264", ffmpeg_params=["-crf", "12"]
    ) as out:
        for frame in frames:
            out.write_frame(frame)
    clip = load_clip(path, fps=4)
    assert clip.indices == tuple(range(1, SOURCE_FRAMES, 2))
    return clip, [truths[index] for index in clip.indices]


def marks(truths: list[dict[str, np.ndarray]]) -> dict[str, dict[int, Prompt]]:
    """A click in the disc on sampled frame 1 and a box round the polygon on sampled frame 5."""
    rows, cols = np.nonzero(truths[1]["disc"])
    click = Prompt(points=[(float(cols.mean()), float(rows.mean()))])
    rows, cols = np.nonzero(truths[5]["polygon"])
    box = Prompt(box=(cols.min() - 3, rows.min() - 3, cols.max() + 4, rows.max() + 4))
    return {"disc": {1: click}, "polygon": {5: box}}


@pytest.fixture(scope="module", params=["pixelrefer-tiny", "pixelrefer-lite-tiny"])
def model(request) -> PixelRefer:
    return PixelRefer.from_pretrained(str(fixtures_root() / request.param / "checkpoint"), device="cpu")


def chat_about(model: PixelRefer, clip: Clip, tracks: dict[str, dict[int, np.ndarray]]) -> None:
    session = ChatSession(model, clip=clip)
    for name, marked_at in (("disc", 1), ("polygon", 5)):
        masks = {clip.indices[position]: mask for position, mask in tracks[name].items() if mask.any()}
        session.add_object(masks, marked_frames=[clip.indices[marked_at]])
    replies = list(session.ask(QUESTION, GenerationSettings(max_new_tokens=4)))
    exchange = replies[-1].exchange
    assert replies[-1].done and exchange is not None and exchange.answer_ids
    assert len(session.last_prompt.object_keys) == 2


def test_grabcut_tracks_feed_the_chat(scene, model: PixelRefer) -> None:
    clip, truths = scene
    tracks = GrabCutSegmenter().track(list(clip.frames), marks(truths))
    for name in ("disc", "polygon"):
        assert sorted(tracks[name]) == list(range(len(clip)))
        assert min(iou(tracks[name][k], truths[k][name]) for k in range(len(clip))) >= 0.8
    chat_about(model, clip, tracks)


def test_sam2_tracks_feed_the_chat(scene, sam2, model: PixelRefer) -> None:
    clip, truths = scene
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # see tests/test_segment.py: the tiny model is faster on one thread
    try:
        tracks = sam2.track(list(clip.frames), marks(truths))
    finally:
        torch.set_num_threads(previous)
    for name in ("disc", "polygon"):
        assert sorted(tracks[name]) == list(range(len(clip)))
        assert all(mask.shape == (160, 200) and mask.dtype == bool for mask in tracks[name].values())
    chat_about(model, clip, tracks)
