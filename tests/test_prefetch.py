"""SAM's image embedding computed in the background when a picture or frame is shown (`pixelrefer.serve.prefetch`):
the first click then runs only the decoder; moving on cancels; a model event pauses it; the memory budget bounds
it; a click during the computation waits for it (one encoder run); masks are the same with and without it.
The order between it and the chat warm-up (`pixelrefer.chat.background`): a warm-up for a visitor with objects
goes first, the embedding next, a warm-up of a picture with no object last; a click needing the embedding gets
it at once whatever waits. The tiny random SAM 2.1 of `tests/sam_builders.py`; encoder and decoder runs counted
with forward hooks; the order with fake jobs that log their steps, held by events at known points."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from pixelrefer.chat.background import Background, Job, Rank, Worker
from pixelrefer.chat.gate import Gate
from pixelrefer.chat.warmup import Warmer
from pixelrefer.segment.sam import Sam2Segmenter
from pixelrefer.serve.service import AppSettings, Service
from pixelrefer.serve.workspace import Workspace

from .conftest import fixture_case, fixture_mask, fixtures_root


@pytest.fixture(scope="module")
def service(tiny_sam2_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """The tiny PixelRefer of the fixtures and the tiny SAM 2.1, on the CPU; no chat warm-up (it would only
    share the two cores with what is measured here)."""
    torch.set_flush_denormal(True)  # random weights make denormal floats, which slow CPU kernels down
    settings = replace(
        AppSettings(),
        model=str(fixtures_root() / "pixelrefer-tiny" / "checkpoint"),
        sam2=str(tiny_sam2_dir),
        device="cpu",
        preview_dir=tmp_path_factory.mktemp("preview"),
    )
    started = Service(settings).start()
    started.warmer.close()
    assert isinstance(started.segmenter, Sam2Segmenter)
    yield started
    started.prefetcher.close()
    started.close()


class Counts:
    """Forward calls of SAM's image encoder (the tower) and of its mask decoder, from hooks."""

    def __init__(self, segmenter: Sam2Segmenter) -> None:
        self.tower = 0
        self.decoder = 0
        model = segmenter.image_model
        self._hooks = [
            model.vision_encoder.register_forward_hook(lambda *_: self._count("tower")),
            model.mask_decoder.register_forward_hook(lambda *_: self._count("decoder")),
        ]

    def _count(self, name: str) -> None:
        setattr(self, name, getattr(self, name) + 1)

    def remove(self) -> None:
        for hook in self._hooks:
            hook.remove()


@pytest.fixture
def fresh(service: Service) -> Iterator[tuple[Workspace, Counts]]:
    """A visitor, SAM's cache emptied, the hooks counting, the prefetch on and the budget unbounded."""
    service.segmenter.forget_embeddings()
    service.prefetcher.enabled = True
    service.budget.limits = {}
    counts = Counts(service.segmenter)
    ws = Workspace(service)
    yield ws, counts
    ws.close()
    assert service.prefetcher.wait(30)
    counts.remove()
    service.prefetcher.enabled = True
    service.budget.limits = {}


def picture(seed: int, height: int = 96, width: int = 128) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_the_shown_picture_is_embedded_in_the_background_and_the_first_click_runs_only_the_decoder(
    service: Service, fresh
) -> None:
    ws, counts = fresh
    ws.open_image(picture(1))
    assert service.prefetcher.wait(30)
    report = service.prefetcher.report(ws)
    assert report.stored, report.reason
    assert report.ready_s >= report.compute_s > 0
    assert counts.tower == 1 and counts.decoder == 0
    assert service.segmenter.has_embedding(ws.frame)

    result = ws.click(60, 40, "positive")
    assert result is not None and result.mask.shape == (96, 128)
    assert counts.tower == 1, "the first click ran the image encoder again"
    assert counts.decoder >= 1


def test_each_clip_frame_shown_is_embedded(service: Service, fresh, coded_clip) -> None:
    ws, counts = fresh
    ws.open_video(coded_clip(12, "6", 64, 48))
    assert service.prefetcher.wait(30)
    assert service.segmenter.has_embedding(ws.clip.frames[0])
    ws.seek(1)
    assert service.prefetcher.wait(30)
    assert service.segmenter.has_embedding(ws.clip.frames[1])
    assert counts.tower == 2
    ws.click(30, 20, "positive")
    assert counts.tower == 2


