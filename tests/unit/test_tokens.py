import numpy as np
import pytest

from solo.tokens.shards import LoaderState, ShardLoader, ShardWriter, TokenShards, is_validation, pack


def write_rows(folder, rows=40, seq_len=8, rows_per_shard=7):
    rng = np.random.default_rng(0)
    documents = [rng.integers(1, 100, size=int(rng.integers(3, 20))).tolist() for _ in range(rows * seq_len // 5)]
    packed, _ = pack(documents, eos_id=0, seq_len=seq_len, dtype=np.dtype(np.uint16))
    writer = ShardWriter(folder, seq_len, np.dtype(np.uint16), rows_per_shard)
    for row in packed[:rows]:
        writer.add(row)
    return writer.close()


def test_packing_keeps_every_token_in_order_with_eos_between_documents(tmp_path):
    rows, tail = pack([[1, 2, 3], [4, 5], [6, 7, 8, 9, 10]], eos_id=0, seq_len=4, dtype=np.dtype(np.uint16))
    assert rows.tolist() == [[1, 2, 3, 0], [4, 5, 0, 6], [7, 8, 9, 10]] and tail.tolist() == [0]
    writer = ShardWriter(tmp_path, seq_len=4, dtype=np.dtype(np.uint16), rows_per_shard=2)
    for row in rows:
        writer.add(row)
    writer.documents = 3
    index = writer.close()
    shards = TokenShards(tmp_path)
    tokens, labels = shards.rows(np.arange(len(shards)))
    assert tokens.ravel().tolist() == [1, 2, 3, 0, 4, 5, 0, 6, 7, 8, 9, 10]
    assert (labels == tokens).all()
    assert index["documents"] == 3 and index["rows"] == 3 and len(index["shards"]) == 2


def test_workers_get_disjoint_slices_and_together_cover_the_epoch(tmp_path):
    write_rows(tmp_path, rows=48)
    shards = TokenShards(tmp_path)
    seen = []
    for rank in range(2):
        loader = iter(ShardLoader(shards, rank, workers=2, micro_batch=3, seed=1))
        rows = [next(loader)[0] for _ in range(len(shards) // 6)]
        seen.append({tuple(r) for batch in rows for r in batch})
    assert not seen[0] & seen[1]
    # An epoch is whole global batches (2 workers × 3 rows); a remainder waits for the next epoch.
    all_rows = {tuple(r) for r in shards.rows(np.arange(len(shards)))[0]}
    assert seen[0] | seen[1] <= all_rows
    assert len(seen[0] | seen[1]) == len(shards) // 6 * 6


def test_resume_continues_at_the_next_unseen_row(tmp_path):
    write_rows(tmp_path, rows=40)
    shards = TokenShards(tmp_path)
    straight = iter(ShardLoader(shards, 0, workers=1, micro_batch=4, seed=3))
    expected = [next(straight)[0] for _ in range(15)]  # crosses an epoch boundary
    first = ShardLoader(shards, 0, workers=1, micro_batch=4, seed=3)
    it = iter(first)
    for _ in range(6):
        next(it)
    state = LoaderState(**vars(first.state))
    resumed = iter(ShardLoader(shards, 0, workers=1, micro_batch=4, seed=3, state=state))
    for want in expected[6:]:
        assert (next(resumed)[0] == want).all()


def test_validation_split_is_by_document_and_stable():
    ids = [f"doc{i}" for i in range(2000)]
    val = [i for i in ids if is_validation(i, 0.1)]
    assert 120 < len(val) < 280
    assert val == [i for i in ids if is_validation(i, 0.1)]


def numbered_rows(folder, rows, seq_len=4):
    """Row i holds i everywhere, so a batch says exactly which rows it is."""
    writer = ShardWriter(folder, seq_len, np.dtype(np.uint16), rows_per_shard=7)
    for i in range(rows):
        writer.add(np.full(seq_len, i))
    writer.close()
    return TokenShards(folder)


def take(shards, workers, micro_batch, steps, state=None, seed=5):
    """Row numbers each global micro-batch gives, all ranks together, and the state after them."""
    loaders = [ShardLoader(shards, rank, workers, micro_batch, seed,
                           state=LoaderState(**vars(state)) if state else None) for rank in range(workers)]
    its = [iter(loader) for loader in loaders]
    steps_taken = [[int(row[0]) for it in its for row in next(it)[0]] for _ in range(steps)]
    return steps_taken, loaders[0].state


@pytest.mark.parametrize("workers, micro_batch", [(3, 2), (1, 4), (4, 1)])
def test_resume_on_a_different_worker_count_continues_at_the_next_unseen_row(tmp_path, workers, micro_batch):
    shards = numbered_rows(tmp_path, rows=27)
    before, state = take(shards, workers=2, micro_batch=3, steps=2)  # 12 rows of epoch 0 seen
    order = np.random.default_rng([5, 0]).permutation(27).tolist()
    assert [r for step in before for r in step] == order[:12]

    global_micro = workers * micro_batch
    in_epoch = (27 - 12) // global_micro
    after, _ = take(shards, workers, micro_batch, steps=in_epoch + 2, state=state)
    rest_of_epoch = [r for step in after[:in_epoch] for r in step]
    assert rest_of_epoch == order[12:12 + in_epoch * global_micro]  # next unseen rows, each once
    assert not set(rest_of_epoch) & set(order[:12])
    # The next epoch is what a fresh run on the new worker count sees.
    fresh, _ = take(shards, workers, micro_batch, steps=2, state=LoaderState(epoch=1, position=0))
    assert after[in_epoch:] == fresh
