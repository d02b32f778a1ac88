"""The Scale-Adaptive Object Tokenizer, rule by rule against the spec (§2.1–§2.4), beyond the fixtures.

Expected sizes below are worked out by hand from the spec's formulas (the arithmetic is in the comments);
expected tensors come from an independent computation (explicit bilinear weights, the formula of §2.3,
or the torch/cv2 call the spec names), never from this package's own output.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pixelrefer import PixelRefer, Video, load_image
from pixelrefer.model.config import PixelReferConfig, PixelReferLiteConfig
from pixelrefer.model.objects import (
    ObjectCrop,
    ObjectTokenizer,
    kmeans,
    plan_crop,
    pool_mask_features,
    position_map,
)
from pixelrefer.model.synthetic import build_checkpoint

from .conftest import fixtures_root


def noise_frame(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A frame whose pixels are all different, so any off-by-one in a crop shows."""
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def rect_mask(height: int, width: int, rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray:
    """Rows r0..r1 and columns c0..c1, both inclusive."""
    mask = np.zeros((height, width), bool)
    mask[rows[0] : rows[1] + 1, cols[0] : cols[1] + 1] = True
    return mask


# ---------------------------------------------------------------------------------------------- crop box


def test_full_crop_box_is_inclusive_but_sliced_one_short() -> None:
    frame = noise_frame(200, 300)
    # 85x85 mask (area 7225): scale ceil(sqrt(6272/7225)) = 1 and 7225/196 = 36.9 <= 100, so no resize
    # happens when the crop is a multiple of 14: box rows 50-28=22 .. 134+28=162 -> 140 rows.
    crop = plan_crop(frame, rect_mask(200, 300, (50, 134), (60, 144)), "full", 32)
    assert crop.box == (22, 32, 162, 172)
    assert crop.crop.shape == (140, 140, 3)
    # The crop is rows 22..161 and columns 32..171: the box's last row and column are left out.
    assert np.array_equal(crop.crop, frame[22:162, 32:172])


def test_lite_crop_is_inclusive() -> None:
    frame = noise_frame(200, 300)
    # 84x84 mask (area 7056): scale 1 and 7056/196 = 36 <= 50; rows 50-28=22 .. 133+28=161 inclusive.
    crop = plan_crop(frame, rect_mask(200, 300, (50, 133), (60, 143)), "lite", 32)
    assert crop.box == (22, 32, 161, 171)
    assert crop.crop.shape == (140, 140, 3)
    assert np.array_equal(crop.crop, frame[22:162, 32:172])


def test_at_the_frame_edge_the_full_model_loses_the_last_row_and_lite_keeps_it() -> None:
    frame = noise_frame(100, 320)
    # Rows 80..99 x columns 0..313: area 6280 -> scale 1 for both variants (6280/196 = 32 <= 50).
    mask = rect_mask(100, 320, (80, 99), (0, 313))
    full = plan_crop(frame, mask, "full", 32)
    lite = plan_crop(frame, mask, "lite", 32)
    assert full.box == lite.box == (52, 0, 99, 319)
    # Full: rows 52..98 (47), columns 0..318 (319); Lite: rows 52..99 (48), columns 0..319 (320).
    # Both round up to 56 x 322 and are resized there with cv2's default (bilinear) interpolation.
    assert full.crop.shape == lite.crop.shape == (56, 322, 3)
    assert np.array_equal(full.crop, cv2.resize(frame[52:99, 0:319], (322, 56)))
    assert np.array_equal(
        lite.crop, cv2.resize(frame[52:100, 0:320], (322, 56), interpolation=cv2.INTER_LINEAR)
    )


# ---------------------------------------------------------------------------------------------- scale


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        # 10x10, area 100: s = ceil(sqrt(6272/100)) = ceil(7.92) = 8; crop 10+55 = 65 -> 520 -> 532.
        ((10, 10), (532, 532)),
        # 28x56, area 1568: 6272/1568 = 4, s = 2 exactly; crop 83 x 111 -> 166, 222 -> 168, 224.
        ((28, 56), (168, 224)),
        # 140x140, area 19600: s = 1 and 19600/196 = 100 is not > 100; crop 195 -> 196.
        ((140, 140), (196, 196)),
        # 200x200, area 40000: 40000/196 = 204.08 > 100, s = 1/sqrt(2.0408) = 0.7; 255*0.7 = 178.5 -> 182.
        ((200, 200), (182, 182)),
    ],
)
def test_full_scale_rule(size: tuple[int, int], expected: tuple[int, int]) -> None:
    height, width = size
    mask = rect_mask(400, 400, (100, 100 + height - 1), (100, 100 + width - 1))
    assert plan_crop(noise_frame(400, 400), mask, "full", 32).crop.shape[:2] == expected


