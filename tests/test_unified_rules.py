"""One rule per idea: a picture is shrunk the same way as an image or a clip frame, and a mask of the wrong size is
refused with the same words by the library, the CLI, the batch runner, the app's workspace and its API."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from pixelrefer import ChatSession, PixelRefer
from pixelrefer.batch import BatchItem, ItemError, load_item
from pixelrefer.cli import main as cli_main
from pixelrefer.media.images import shrink_image
from pixelrefer.media.limits import MediaLimits, fit_within
from pixelrefer.media.masks import fit_mask, save_mask_png
from pixelrefer.media.video import load_clip, load_frame_folder
from pixelrefer.runtime.errors import InputError

from .app_media import write_scene_image
from .conftest import PreviewApp, fixtures_root

REFUSAL = "is 240x180 but its frame is 480x360 (width x height)"
"""What every door says about a half-size mask (same aspect ratio, another picture) on a 480x360 picture."""


# ---------------------------------------------------------------------- shrinking


def test_a_large_image_and_a_clip_frame_of_the_same_size_shrink_alike(tmp_path: Path) -> None:
    """1921x2999 was 1230x1920 as an image and 1228x1918 as a frame; both are now 1230x1920."""
    limits = MediaLimits()
    picture = np.random.default_rng(0).integers(0, 256, (2999, 1921, 3), dtype=np.uint8)
    as_image = shrink_image(picture, limits.max_side)
    folder = tmp_path / "frames"
    folder.mkdir()
    Image.fromarray(picture).save(folder / "000.png", compress_level=0)
    as_frame = load_frame_folder(folder, limits).frames[0]
    assert as_image.shape == as_frame.shape == (1920, 1230, 3)
    assert limits.fit_size(1921, 2999) == (1230, 1920)  # the decode size of a video file's frames


def test_the_shrinking_rule_over_a_sweep_of_sizes() -> None:
    """Images (`shrink_image`) and frames (`MediaLimits.fit_size`) agree on every size; the rule keeps the
    longer side at the limit, both sides even, at least 2 px, and the aspect ratio to within one pixel."""
    limits = MediaLimits(max_side=96)
    sides = [1, 2, 3, 5, 47, 95, 96, 97, 98, 131, 190, 191, 192, 193, 257, 500, 1001]
    for width, height in itertools.product(sides, sides):
        fitted = limits.fit_size(width, height)
        shrunk = shrink_image(np.zeros((height, width, 3), np.uint8), limits.max_side)
        assert shrunk.shape[:2] == (fitted[1], fitted[0]), (width, height)
        if max(width, height) <= limits.max_side:
            assert fitted == (width, height)
            continue
        assert max(fitted) == limits.max_side and all(side % 2 == 0 or side == 1 for side in fitted)
        short, long = sorted((width, height))
        assert abs(min(fitted) - max(min(2, short), short * limits.max_side / long)) <= 1.0, (width, height)
    assert max(fit_within(5000, 3000, 1001)) <= 1001  # an odd limit is never exceeded


# ---------------------------------------------------------------------- the mask rule, door by door


@pytest.fixture(scope="module")
def pictures(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("unified")
    scene = write_scene_image(folder)  # 480x360
    half = np.zeros((180, 240), bool)
    half[60:120, 60:120] = True  # the same aspect ratio, drawn on another (smaller) picture
    save_mask_png(half, folder / "half.png")
    save_mask_png(scene.disc, folder / "disc.png")
    return {"image": scene.path, "half": folder / "half.png", "disc": folder / "disc.png"}


def test_the_rule_itself() -> None:
    mask = np.zeros((360, 480), bool)
    mask[10:20, 10:20] = True
    assert fit_mask(mask, (360, 480)) is not mask and fit_mask(mask, (360, 480)).shape == (360, 480)
    with pytest.raises(InputError, match=r"The mask is 480x360 but its frame is 240x180 \(width x height\)"):
        fit_mask(mask, (180, 240))
    # A mask drawn on the picture before it was shrunk follows it, by nearest neighbour.
    shrunk = fit_mask(mask, (180, 240), source_shape=(360, 480))
    assert shrunk.shape == (180, 240) and shrunk[5:10, 5:10].all() and shrunk.sum() == 25
    with pytest.raises(InputError, match=r"is 240x180 but its frame is 120x90 \(480x360 as uploaded\)"):
        fit_mask(np.ones((180, 240), bool), (90, 120), source_shape=(360, 480))
    with pytest.raises(InputError, match=r"The mask: A mask must be HxW"):
        fit_mask(np.ones((2, 3, 4, 5)), (2, 3))


def test_library_refuses(pictures: dict[str, Path]) -> None:
    model = PixelRefer.from_pretrained(
        str(fixtures_root() / "pixelrefer-tiny" / "checkpoint"), device="cpu", dtype="float32"
    )
    session = ChatSession(model, image=str(pictures["image"]))
    half = np.asarray(Image.open(pictures["half"])) > 0
    with pytest.raises(InputError, match=REFUSAL.replace("(", r"\(").replace(")", r"\)")):
        session.add_object(half)
    assert not session.objects


def test_library_takes_a_clip_mask_at_the_files_size_and_refuses_another(coded_clip) -> None:
    model = PixelRefer.from_pretrained(
        str(fixtures_root() / "pixelrefer-tiny" / "checkpoint"), device="cpu", dtype="float32"
    )
    clip = load_clip(coded_clip(6, "3", 64, 48), MediaLimits(max_side=32))
    assert clip.size == (32, 24) and clip.source_shape == (48, 64)
    session = ChatSession(model, clip=clip)
    frame = clip.indices[0]
    full = np.zeros((48, 64), bool)
    full[10:30, 10:40] = True
    added = session.add_object({frame: full})
    assert added.masks[frame].shape == (24, 32)
    with pytest.raises(InputError, match=r"is 48x36 but its frame is 32x24 \(64x48 as uploaded\)"):
        session.add_object({frame: np.ones((36, 48), bool)})


def test_cli_refuses(pictures: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    """`python -m pixelrefer chat` (its `main`, in-process: a fresh interpreter costs seconds) refuses before
    any model is loaded: the model path is never read."""
    argv = [
        "chat",
        "--model",
        "never-loaded",
        "--image",
        str(pictures["image"]),
        "--mask",
        str(pictures["half"]),
    ]
    assert cli_main([*argv, "What is <object1>?"]) != 0
    assert capsys.readouterr().err.strip() == f"error: mask {pictures['half']} {REFUSAL}"


def test_batch_refuses(pictures: dict[str, Path]) -> None:
    """The batch runner once stretched any mask of the same aspect ratio onto the picture."""
    raw = {"image": pictures["image"].name, "objects": [{"mask": pictures["half"].name}], "question": "What?"}
    with pytest.raises(
        ItemError, match=r"^the mask of object 1 " + REFUSAL.replace("(", r"\(").replace(")", r"\)")
    ):
        load_item(BatchItem("half", 1, raw), pictures["image"].parent)
    good = dict(raw, objects=[{"mask": pictures["disc"].name}])
    assert load_item(BatchItem("disc", 1, good), pictures["image"].parent).objects[0][0][0].shape == (
        360,
        480,
    )


def test_batch_takes_a_clip_mask_at_the_files_size_only(tmp_path: Path) -> None:
    frames = tmp_path / "frames"
    frames.mkdir()
    for k in range(3):
        Image.fromarray(np.full((48, 64, 3), 40 * k, np.uint8)).save(frames / f"{k:03d}.png")
    full, other = np.zeros((48, 64), bool), np.ones((36, 48), bool)
    full[5:20, 5:30] = True
    save_mask_png(full, tmp_path / "full.png")
    save_mask_png(other, tmp_path / "other.png")
    limits = MediaLimits(max_side=32)
    raw = {"video": "frames", "objects": [{"masks": {"0": "full.png"}}], "question": "What?"}
    loaded = load_item(BatchItem("full", 1, raw), tmp_path, limits)
    assert loaded.objects[0][0][0].shape == (24, 32)
    raw["objects"] = [{"masks": {"0": "other.png"}}]
    with pytest.raises(ItemError, match=r"^a mask is 48x36 but its frame is 32x24 \(64x48 as uploaded\)"):
        load_item(BatchItem("other", 1, raw), tmp_path, limits)


def test_app_workspace_and_api_refuse(preview_app: PreviewApp, pictures: dict[str, Path]) -> None:
    """The app's workspace (what the handlers call) and the named API say the same."""
    from pixelrefer.serve.workspace import Workspace

    workspace = Workspace(preview_app.service)
    try:
        workspace.open_image(str(pictures["image"]))
        with pytest.raises(InputError, match=REFUSAL.replace("(", r"\(").replace(")", r"\)")):
            workspace.fit_mask(np.asarray(Image.open(pictures["half"])))
    finally:
        workspace.close()
    client = Client(preview_app.url, verbose=False, download_files=False)
    try:
        for endpoint, arguments in (
            ("/describe_region", (handle_file(pictures["image"]), handle_file(pictures["half"]), 4)),
            ("/add_object", (handle_file(pictures["half"]), 0)),
        ):
            if endpoint == "/add_object":
                client.predict(image=handle_file(pictures["image"]), api_name="/open")
            with pytest.raises(AppError) as refused:
                client.predict(*arguments, api_name=endpoint)
            assert REFUSAL in str(refused.value), endpoint
    finally:
        client.close()


# ---------------------------------------------------------------------- draining a reply stream


def test_final_drains_a_reply_stream_for_its_exchange() -> None:
    from pixelrefer.chat.session import Reply

    exchange = object()
    pieces: list[str] = []
    stream = iter([Reply("a"), Reply(""), Reply("b", done=True, exchange=exchange)])
    assert ChatSession.final(stream, pieces.append) is exchange
    assert pieces == ["a", "b"] and next(stream, None) is None
    with pytest.raises(RuntimeError, match="without its finished exchange"):
        ChatSession.final(iter([Reply("a")]))