def test_a_model_event_pauses_it_until_the_gate_is_idle(service: Service, fresh) -> None:
    ws, counts = fresh
    with service.gate.event():  # an answer or a tracking run of another visitor
        ws.open_image(picture(2))
        assert not service.prefetcher.wait(0.5)
        assert counts.tower == 0 and not service.segmenter.has_embedding(ws.frame)
    assert service.prefetcher.wait(30)
    report = service.prefetcher.report(ws)
    assert report.stored and report.paused_s > 0.3
    assert counts.tower == 1


def test_moving_on_cancels_the_previous_pictures_job(service: Service, fresh) -> None:
    ws, counts = fresh
    first = picture(3)
    with service.gate.event():  # the job for the first picture starts, then waits at its first operation
        ws.open_image(first)
        time.sleep(0.3)
        ws.open_image(picture(4))
    assert service.prefetcher.wait(30)
    assert not service.segmenter.has_embedding(first)
    assert service.segmenter.has_embedding(ws.frame)
    assert counts.tower == 1
    ws.close()  # closing cancels too: nothing is computed for a picture shown just before
    with service.gate.event():
        other = Workspace(service)
        other.open_image(picture(5))
        other.close()
    assert service.prefetcher.wait(30)
    assert not service.segmenter.has_embedding(picture(5))
    assert counts.tower == 1


def test_the_newest_picture_goes_first(service: Service, fresh, monkeypatch: pytest.MonkeyPatch) -> None:
    """Visitors who just saw a picture are about to click it; one who left may not have told the server yet."""
    ws, counts = fresh
    segmenter = service.segmenter
    order = []
    real = segmenter.embed_in_background

    def recorded(image, pause):
        order.append(int(image[0, 0, 0]))
        return real(image, pause)

    monkeypatch.setattr(segmenter, "embed_in_background", recorded)
    others = [Workspace(service) for _ in range(2)]
    try:
        with service.gate.event():  # the first job starts and waits; the next two wait in line
            for visitor, seed in zip([ws, *others], (11, 12, 13), strict=True):
                image = picture(seed)
                image[0, 0, 0] = seed
                visitor.open_image(image)
                time.sleep(0.2)
        assert service.prefetcher.wait(30)
    finally:
        for visitor in others:
            visitor.close()
    assert order == [11, 13, 12]
    assert counts.tower == 3


def test_the_memory_budget_bounds_it(service: Service, fresh) -> None:
    ws, counts = fresh
    service.prefetcher.enabled = False
    ws.open_image(picture(6))
    held = service.budget.usage().get("cpu", 0)
    service.budget.limits = {"cpu": held + service.segmenter.embedding_bytes() - 1}
    service.prefetcher.enabled = True
    ws._prefetch()  # the picture shown again, with one byte too few for its embedding
    assert service.prefetcher.wait(30)
    report = service.prefetcher.report(ws)
    assert not report.stored and report.reason.startswith("skipped: the memory budget")
    assert counts.tower == 0
    service.budget.limits = {}
    ws.click(60, 40, "positive")  # the click computes it
    assert counts.tower == 1


def test_embedding_bytes_is_what_an_embedding_holds(service: Service) -> None:
    segmenter = service.segmenter
    segmenter.forget_embeddings()
    with torch.inference_mode():
        segmenter._embeddings(picture(7))
    held = sum(t.untyped_storage().nbytes() for t in segmenter.kept_embeddings()[0])
    assert segmenter.embedding_bytes() == held


def test_a_click_during_the_computation_waits_for_it_and_the_encoder_runs_once(
    service: Service, fresh
) -> None:
    ws, counts = fresh
    segmenter = service.segmenter
    entered, release = threading.Event(), threading.Event()

    def hold(*_):  # the background encoder is held at its start until the click waits for it
        entered.set()
        assert release.wait(30)

    hook = segmenter.image_model.vision_encoder.register_forward_pre_hook(hold)
    results = []
    try:
        ws.open_image(picture(8))
        assert entered.wait(30)
        hook.remove()
        clicker = threading.Thread(target=lambda: results.append(ws.click(60, 40, "positive")))
        clicker.start()
        deadline = time.monotonic() + 30
        while not any(p.waiters for p in list(segmenter._pending.values())):
            assert time.monotonic() < deadline, "the click did not wait for the embedding under way"
            time.sleep(0.01)
        assert service.gate.busy  # the click's own model event: the computation goes on regardless
        release.set()
        clicker.join(30)
    finally:
        hook.remove()
        release.set()
    assert service.prefetcher.wait(30)
    assert results and results[0] is not None
    assert counts.tower == 1
    assert service.prefetcher.report(ws).stored


