"""The threads of a streamed pass (tokcal.distributed.workers): shards cover the data in order, each thread's
sums merged in storage order give the one-thread evaluation, and errors and progress reach the caller."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from tokcal import TokenTable, evaluate
from tokcal.distributed.stats import evaluate_stream
from tokcal.distributed.workers import ShardWorkers, rows_before, shards
from tokcal.errors import SchemaError
from tokcal.synthetic import make_table


@pytest.fixture(scope="module")
def table():
    return make_table(9000, 300, domains={"a": 0.7, "b": 1.4}, seq_len=45, top_k=8, seed=11)


def write_parts(t: TokenTable, d, rows: list[int]):
    d.mkdir()
    start = 0
    for i, n in enumerate(rows):
        t.select(np.arange(start, start + n)).write_parquet(d / f"part-{i:02d}.parquet", row_group_size=1000)
        start += n
    return d


def rows_of(plan) -> list[int]:
    out = []
    for shard in plan:
        n = 0
        for f, groups in shard:
            md = pq.ParquetFile(f).metadata
            n += sum(md.row_group(g).num_rows for g in (range(md.num_row_groups) if groups is None else groups))
        out.append(n)
    return out


def test_shards_cover_the_data_in_order_and_balance_it(table, tmp_path):
    d = write_parts(table, tmp_path / "ds", [3000, 500, 500, 2000, 3000])
    files = sorted(d.glob("*.parquet"))
    for n in (1, 2, 3, 5):  # at least n files: whole files, by bytes
        plan = shards(d, n)
        assert 1 <= len(plan) <= n and all(plan)
        assert [f for shard in plan for f, g in shard] == files and all(g is None for s in plan for _, g in s)
    plan = shards(d, 9)  # fewer files than threads: their 9 row groups, by rows
    assert len(plan) <= 9 and sum(rows_of(plan)) == 9000
    assert [(f, g) for shard in plan for f, gs in shard for g in gs] == \
        [(f, g) for f in files for g in range(pq.ParquetFile(f).metadata.num_row_groups)]
    one = tmp_path / "one.parquet"
    table.write_parquet(one, row_group_size=1000)  # one file: split by its 9 row groups of 1000 rows
    for n in (2, 3, 4):
        plan = shards(one, n)
        assert [g for shard in plan for _, gs in shard for g in gs] == list(range(9))
        sizes = rows_of(plan)
        assert sum(sizes) == 9000 and max(sizes) - min(sizes) <= 1000
    (last_seq, last_lab) = rows_before(shards(one, 3)[0], ("sequence_id", "label"), 30)
    np.testing.assert_array_equal(last_seq, table.sequence_id[2970:3000])
    np.testing.assert_array_equal(last_lab, table.label[2970:3000])
    assert rows_before([], ("label",), 5)[0].size == 0


@pytest.mark.parametrize("workers", [2, 4])
def test_threads_of_one_file_equal_the_in_memory_evaluation(table, tmp_path, workers):
    path = tmp_path / "t.parquet"
    table.write_parquet(path, row_group_size=700)
    a = evaluate(table, bootstrap=40, seed=2).to_dict()
    b = evaluate_stream(path, bootstrap=40, seed=2, batch_rows=500, workers=workers).to_dict()
    assert len(b["worst_tokens"]) == len(a["worst_tokens"]) > 0
    for x, y in zip(a["worst_tokens"], b["worst_tokens"], strict=True):  # contexts across shard boundaries too
        assert {k: v for k, v in x.items() if not isinstance(v, float)} == \
            {k: v for k, v in y.items() if not isinstance(v, float)}
        assert all(y[k] == pytest.approx(v, rel=1e-12, abs=1e-15) for k, v in x.items() if isinstance(v, float))
    assert b["passage"] == a["passage"] and b["table_fingerprint"] == a["table_fingerprint"]
    for k, v in a["overall"].items():
        if k not in ("aurc",) and isinstance(v, float):
            assert b["overall"][k] == pytest.approx(v, rel=1e-12, abs=1e-12), k


def test_a_damaged_part_read_by_a_thread_is_a_clear_error(table, tmp_path):
    d = write_parts(table, tmp_path / "ds", [3000, 3000, 3000])
    bad = d / "part-02.parquet"
    raw = bytearray(bad.read_bytes())
    col = pq.ParquetFile(bad).metadata.row_group(1).column(4)  # top_logits of the second row group
    raw[col.data_page_offset + col.total_compressed_size // 2] ^= 0x40
    bad.write_bytes(bytes(raw))
    with pytest.raises(SchemaError, match="part-02.parquet"):
        evaluate_stream(d, bootstrap=0, workers=3)


def test_progress_of_the_threads_reaches_the_total_in_order(table, tmp_path):
    d = write_parts(table, tmp_path / "ds", [3000, 3000, 3000])
    calls = []
    evaluate_stream(d, bootstrap=10, workers=3, progress=lambda *c: calls.append(c))
    reads = [done for step, done, total in calls if step == "read"]
    assert reads[0] == 0 and reads[-1] == 9000 and reads == sorted(reads)


def test_workers_stop_when_closed_before_running(table, tmp_path):
    d = write_parts(table, tmp_path / "ds", [3000, 3000])
    with ShardWorkers(shards(d, 2), batch_rows=200, backlog=2) as pool:
        assert len(pool) == 2  # the threads read ahead, then are stopped without running anything
    assert all(not t.is_alive() for t in pool._threads)