def test_full_scale_rule_at_a_perfect_square() -> None:
    # One pixel less than 1568 (same box): 6272/1567 > 4, so s = 3: 83*3 = 249 -> 252, 111*3 = 333 -> 336.
    mask = rect_mask(400, 400, (100, 127), (100, 155))
    mask[100, 100] = False
    assert plan_crop(noise_frame(400, 400), mask, "full", 32).crop.shape[:2] == (252, 336)


@pytest.mark.parametrize(
    ("side", "full", "lite"),
    [
        # 120x120, area 14400 = 73.5 patches: full keeps s = 1 (crop 175 -> 182); Lite (> 50) shrinks,
        # s = 1/sqrt(73.47/50) = 0.825: crop 176*0.825 = 145.2 -> 154.
        (120, (182, 182), (154, 154)),
        # 150x150, area 22500 = 114.8 patches: full shrinks too, s = 1/sqrt(1.148) = 0.933: 205 -> 191.3 -> 196
        # (210 without the shrink); Lite s = 1/sqrt(2.296) = 0.660: 206 -> 136 -> 140.
        (150, (196, 196), (140, 140)),
    ],
)
def test_large_masks_shrink_from_100_patches_full_and_50_lite(
    side: int, full: tuple[int, int], lite: tuple[int, int]
) -> None:
    frame = noise_frame(400, 400)
    mask = rect_mask(400, 400, (100, 100 + side - 1), (100, 100 + side - 1))
    assert plan_crop(frame, mask, "full", 32).crop.shape[:2] == full
    assert plan_crop(frame, mask, "lite", 32).crop.shape[:2] == lite


def test_full_scale_is_computed_in_float32_like_the_official_torch_code() -> None:
    # A 141x141 mask in the corner of a 142x142 frame: crop 141 x 141 (bottom = min(141, 140+28) = 141).
    # area 19881 = (141/140)^2 * 19600, so in exact arithmetic s = 140/141 and 141*s/14 = 10 -> 140 px.
    # The official code divides a torch int64 sum, i.e. in float32, where s comes out a hair larger:
    # 141*s/14 = 10.0000001 -> 11 -> 154 px. The checkpoints saw the float32 result.
    mask = rect_mask(142, 142, (0, 140), (0, 140))
    area = torch.from_numpy(mask.astype(np.uint8)).sum()
    official = 1 / math.sqrt((area / 196) / 100)
    assert math.ceil(141 * official / 14) * 14 == 154
    assert math.ceil(141 * (1 / math.sqrt(19881 / 196 / 100)) / 14) * 14 == 140
    assert plan_crop(np.zeros((142, 142, 3), np.uint8), mask, "full", 32).crop.shape[:2] == (154, 154)


