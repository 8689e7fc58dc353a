"""The tokenize stage on a private Ray: blocks packed in parallel tasks, their tails packed by the
driver, so the shards hold every token but the last partial row, split by document, and a
rerun writes the same bytes."""

import hashlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from solo.data import corpus
from solo.tokens import tokenizer as tok
from solo.tokens.shards import TokenShards, is_validation
from solo.tokens.tokenize import tokenize

pytestmark = pytest.mark.integration

SEQ_LEN, VAL_FRACTION = 64, 0.2


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, tiny_model_dir):
    """80 documents in 4 parquet files, as the data stage writes them."""
    folder = tmp_path_factory.mktemp("prepared")
    documents = [{"id": d["id"], "text": d["text"][:2000]} for d in corpus.documents(max_documents=80)]
    for i in range(0, len(documents), 20):
        pq.write_table(pa.Table.from_pylist(documents[i:i + 20]), folder / f"part_{i // 20}.parquet")
    return folder, documents, tok.load(tiny_model_dir)


def run(prepared, output: Path) -> dict:
    folder, _, tokenizer = prepared
    return tokenize(folder, tokenizer, output, SEQ_LEN, VAL_FRACTION, rows_per_shard=5,
                    progress=lambda _: None, batch_size=8)  # 10 blocks: many tails to join


@pytest.fixture(scope="module")
def first_run(ray_local, prepared, tmp_path_factory):
    output = tmp_path_factory.mktemp("tokens")
    return output, run(prepared, output)


def test_every_token_is_kept_but_the_last_partial_row_of_each_split(prepared, first_run):
    _, documents, tokenizer = prepared
    output, metrics = first_run
    for split in ("train", "val"):
        members = [d for d in documents if is_validation(d["id"], VAL_FRACTION) == (split == "val")]
        encoded = [tokenizer(d["text"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
                   for d in members]
        shards = TokenShards(output / split)
        # Tails of blocks are joined, not dropped: only one partial row per split is lost.
        assert len(shards) == sum(map(len, encoded)) // SEQ_LEN
        assert shards.index["documents"] == len(members)
        rows, _ = shards.rows(np.arange(len(shards)))
        stream = np.concatenate([np.asarray(e) for e in encoded])
        kept = np.bincount(rows.ravel(), minlength=len(tokenizer))
        assert (kept <= np.bincount(stream, minlength=len(tokenizer))).all(), "a token appeared that no document has"
        assert kept.sum() == len(shards) * SEQ_LEN
    assert metrics["tokens"] == sum(len(tokenizer(d["text"], add_special_tokens=False)["input_ids"]) + 1
                                    for d in documents)
    assert 0 < metrics["val_rows"] < metrics["train_rows"]


def test_a_rerun_writes_the_same_shards(prepared, first_run, tmp_path):
    def digest(folder: Path) -> dict[str, str]:
        return {f.relative_to(folder).as_posix(): hashlib.sha256(f.read_bytes()).hexdigest()
                for f in sorted(folder.rglob("*")) if f.is_file()}

    run(prepared, tmp_path / "again")
    first = digest(first_run[0])
    shards = [name for name in first if name.endswith(".npy")]
    assert {"train/index.json", "val/index.json"} <= set(first) and len(shards) >= 4, first  # it wrote rows
    assert digest(tmp_path / "again") == first