def test_masks_are_identical_with_and_without_the_prefetch(service: Service, fresh) -> None:
    ws, counts = fresh
    image = picture(9)
    ws.open_image(image)
    assert service.prefetcher.wait(30) and service.prefetcher.report(ws).stored
    with_prefetch = ws.click(50, 30, "positive")
    ws.click(90, 70, "negative")
    refined_with = ws.draft.result

    service.segmenter.forget_embeddings()
    service.prefetcher.enabled = False
    ws.open_image(image)
    assert service.prefetcher.wait(30) and not service.segmenter.has_embedding(image)
    without = ws.click(50, 30, "positive")
    ws.click(90, 70, "negative")
    refined_without = ws.draft.result
    assert counts.tower == 2
    for a, b in ((with_prefetch, without), (refined_with, refined_without)):
        assert np.array_equal(a.mask, b.mask) and a.score == b.score
        assert len(a.alternatives) == len(b.alternatives)


def test_it_is_off_with_the_flag_and_on_zero_gpu(tmp_path: Path) -> None:
    assert AppSettings.parse([], env={}).sam_prefetch
    assert not AppSettings.parse(["--no-sam-prefetch"], env={}).sam_prefetch
    assert not AppSettings.parse([], env={"PIXELREFER_SAM_PREFETCH": "0"}).sam_prefetch
    zero = Service(replace(AppSettings(), zero_gpu=True, preview_dir=tmp_path))
    assert not zero.prefetcher.enabled
    zero.prefetcher.show("visitor", picture(10))
    assert zero.prefetcher.wait(1) and zero.prefetcher.report("visitor") is None


# ---------------------------------------------------------------------- who computes first


class Steps(Job[str]):
    """A fake background job: `steps` pause points, each logged as name + step once passed; `hold` (when given)
    keeps it inside its first step until set. `waited` is set when it had to wait for its turn."""

    def __init__(self, name: str, rank: Rank, log: list[str], hold: threading.Event | None = None) -> None:
        super().__init__(None, rank)
        self.name, self.log, self.hold = name, log, hold
        self.started, self.waited = threading.Event(), threading.Event()

    def wait_turn(self, alive=None) -> None:
        self.waited.set()
        super().wait_turn(alive)

    def run(self) -> str:
        for step in range(3):
            self.checkpoint()
            self.log.append(f"{self.name}{step}")
            if step == 0:
                self.started.set()
                if self.hold is not None:
                    assert self.hold.wait(30)
        return "done"

    def failed(self, reason: str) -> str:
        return reason


@pytest.fixture
def workers() -> Iterator[tuple[Gate, Worker, Worker]]:
    """A gate and two workers on it, as the Service has them: the warm-up's and the embedding's."""
    gate = Gate()
    background = Background(gate)
    warm, embed = Worker(background, "test-warm-up"), Worker(background, "test-embedding")
    yield gate, warm, embed
    warm.close()
    embed.close()


def test_the_embedding_yields_to_a_warm_up_for_a_visitor_with_objects(workers) -> None:
    """The question comes next there: the embedding stops at its next operation until the warm-up is done."""
    _, warm, embed = workers
    log, hold_embed, hold_warm = [], threading.Event(), threading.Event()
    embedding = Steps("e", Rank.CLICK, log, hold_embed)
    embed.submit("picture shown", embedding)
    assert embedding.started.wait(30)
    warm_up = Steps("w", Rank.QUESTION, log, hold_warm)
    warm.submit("objects marked", warm_up)  # it starts at once: nothing above it
    assert warm_up.started.wait(30)
    hold_embed.set()
    assert embedding.waited.wait(30)  # its next operation waits
    assert log == ["e0", "w0"]
    hold_warm.set()
    assert warm.wait(30) and embed.wait(30)
    assert log == ["e0", "w0", "w1", "w2", "e1", "e2"]
    assert embed.report("picture shown") == warm.report("objects marked") == "done"