def test_every_crop_side_is_a_multiple_of_14() -> None:
    rng = np.random.default_rng(5)
    frame = noise_frame(300, 400)
    for _ in range(20):
        r0, c0 = rng.integers(0, 250), rng.integers(0, 350)
        mask = rect_mask(300, 400, (r0, r0 + rng.integers(0, 49)), (c0, c0 + rng.integers(0, 49)))
        for variant in ("full", "lite"):
            crop = plan_crop(frame, mask, variant, 32)
            assert crop.crop.shape[0] % 14 == 0 and crop.crop.shape[1] % 14 == 0
            assert tuple(crop.grid_mask.shape) == (crop.crop.shape[0] // 14, crop.crop.shape[1] // 14)


# ---------------------------------------------------------------------------------------------- grid mask


def test_full_grid_mask_is_torch_uint8_bilinear_and_counts_the_tokens() -> None:
    # A noise mask shrunk onto its grid: torch's uint8 bilinear kernel rounds after each pass, which is
    # not the same as rounding a float bilinear resize (spec §2.1 step 6).
    rng = np.random.default_rng(1)
    mask = np.zeros((600, 600), bool)
    mask[100:300, 100:300] = rng.random((200, 200)) < 0.5
    crop = plan_crop(np.zeros((600, 600, 3), np.uint8), mask, "full", 32)
    top, left, bottom, right = crop.box
    cut = torch.from_numpy(mask[top:bottom, left:right].astype(np.uint8))[None, None]
    size = (crop.crop.shape[0] // 14, crop.crop.shape[1] // 14)
    expected = F.interpolate(cut, size=size, mode="bilinear", align_corners=False)[0, 0]
    assert crop.grid_mask.dtype == torch.uint8
    assert torch.equal(crop.grid_mask, expected)
    assert set(crop.grid_mask.unique().tolist()) == {0, 1}
    as_float = F.interpolate(cut.float(), size=size, mode="bilinear", align_corners=False)[0, 0].round()
    assert not torch.equal(as_float.to(torch.uint8), expected)  # the distinction is real for this mask
    assert crop.n_cells == int(expected.sum())
    assert crop.n_tokens == min(32, int(expected.sum())) == 32


def test_full_small_object_gets_fewer_than_32_tokens() -> None:
    # A 1-px line, 17 px long: scale ceil(sqrt(6272/17)) = 20, but the line covers only 24 grid cells.
    mask = np.zeros((600, 600), bool)
    mask[200, 100:117] = True
    crop = plan_crop(np.zeros((600, 600, 3), np.uint8), mask, "full", 32)
    count = int(crop.grid_mask.sum())
    assert count < 32
    assert crop.n_tokens == crop.n_cells == count


def test_lite_grid_mask_is_float_cv2_bilinear_and_always_32_tokens() -> None:
    mask = np.zeros((200, 200), bool)
    mask[50:90, 60:75] = True  # an L shape: 15 px wide bar and a 10 px high arm
    mask[60:70, 75:130] = True
    crop = plan_crop(noise_frame(200, 200), mask, "lite", 32)
    top, left, bottom, right = crop.box
    cut = mask[top : bottom + 1, left : right + 1].astype(np.float32)
    size = (crop.crop.shape[1] // 14, crop.crop.shape[0] // 14)
    expected = cv2.resize(cut, size, interpolation=cv2.INTER_LINEAR)
    assert crop.grid_mask.dtype == torch.float32
    assert np.array_equal(crop.grid_mask.numpy(), expected)
    values = crop.grid_mask.numpy()
    assert ((values > 0) & (values < 1)).any()  # fractions, not rounded
    assert crop.n_cells == int((values > 0).sum())
    assert crop.n_tokens == 32


def test_an_empty_mask_is_refused() -> None:
    with pytest.raises(ValueError, match="empty"):
        plan_crop(noise_frame(50, 50), np.zeros((50, 50), bool), "full", 32)


# ---------------------------------------------------------------------------------------------- position map


def test_position_map_swaps_the_axes_as_the_official_code_does() -> None:
    # Box (top, left, bottom, right) = (10, 20, 50, 100) on a 120 x 200 (H x W) frame, grid 4 x 5.
    # Spec §2.3: pos[i,j,0] = ((j/w)*(b2-b0) + b0)/(W-1), pos[i,j,1] = ((i/h)*(b3-b1) + b1)/(H-1).
    pos = position_map(4, 5, (10, 20, 50, 100), (120, 200))
    assert pos.shape == (4, 5, 2)
    cells = {
        (0, 0): (10 / 199, 20 / 119),
        (0, 4): ((0.8 * 40 + 10) / 199, 20 / 119),
        (3, 0): (10 / 199, (0.75 * 80 + 20) / 119),
        (3, 4): (42 / 199, 80 / 119),
        (2, 1): ((0.2 * 40 + 10) / 199, (0.5 * 80 + 20) / 119),
    }
    for (i, j), (x, y) in cells.items():
        assert pos[i, j, 0].item() == pytest.approx(x, abs=1e-7)
        assert pos[i, j, 1].item() == pytest.approx(y, abs=1e-7)
    # Channel 0 runs along the columns (over the box's *row* span), channel 1 along the rows.
    assert torch.equal(pos[0, :, 0], pos[3, :, 0])
    assert torch.equal(pos[:, 0, 1], pos[:, 4, 1])


# ---------------------------------------------------------------------------------------------- k-means


def test_kmeans_starts_from_the_permutation() -> None:
    tokens = torch.arange(20, dtype=torch.float32).view(10, 2)
    permutation = torch.tensor([7, 2, 9, 0, 1, 3, 4, 5, 6, 8])
    out = kmeans(tokens, 3, 0, permutation)
    assert torch.equal(out, tokens[[7, 2, 9]])


def test_kmeans_returns_the_old_centroids_once_converged() -> None:
    # Token 1 sits 2e-7 from token 0: the first update moves centroid 0 by 1e-7 (< atol 1e-6), so k-means
    # stops and returns the centroids it had, not the updated mean.
    tokens = torch.tensor([[0.0, 0.0], [2e-7, 0.0], [10.0, 10.0]])
    out = kmeans(tokens, 2, 5, torch.tensor([0, 2, 1]))
    assert torch.equal(out, torch.tensor([[0.0, 0.0], [10.0, 10.0]]))


def test_kmeans_keeps_an_empty_cluster_in_place() -> None:
    # Two identical starting centroids: every token goes to the first (argmin takes the first index on
    # ties), so after one iteration cluster 0 is the mean of all and cluster 1 keeps its old centroid.
    tokens = torch.tensor([[0.0, 0.0], [0.0, 0.0], [5.0, 5.0]])
    out = kmeans(tokens, 2, 1, torch.tensor([0, 1, 2]))
    assert torch.allclose(out, torch.tensor([[5 / 3, 5 / 3], [0.0, 0.0]]))
    # Given more iterations it separates them and then stops: clusters in index order.
    assert torch.equal(kmeans(tokens, 2, 5, torch.tensor([0, 1, 2])), torch.tensor([[5.0, 5.0], [0.0, 0.0]]))


def test_kmeans_iterates_to_the_cluster_means() -> None:
    a = torch.tensor([[0.0, 0.0], [0.0, 2.0], [2.0, 0.0], [2.0, 2.0]])
    tokens = torch.cat([a, a + 100])
    out = kmeans(tokens, 2, 5, torch.tensor([0, 1, 2, 3, 4, 5, 6, 7]))
    assert torch.equal(out, torch.tensor([[1.0, 1.0], [101.0, 101.0]]))


# ---------------------------------------------------------------------------------------------- pooling


def test_pooling_selects_cells_in_row_major_order() -> None:
    features = torch.arange(2 * 3 * 4, dtype=torch.float32).view(1, 2, 3, 4)
    grid = torch.zeros(3, 4, dtype=torch.uint8)
    grid[1, 0] = grid[0, 3] = grid[2, 2] = 1
    out = pool_mask_features(features, grid, 32, 5, None)
    # Row-major: (0,3), (1,0), (2,2); channel c of cell (i,j) is c*12 + i*4 + j.
    assert torch.equal(out, torch.tensor([[3.0, 15.0], [4.0, 16.0], [10.0, 22.0]]))


def test_pooling_resizes_features_to_the_mask_grid_bilinearly() -> None:
    # 2x2 -> 4x4 with align_corners=False: source coordinate (d + 0.5)/2 - 0.5, clamped, gives the 1-D
    # weights below; the 2-D resize is W F W^T per channel.
    features = torch.tensor([[[1.0, 2.0], [3.0, 5.0]], [[-1.0, 0.0], [4.0, 8.0]]]).unsqueeze(0)
    weights = torch.tensor([[1.0, 0.0], [0.75, 0.25], [0.25, 0.75], [0.0, 1.0]])
    resized = torch.stack([weights @ channel @ weights.T for channel in features[0]])
    grid = torch.zeros(4, 4)
    grid[0, 1] = grid[2, 3] = grid[3, 0] = 0.3  # any value > 0 selects (Lite's float grid)
    out = pool_mask_features(features, grid, 32, 3, None)
    expected = torch.stack([resized[:, 0, 1], resized[:, 2, 3], resized[:, 3, 0]])
    assert torch.allclose(out, expected, atol=1e-6)


def test_pooling_runs_kmeans_only_above_k_and_needs_a_permutation() -> None:
    features = torch.randn(1, 4, 6, 6, generator=torch.Generator().manual_seed(0))
    grid = torch.ones(6, 6, dtype=torch.uint8)
    assert pool_mask_features(features, grid[:, :5], 32, 5, None).shape == (30, 4)  # 30 cells, no k-means
    with pytest.raises(ValueError, match="permutation"):
        pool_mask_features(features, grid, 32, 5, None)
    permutation = torch.randperm(36, generator=torch.Generator().manual_seed(3))
    out = pool_mask_features(features, grid, 32, 0, permutation)
    cells = features[0].flatten(1).T
    assert torch.equal(out, cells[permutation[:32]])


def _tokenizer(config_class: type[PixelReferConfig]) -> ObjectTokenizer:
    config = config_class(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        vocab_size=10,
    )
    torch.manual_seed(0)
    return ObjectTokenizer(config, 16)


def _crop_with_grid(grid: torch.Tensor) -> ObjectCrop:
    h, w = grid.shape
    return ObjectCrop(
        crop=np.zeros((h * 14, w * 14, 3), np.uint8),
        grid_mask=grid,
        n_tokens=32,
        box=(0, 0, h * 14, w * 14),
        frame_size=(h * 14 + 1, w * 14 + 1),
        n_cells=int((grid > 0).sum()),
    )


def test_lite_pads_short_token_sets_to_32_and_full_does_not() -> None:
    grid = torch.zeros(4, 5)
    grid[1, 1:4] = 1
    grid[2, 2] = 0.5
    features = torch.randn(4, 5, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        lite = _tokenizer(PixelReferLiteConfig).pool(features, _crop_with_grid(grid), None)
        full = _tokenizer(PixelReferConfig).pool(features, _crop_with_grid(grid.to(torch.uint8)), None)
    assert lite.shape == (32, 16)
    assert (lite[:4].abs().sum(dim=1) > 0).all()
    assert torch.equal(lite[4:], torch.zeros(28, 16))
    assert full.shape == (3, 16)  # the uint8 grid keeps the three whole cells; no padding
    assert full.dtype == torch.float32


# ---------------------------------------------------------------------------------------------- Lite views


@pytest.fixture(scope="module")
def lite_model(tmp_path_factory: pytest.TempPathFactory) -> PixelRefer:
    folder = build_checkpoint(tmp_path_factory.mktemp("lite"), variant="lite")
    return PixelRefer.from_pretrained(str(folder), device="cpu")


def _two_masks(height: int = 120, width: int = 160) -> tuple[np.ndarray, np.ndarray]:
    first = rect_mask(height, width, (10, 40), (10, 50))
    second = rect_mask(height, width, (60, 100), (90, 150))
    return first, second


def test_lite_reuses_the_first_masks_local_view_for_every_mask_on_the_frame(lite_model: PixelRefer) -> None:
    frame = noise_frame(120, 160)
    first, second = _two_masks()
    prepared = lite_model.prepare(
        image=frame, regions=[first, second], instruction="Compare <region> with <region>."
    )
    a, b = (plan.crops[0] for plan in prepared.objects)
    # Mask 0's inclusive crop (box rows 0..68, columns 0..78) at 224 px with INTER_AREA, for both masks.
    own_first = cv2.resize(frame[0:69, 0:79], (224, 224), interpolation=cv2.INTER_AREA)
    assert np.array_equal(a.local_view, own_first)
    assert np.array_equal(b.local_view, own_first)
    top, left, bottom, right = b.box
    own_second = cv2.resize(
        frame[top : bottom + 1, left : right + 1], (224, 224), interpolation=cv2.INTER_AREA
    )
    assert not np.array_equal(b.local_view, own_second)
    assert torch.equal(
        prepared.objects[0].local_pixels.pixel_values, prepared.objects[1].local_pixels.pixel_values
    )
    # The global view is the whole frame at 336 px, INTER_AREA.
    whole = cv2.resize(frame, (336, 336), interpolation=cv2.INTER_AREA)
    assert np.array_equal(a.global_view, whole) and np.array_equal(b.global_view, whole)


def test_lite_local_views_are_per_frame_in_a_clip(lite_model: PixelRefer) -> None:
    frames = {1: noise_frame(120, 160, seed=1), 2: noise_frame(120, 160, seed=2)}
    first, second = _two_masks()
    video = Video(frames=[], timestamps=[], annotated=frames, fps=3)
    # Object 0 on frames 1 and 2, object 1 on frame 1: object 1 takes object 0's frame-1 view.
    prepared = lite_model.prepare(
        video=video, regions=[{1: first, 2: second}, {1: second}], instruction="<region> and <region>?"
    )
    (o0_f1, o0_f2), (o1_f1,) = (plan.crops for plan in prepared.objects)
    view_f1 = cv2.resize(frames[1][0:69, 0:79], (224, 224), interpolation=cv2.INTER_AREA)
    top, left, bottom, right = o0_f2.box
    view_f2 = cv2.resize(
        frames[2][top : bottom + 1, left : right + 1], (224, 224), interpolation=cv2.INTER_AREA
    )
    assert np.array_equal(o0_f1.local_view, view_f1)
    assert np.array_equal(o1_f1.local_view, view_f1)
    assert np.array_equal(o0_f2.local_view, view_f2)


# ---------------------------------------------------------------------------------------------- k-means seeds


def _cases() -> list[Path]:
    return sorted(fixtures_root().glob("*/cases/*/case.json"))


@pytest.mark.parametrize("case_path", _cases(), ids=lambda p: f"{p.parents[2].name}/{p.parent.name}")
def test_one_seeded_generator_reproduces_the_official_kmeans_permutations(case_path: Path) -> None:
    case = json.loads(case_path.read_text())
    generator = torch.Generator().manual_seed(case.get("seed_before_generate_and_forward", 1234))
    assert case["kmeans_calls"]
    for call in case["kmeans_calls"]:
        head = torch.randperm(call["n_tokens"], generator=generator)[: call["n_clusters"]]
        assert head.tolist() == call["randperm_head"]


@pytest.mark.parametrize(
    "case_path",
    [p for p in _cases() if json.loads(p.read_text())["modal"] == "image"],
    ids=lambda p: f"{p.parents[2].name}/{p.parent.name}",
)
def test_prepare_draws_those_permutations_in_mask_order(case_path: Path) -> None:
    case_dir = case_path.parent
    case = json.loads(case_path.read_text())
    model = PixelRefer.from_pretrained(str(case_path.parents[2] / "checkpoint"), device="cpu")
    masks = [load_image(case_dir / name)[..., 0] != 0 for name in case["mask_files"]]
    prepared = model.prepare(
        image=case_dir / case["image_file"],
        regions=masks,
        instruction=case["question"],
        seed=case.get("seed_before_generate_and_forward", 1234),
    )
    drawn = [p for plan in prepared.objects for p in plan.permutations if p is not None]
    assert [(len(p), p[:32].tolist()) for p in drawn] == [
        (call["n_tokens"], call["randperm_head"]) for call in case["kmeans_calls"]
    ]
    assert [c.n_cells for plan in prepared.objects for c in plan.crops] == [
        call["n_tokens"] for call in case["kmeans_calls"]
    ]
