"""The streaming API: frames one at a time (``localize``), ``reset``, descriptors (``locate``), arrays into
``run``, and a Localizer shared between threads."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from runtime import Localizer, LocalizerConfig, TemporalConfig
from runtime.errors import ConfigError
from tests.runtime.helpers import make_ambiguous_route


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("streaming")
    model, dataset, map_dir = make_ambiguous_route(root)
    frames = [dataset.read_image("queries", i)[:, :, ::-1].copy() for i in range(dataset.num_queries)]  # BGR
    return model, dataset, map_dir, frames


def answers(locs) -> list[list[int]]:
    return [[m.place_id for m in loc.matches] for loc in locs]


def test_frames_one_at_a_time_equal_a_batch_run(world):
    model, dataset, map_dir, frames = world
    config = LocalizerConfig(temporal=TemporalConfig())
    with Localizer.open(model, map_dir, config=config) as localizer:
        batch = list(localizer.run(frames))  # arrays, batched inference, its own sequence
        streamed = [localizer.localize(frame, timestamp=i / 30) for i, frame in enumerate(frames)]
        unsequenced = list(localizer.run(frames, temporal=False))
    assert all(loc.filtered for loc in streamed) and not any(loc.filtered for loc in unsequenced)
    assert answers(streamed) == answers(batch)
    np.testing.assert_allclose(
        [m.similarity for loc in streamed for m in loc.matches],
        [m.similarity for loc in batch for m in loc.matches],
        atol=1e-5,
    )
    assert [loc.index for loc in streamed] == list(range(len(frames)))
    assert streamed[3].timestamp == pytest.approx(0.1)
    positives = dataset.positives(25.0)
    recall = [
        np.mean([loc.best.place_id in positives[i] for i, loc in enumerate(r)])
        for r in (streamed, unsequenced)
    ]
    # measured: 0.983 with the sequence, 0.700 frame by frame
    assert recall[1] == pytest.approx(0.700, abs=0.02)
    assert recall[0] >= 0.95


def test_reset_starts_a_new_sequence(world):
    model, _, map_dir, frames = world
    with Localizer.open(model, map_dir, config=LocalizerConfig(temporal=TemporalConfig())) as localizer:
        first = [localizer.localize(f) for f in frames[:30]]
        carried_on = localizer.localize(
            frames[45]
        )  # a jump, judged with 30 frames of another stretch behind it
        localizer.reset()
        fresh = localizer.localize(frames[45])
        (alone,) = list(localizer.run(frames[45:46]))
    assert first[-1].index == 29 and carried_on.index == 30 and fresh.index == 0
    assert answers([fresh]) == answers([alone])  # after reset: as if it were the first frame
    assert answers([carried_on]) != answers([fresh])


def test_descriptors_from_elsewhere(world):
    model, _, map_dir, frames = world
    with Localizer.open(model, map_dir, config=LocalizerConfig(temporal=TemporalConfig())) as localizer:
        descriptors = localizer.backend.infer(np.stack([localizer.preprocess(f, "BGR") for f in frames[:20]]))
        located = [localizer.locate(d, timestamp=float(i)) for i, d in enumerate(descriptors)]
        localizer.reset()
        localized = [localizer.localize(f) for f in frames[:20]]
        with pytest.raises(ConfigError, match=r"descriptor has 32 dimensions but map .* holds 64-D"):
            localizer.locate(np.zeros(32, np.float32))
    assert answers(located) == answers(localized)


def test_a_localizer_shared_between_threads(world):
    """Four threads localise at once: frame by frame (no stream state: adaptation off) each gets what it
    would get alone; with sequence matching on, every frame joins the one stream and nothing is lost or
    corrupted."""
    model, _, map_dir, frames = world
    with Localizer.open(model, map_dir, config=LocalizerConfig(adapt=False)) as localizer:
        alone = answers(localizer.localize(f) for f in frames)
        results: dict[int, list] = {}
        errors: list[BaseException] = []

        def work(offset: int) -> None:
            try:
                for i in range(offset, len(frames), 4):
                    results[i] = [m.place_id for m in localizer.localize(frames[i], index=i).matches]
            except BaseException as exc:  # surfaced below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(o,)) for o in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        assert [results[i] for i in range(len(frames))] == alone

    with Localizer.open(model, map_dir, config=LocalizerConfig(temporal=TemporalConfig())) as localizer:
        seen: list[int] = []
        lock = threading.Lock()

        def feed(part: list[np.ndarray]) -> None:
            for f in part:
                loc = localizer.localize(f)
                with lock:
                    seen.append(loc.index)

        threads = [threading.Thread(target=feed, args=(frames[o::3],)) for o in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(seen) == list(range(len(frames)))  # one sequence, every frame numbered once
        assert localizer._stream.sequence.frames == TemporalConfig().frames  # a full window, nothing lost


def test_a_live_model_waits_for_a_fresher_frame_only_when_it_comes_sooner():
    """Live, a model slower than the camera: the waiting frame is taken unless it is older than half the
    frame period, when the next frame (due in period - age) gives a fresher result sooner."""
    from runtime.localize.pipeline import FramePeriod, wait_for_newer_s

    assert wait_for_newer_s(0.010, None) == 0.0  # the period is not known yet
    assert wait_for_newer_s(0.010, 1 / 30) == 0.0  # 10 ms old, the next one is 23 ms away
    assert wait_for_newer_s(0.025, 1 / 30) == pytest.approx(1 / 30 - 0.025)  # 25 ms old, next in 8 ms
    assert wait_for_newer_s(0.050, 1 / 30) == 0.0  # older than a period: the next one is late, take it
    pace = FramePeriod(weight=0.5)
    for t in (0.0, 0.1, 0.2, 0.4):
        pace.see(t)
    assert pace.period_s == pytest.approx(0.15)  # 0.1, then (0.1 + 0.1) / 2, then (0.1 + 0.2) / 2