def test_a_warm_up_with_no_object_yields_to_the_embedding_and_a_question_behind_it_lifts_it(workers) -> None:
    """A click comes before a question on a fresh picture. A warm-up for objects queued behind the waiting one
    makes it go on (it cannot be overtaken in its own worker), and the embedding waits for both: no deadlock."""
    _, warm, embed = workers
    log, hold_warm, hold_embed = [], threading.Event(), threading.Event()
    later = Steps("l", Rank.LATER, log, hold_warm)
    warm.submit("fresh picture", later)
    assert later.started.wait(30)
    embedding = Steps("e", Rank.CLICK, log, hold_embed)
    embed.submit("another picture", embedding)
    assert embedding.started.wait(30)
    hold_warm.set()
    assert later.waited.wait(30)  # its next operation waits for the embedding
    assert log == ["l0", "e0"]
    warm.submit("objects marked", Steps("q", Rank.QUESTION, log))
    hold_embed.set()
    assert warm.wait(30) and embed.wait(30)
    assert log == ["l0", "e0", "l1", "l2", "q0", "q1", "q2", "e1", "e2"]


def test_without_another_worker_the_order_is_the_embeddings_alone(workers) -> None:
    _, warm, embed = workers
    log = []
    embed.submit("a", Steps("e", Rank.CLICK, log))
    assert embed.wait(30)
    warm.submit("b", Steps("l", Rank.LATER, log))
    assert warm.wait(30)
    assert log == ["e0", "e1", "e2", "l0", "l1", "l2"]


def test_a_worker_takes_the_most_urgent_job_first_then_the_oldest(workers) -> None:
    gate, warm, _ = workers
    log = []
    with gate.event():  # a model event: the first job starts and waits; the others wait in line
        first = Steps("a", Rank.LATER, log)
        warm.submit("a", first)
        assert first.waited.wait(30)
        for owner, rank in (("b", Rank.LATER), ("c", Rank.QUESTION), ("d", Rank.LATER)):
            warm.submit(owner, Steps(owner, rank, log))
        assert log == []
    assert warm.wait(30)
    assert [entry[0] for entry in log[::3]] == ["a", "c", "b", "d"]


def test_model_events_come_before_every_background_job(workers) -> None:
    gate, warm, embed = workers
    log = []
    with gate.event():
        jobs = [Steps("w", Rank.QUESTION, log), Steps("e", Rank.CLICK, log)]
        warm.submit("a", jobs[0])
        embed.submit("b", jobs[1])
        assert all(job.waited.wait(30) for job in jobs)
        assert log == []
    assert warm.wait(30) and embed.wait(30)
    assert log == ["w0", "w1", "w2", "e0", "e1", "e2"]


def test_a_visitors_request_comes_before_every_background_job_for_as_long_as_it_runs_or_streams(
    workers,
) -> None:
    """Handling a page event (rendering the picture a click sends back, an answer's streaming updates) needs the
    CPU as much as the model does: background jobs wait while one is in flight."""
    gate, warm, _ = workers
    background, log = warm.background, []
    job = Steps("w", Rank.QUESTION, log)

    def answer():
        yield "first words"
        yield "the rest"

    streaming = background.during(answer)()
    assert next(streaming) == "first words"
    warm.submit("a", job)
    assert job.waited.wait(30)
    assert log == [] and not gate.busy
    assert list(streaming) == ["the rest"]
    assert warm.wait(30) and log == ["w0", "w1", "w2"]

    job = Steps("w", Rank.QUESTION, log)

    def render() -> str:
        warm.submit("a", job)
        assert job.waited.wait(30)  # it waits for the request that asked for it
        assert len(log) == 3
        return "rendered"

    assert background.during(render)() == "rendered"
    assert warm.wait(30) and log[3:] == ["w0", "w1", "w2"]


