"""The streaming loader: deterministic windows, the same blocks with any number of workers,
lanes that make the global batch independent of the process count, O(1) resume."""

from collections import Counter

import numpy as np
import pytest
import torch

from mmllm.data.packing import Document
from mmllm.data.stream import BlockStream, MixturePlan, WindowSource


def fake_render(draws: np.ndarray, epoch: int) -> tuple[list[Document], Counter]:
    """A document per draw whose tokens and length depend on (source, row, copy, epoch);
    rows 13 of every source are 'missing' (skipped, as rows without cached audio)."""
    documents, skipped = [], Counter()
    for source, row, copy in draws.tolist():
        if row == 13:
            skipped[source] += 1
            continue
        length = 3 + (row * 7 + copy + epoch) % 20
        ids = [(source * 1000 + row * 10 + copy + epoch + i) % 97 for i in range(length)]
        documents.append(Document(ids, [True] * length, name=f"{source}:{row}:{copy}"))
    return documents, skipped


PLAN = MixturePlan({"asr": 50, "ks": 30, "text": 40}, {"asr": 1.0, "ks": 2.5, "text": 0.5}, seed=3)


def source(lanes: int, window: int = 16) -> WindowSource:
    return WindowSource(PLAN, fake_render, block_size=32, pad_id=0, lanes=lanes, window=window)


def as_lists(blocks) -> list[tuple]:
    return [(tuple(b.input_ids.tolist()), tuple(b.labels.tolist())) for b in blocks]


def test_plan_draws_are_seeded_passes():
    first, again = PLAN.epoch_draws(0), PLAN.epoch_draws(0)
    assert np.array_equal(first, again) and not np.array_equal(first, PLAN.epoch_draws(1))
    assert len(first) == PLAN.draws_per_epoch == 50 + 75 + 20
    sources = dict(enumerate(PLAN.sources))
    per_row = Counter((sources[s], r) for s, r, _ in first.tolist())
    assert sorted(set(per_row[("ks", r)] for r in range(30))) == [2, 3]  # 2.5 passes
    assert all(per_row[("asr", r)] == 1 for r in range(50))
    # copies number a row's draws 0, 1, 2 within the epoch
    ks = [(r, c) for s, r, c in first.tolist() if sources[s] == "ks"]
    assert {c for r, c in ks if r == 0} in ({0, 1}, {0, 1, 2})
    assert MixturePlan({"asr": 10}, {"asr": 0.2}, 0).draws_per_epoch == 2
    three = PLAN.epoch_draws(3)
    assert len({r for s, r, c in three.tolist() if sources[s] == "text"}) == 20  # half of 40
    with pytest.raises(ValueError, match="draws no rows"):
        MixturePlan({"asr": 0}, {"asr": 1.0}, 0)


@pytest.mark.parametrize("workers", [0, 2])
def test_the_same_blocks_with_any_number_of_workers(workers):
    reference = BlockStream(source(1), [0])
    stream = BlockStream(source(1), [0], workers=workers)
    for _ in range(12):  # several windows and an epoch boundary (145 draws / 16 per window)
        assert as_lists(stream.take(5)) == as_lists(reference.take(5))
    assert stream.skipped == reference.skipped and sum(stream.skipped.values()) > 0


def test_a_window_holds_every_drawn_document_once():
    stream = BlockStream(source(1, window=1000), [0])  # one window per epoch
    blocks = stream.take_lane(0, 1)
    blocks += stream.take_lane(0, len(stream._current[0]) - 1)
    names = Counter(name for b in blocks for name in b.names)
    drawn = Counter(f"{s}:{r}:{c}" for s, r, c in PLAN.epoch_draws(0).tolist() if r != 13)
    assert names == drawn  # every draw but the skipped rows, each once
    assert stream.state() == {"0": [1, 0]}  # the window is used up: the next one's start


def test_lanes_give_one_global_batch_for_one_or_two_processes():
    per_lane = 3
    one = BlockStream(source(2), [0, 1])
    two = [BlockStream(source(2), [0]), BlockStream(source(2), [1])]
    for _ in range(10):
        together = as_lists(one.take(per_lane))
        apart = as_lists(two[0].take(per_lane)) + as_lists(two[1].take(per_lane))
        assert together == apart


def test_resume_from_a_saved_position_continues_exactly():
    uninterrupted = BlockStream(source(2), [0, 1])
    steps = [as_lists(uninterrupted.take(3)) for _ in range(25)]
    stream = BlockStream(source(2), [0, 1])
    for _ in range(11):
        stream.take(3)
    state = stream.state()
    assert any(used for _, used in state.values())  # mid-window
    resumed = BlockStream(source(2), [0, 1], state=state, workers=1)
    assert [as_lists(resumed.take(3)) for _ in range(14)] == steps[11:]
    with pytest.raises(ValueError, match="no position for lanes"):
        BlockStream(source(2), [0, 1], state={"0": [0, 0]})


def test_blocks_carry_features_through_windows():
    def render(draws, epoch):
        docs, skipped = fake_render(draws, epoch)
        for d in docs:
            d.features = np.full((2, 3), len(d.input_ids), dtype=np.float32)
        return docs, skipped

    stream = BlockStream(WindowSource(PLAN, render, 32, 0, 1, 16), [0], workers=1)
    for block in stream.take(6):
        lengths = [int((block.document_ids == i).sum()) for i in range(len(block.names))]
        assert torch.equal(block.features[:, 0], torch.tensor(lengths).repeat_interleave(2).float())
