"""The app's public API, driven with `gradio_client` against the app served in offline preview.

Every named endpoint is called the way the README shows: `/describe_region` (stateless), and `/open`,
`/add_object`, `/ask`, which share one visitor workspace per `Client`. The UI's own events must stay out
of the API.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

from pixelrefer.media.video import load_clip
from pixelrefer.serve.workspace import Workspace

from .app_media import SceneClip, SceneImage, iou, write_mask_png, write_scene_clip, write_scene_image
from .conftest import PreviewApp

PUBLIC = {"/describe_region", "/open", "/add_object", "/ask"}
TOKENS = 12


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path | SceneImage | SceneClip]:
    folder = tmp_path_factory.mktemp("api-media")
    scene = write_scene_image(folder)
    clip = write_scene_clip(folder)
    big = write_scene_image(folder, width=2400, height=1800)
    return {
        "scene": scene,
        "disc": write_mask_png(scene.disc, folder / "disc.png"),
        "square": write_mask_png(scene.square, folder / "square.png"),
        "empty": write_mask_png(np.zeros_like(scene.disc), folder / "empty.png"),
        "wrong_size": write_mask_png(np.ones((100, 100), bool), folder / "wrong_size.png"),
        "clip": clip,
        "clip_disc_23": write_mask_png(clip.disc(23), folder / "clip_disc_23.png"),
        "big": big,
        "big_disc": write_mask_png(big.disc, folder / "big_disc.png"),
    }


def test_only_the_public_endpoints_are_in_the_api(client: Client) -> None:
    api = client.view_api(return_format="dict", print_info=False)
    assert set(api["named_endpoints"]) == PUBLIC
    assert not api["unnamed_endpoints"]
    params = {
        name: [p["parameter_name"] for p in api["named_endpoints"][name]["parameters"]] for name in PUBLIC
    }
    assert params == {
        "/describe_region": ["image", "mask", "max_new_tokens", "seed"],
        "/open": ["image", "video"],
        "/add_object": ["mask", "frame"],
        "/ask": ["question", "max_new_tokens", "seed"],
    }


def test_describe_region_answers_and_keeps_no_state(client: Client, media: dict) -> None:
    scene = media["scene"]
    first = client.predict(
        handle_file(scene.path), handle_file(media["disc"]), TOKENS, 7, api_name="/describe_region"
    )
    assert isinstance(first, str) and first.strip()
    # Stateless: the same request (greedy, same seed) gives the same answer, whatever came before.
    client.predict(
        handle_file(scene.path), handle_file(media["square"]), TOKENS, 7, api_name="/describe_region"
    )
    again = client.predict(
        handle_file(scene.path), handle_file(media["disc"]), TOKENS, 7, api_name="/describe_region"
    )
    assert again == first


def test_describe_region_takes_a_full_size_mask_of_a_large_image(client: Client, media: dict) -> None:
    """The app shrinks images over 1920 px; a mask drawn on the original must still fit."""
    big = media["big"]
    answer = client.predict(
        handle_file(big.path), handle_file(media["big_disc"]), TOKENS, api_name="/describe_region"
    )
    assert isinstance(answer, str) and answer.strip()


@pytest.mark.parametrize(
    ("mask", "message"),
    [("empty", "mask is empty"), ("wrong_size", "100x100 but its frame is 480x360")],
)
def test_describe_region_explains_a_bad_mask(client: Client, media: dict, mask: str, message: str) -> None:
    with pytest.raises(AppError, match=message):
        client.predict(
            handle_file(media["scene"].path), handle_file(media[mask]), TOKENS, api_name="/describe_region"
        )
    # The server is fine afterwards.
    answer = client.predict(
        handle_file(media["scene"].path), handle_file(media["disc"]), TOKENS, api_name="/describe_region"
    )
    assert answer.strip()


def test_open_an_image(client: Client, media: dict) -> None:
    summary = json.loads(client.predict(image=handle_file(media["scene"].path), api_name="/open"))
    assert summary == {"kind": "image", "frames": [0], "notes": []}


def test_open_a_clip_reports_the_sampled_frames(client: Client, media: dict) -> None:
    clip: SceneClip = media["clip"]
    summary = json.loads(client.predict(video=handle_file(clip.path), api_name="/open"))
    expected = list(load_clip(clip.path).indices)
    assert summary["kind"] == "video"
    assert summary["frames"] == expected
    # One frame per second of a 4 s clip, in order, inside the clip.
    assert len(expected) == 4 and expected == sorted(expected)
    assert all(0 <= frame < 32 for frame in expected)
    assert summary["notes"] == []


def test_open_a_long_clip_says_what_was_cut(client: Client, tmp_path: Path) -> None:
    clip = write_scene_clip(tmp_path, seconds=20, fps=2, width=96, height=64)
    summary = json.loads(client.predict(video=handle_file(clip.path), api_name="/open"))
    assert len(summary["frames"]) == 16  # the app's frame limit
    assert any("20 frames; the limit is 16" in note for note in summary["notes"])


def test_open_needs_media(client: Client) -> None:
    with pytest.raises(AppError, match="Give an image or a video"):
        client.predict(api_name="/open")


def test_add_object_numbers_objects_in_an_image(client: Client, media: dict) -> None:
    client.predict(image=handle_file(media["scene"].path), api_name="/open")
    assert client.predict(handle_file(media["disc"]), 0, api_name="/add_object") == "<object1>"
    assert client.predict(handle_file(media["square"]), 0, api_name="/add_object") == "<object2>"


def test_add_object_on_a_frame_of_a_clip(preview_app: PreviewApp, client: Client, media: dict) -> None:
    clip: SceneClip = media["clip"]
    summary = json.loads(client.predict(video=handle_file(clip.path), api_name="/open"))
    assert 23 in summary["frames"]
    assert client.predict(handle_file(media["clip_disc_23"]), 23, api_name="/add_object") == "<object1>"
    (obj,) = preview_app.workspace_of(client).objects()
    assert list(obj.masks) == [23] and obj.marked_frames == (23,)
    assert obj.masks[23].sum() == clip.disc(23).sum()
    with pytest.raises(AppError, match="Frame 5 is not one of the clip's sampled frames"):
        client.predict(handle_file(media["clip_disc_23"]), 5, api_name="/add_object")


def test_add_object_and_ask_need_open_first(client: Client, media: dict) -> None:
    with pytest.raises(AppError, match="Call /open first"):
        client.predict(handle_file(media["disc"]), 0, api_name="/add_object")
    with pytest.raises(AppError, match="Call /open first"):
        client.predict("What is <object1>?", TOKENS, api_name="/ask")


def test_ask_is_multi_turn_and_survives_a_bad_question(
    preview_app: PreviewApp, client: Client, media: dict
) -> None:
    client.predict(image=handle_file(media["scene"].path), api_name="/open")
    client.predict(handle_file(media["disc"]), 0, api_name="/add_object")
    client.predict(handle_file(media["square"]), 0, api_name="/add_object")

    first = client.predict("How do <object1> and <object2> relate?", TOKENS, api_name="/ask")
    assert isinstance(first, str) and first.strip()
    with pytest.raises(AppError, match=r"<object3> is not a marked object \(marked: <object1>, <object2>\)"):
        client.predict("What is <object3>?", TOKENS, api_name="/ask")
    second = client.predict("And what colour is <object1>?", TOKENS, api_name="/ask")
    assert isinstance(second, str) and second.strip()

    # Both turns are one conversation on the server; the refused question left no trace.
    session = preview_app.workspace_of(client).session
    assert [e.question for e in session.history] == [
        "How do <object1> and <object2> relate?",
        "And what colour is <object1>?",
    ]
    assert [e.answer for e in session.history] == [first, second]


def test_clients_do_not_share_a_workspace(preview_app: PreviewApp, client: Client, media: dict) -> None:
    client.predict(image=handle_file(media["scene"].path), api_name="/open")
    client.predict(handle_file(media["disc"]), 0, api_name="/add_object")
    other = Client(preview_app.url, verbose=False)
    try:
        with pytest.raises(AppError, match="Call /open first"):
            other.predict("What is <object1>?", TOKENS, api_name="/ask")
    finally:
        other.close()
    assert client.predict("What is <object1>?", TOKENS, api_name="/ask").strip()


def test_a_large_photo_is_marked_on_a_display_copy(preview_app: PreviewApp, media: dict) -> None:
    """The canvas shows a copy at most `DISPLAY_SIDE` px long, cheap to draw and send on every click; a click
    on it (the page reports the shown picture's pixels) lands on the frame's own pixels, the mask is at the
    frame's size, and the point is drawn where it was clicked."""
    from pixelrefer.serve.workspace import DISPLAY_SIDE

    big = media["big"]
    ws = Workspace(preview_app.service)
    try:
        ws.open_image(big.path)  # 2400x1800, held at the media limit's 1920x1440
        frame_height, frame_width = ws.frame.shape[:2]
        shown_height, shown_width = ws.canvas().shape[:2]
        assert max(shown_height, shown_width) == DISPLAY_SIDE < max(frame_height, frame_width)
        assert shown_width / shown_height == pytest.approx(frame_width / frame_height, rel=0.01)
        x, y = (round(c * shown_width / big.size[0]) for c in big.disc_centre)
        outputs = preview_app.page.events.on_click(ws, "Object (click)", SimpleNamespace(index=[x, y]))
        point = ws.draft.prompt.points[0]
        expected = [c * frame_width / big.size[0] for c in big.disc_centre]
        assert point == pytest.approx(expected, abs=frame_width / shown_width)
        truth = cv2.resize(big.disc.astype(np.uint8), (frame_width, frame_height)) > 0
        assert ws.draft.result.mask.shape == truth.shape and iou(ws.draft.result.mask, truth) > 0.8
        canvas = outputs[preview_app.page.ui.canvas]
        assert canvas.shape[:2] == (shown_height, shown_width)
        assert tuple(canvas[y, x]) == pytest.approx((40, 200, 60), abs=40)  # the click point, in green
    finally:
        ws.close()