class Held:
    """Holds the warm-up (the worker's thread only) at the first network layer it reaches, until released."""

    def __init__(self, model) -> None:
        self.reached, self.release = threading.Event(), threading.Event()
        self._handles = [
            layer.register_forward_pre_hook(self._hold)
            for module in model.model.modules()
            if isinstance(module, torch.nn.ModuleList)
            for layer in module
        ]

    def _hold(self, *_) -> None:
        if threading.current_thread().name == "pixelrefer-warmup":
            self.reached.set()
            assert self.release.wait(30)

    def close(self) -> None:
        self.release.set()
        for handle in self._handles:
            handle.remove()


@pytest.fixture
def warming(service: Service, monkeypatch: pytest.MonkeyPatch) -> Iterator[Warmer]:
    """The service's chat warm-up on, for the tests of the order between it and the embedding."""
    warmer = Warmer(service.background)
    monkeypatch.setattr(service, "warmer", warmer)
    yield warmer
    warmer.close()


def open_with_object(ws: Workspace) -> None:
    """The fixture's two-object image, with its first object marked (as an example loads)."""
    folder, case = fixture_case(ws.service.model, "image_2regions")
    ws.open_image(folder / case["image_file"])
    ws.session.add_object(fixture_mask(folder / case["mask_files"][0]))
    ws._warm()


def test_in_the_app_a_click_gets_its_embedding_at_once_while_a_question_warms_up(
    service: Service, fresh, warming: Warmer
) -> None:
    """A visitor with objects has their warm-up going; another visitor's picture waits for it, not its click:
    the click makes the embedding go on at once (one encoder run) while the warm-up is still held."""
    asker, (clicker, counts) = Workspace(service), fresh
    held = Held(service.model)
    results = []

    def warmed() -> bool:
        report = warming.report(asker)
        return report is not None and report.stored

    try:
        service.prefetcher.enabled = False  # only the clicker's picture is embedded here
        with service.gate.event():  # the warm-up of the picture alone is replaced before it starts
            open_with_object(asker)
        service.prefetcher.enabled = True
        assert held.reached.wait(30)
        assert not warmed()
        clicker.open_image(picture(20))
        deadline = time.monotonic() + 30
        while not service.segmenter._pending:  # the job has begun, and waits for the warm-up
            assert time.monotonic() < deadline, "the embedding did not begin"
            time.sleep(0.01)
        assert counts.tower == 0
        thread = threading.Thread(target=lambda: results.append(clicker.click(60, 40, "positive")))
        thread.start()
        thread.join(60)
        assert results and results[0] is not None, "the click waited for the other visitor's warm-up"
        assert counts.tower == 1
        assert not warmed()  # still held: the click did not wait for it
        assert service.prefetcher.report(clicker).clicked_s is not None
        held.close()
        assert warming.wait(60) and warmed()
    finally:
        held.close()
        asker.close()


def test_in_the_app_a_picture_with_no_object_is_embedded_before_its_warm_up(
    service: Service, fresh, warming: Warmer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A click comes first on a fresh picture: the warm-up of the media alone waits for SAM's embedding. Both
    are asked for at once; SAM's encoder is held at its start until the warm-up has been refused its turn with
    the gate idle."""
    ws, counts = fresh
    order, yielded = [], threading.Event()
    real = Background.turn

    def turn(background: Background, worker: Worker) -> bool:
        mine = real(background, worker)
        if worker is warming and not mine and not background.gate.busy:
            yielded.set()
        return mine

    def hold(*_) -> None:
        assert yielded.wait(30), "the warm-up did not wait for the embedding"

    monkeypatch.setattr(Background, "turn", turn)
    model = service.segmenter.image_model
    hooks = [
        model.vision_encoder.register_forward_pre_hook(hold),
        model.vision_encoder.register_forward_hook(lambda *_: order.append("sam")),
    ]
    hooks += [
        layer.register_forward_pre_hook(lambda *_: order.append("warm-up"))
        for module in service.model.model.modules()
        if isinstance(module, torch.nn.ModuleList)
        for layer in module
    ]
    try:
        with service.gate.event():  # the picture appears: both jobs are queued before either computes
            folder, case = fixture_case(service.model, "image_2regions")
            ws.open_image(folder / case["image_file"])
        assert service.prefetcher.wait(60) and warming.wait(60)
    finally:
        for hook in hooks:
            hook.remove()
    assert service.prefetcher.report(ws).stored and warming.report(ws).stored
    assert order[0] == "sam" and "warm-up" in order
    assert counts.tower == 1
