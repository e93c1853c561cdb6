"""The text sharder as one streaming pass: planned by ranges, repeats across shards removed exactly
(the packed streams re-cut), a rerun reads nothing, a lost shard is rewritten alone, S3 in and out,
the SFT sample and its repeats."""

import json

import numpy as np
import pytest

from data.loading.shard_reading import token_batches
from data.text.bpe import load_tokenizer
from data.text.text_sources import plan_documents
from data.writing.sharder import shard_urls
from pipelines.config import TextDataConfig
from tests.test_text_data import doc

SEQ = 16


def _write_jsonl(path, texts):
    path.write_text("".join(json.dumps({"text": t, "n": i}) + "\n" for i, t in enumerate(texts)))
    return path


def _streams(out, manifest, split="train"):
    """{shard name: (its whole token stream: sequences then the sidecar's tail, its hashes rows)}."""
    import pyarrow.parquet as pq

    got = {}
    for s in manifest["splits"][split]["shards"]:
        name = s["name"][:-4]
        sidecar = json.loads((out / f"{name}.json").read_text())
        seqs = (
            [b["tokens"].numpy().reshape(-1) for b in token_batches([str(out / s["name"])], 64)] if s["samples"] else []
        )
        stream = np.concatenate(seqs + [np.asarray(sidecar["tail"], dtype=np.int64)])
        got[name] = stream, pq.read_table(out / f"{name}.hashes.parquet").to_pylist()
    return got


@pytest.mark.parametrize("shuffle", [False, True])
def test_repeats_across_shards_are_cut_out_of_the_packed_streams_exactly(ray_local, tmp_path, shuffle, monkeypatch):
    if shuffle:  # the Ray Data shuffle that large jobs use, not the driver's pass of small ones
        monkeypatch.setattr("data.writing.dedup.DRIVER_ROWS", 0)
    texts = [doc(i, 60) for i in range(30)]
    texts[17] = texts[2]  # a repeat in a later task
    texts[25] = texts[2]  # and another
    texts[29] = texts[11]
    texts[1] = texts[0]  # a repeat inside the first task
    src = _write_jsonl(tmp_path / "corpus.jsonl", texts)
    cfg = TextDataConfig(source=str(src), vocab_size=300, seq_len=SEQ, holdout_fraction=0.2, shard_chars=1200)
    plan = plan_documents(cfg.source, "text", cfg.shard_chars)
    assert plan.table is not None and not plan.listed and plan.tasks >= 5  # ranges of rows, no rows
    assert plan.ranges[0][1] >= 2  # rows 0 and 1 in one task
    out = tmp_path / "shards"
    from data.text.text_sharder import shard_text

    m = shard_text(cfg, str(out))
    assert m["input_documents"] == 30
    assert m["rejected"] == {"duplicate": 4} and m["duplicates_across_shards"] == 3
    kept = m["splits"]["train"]["documents"] + m["splits"]["eval"]["documents"]
    assert kept == 26
    tok = load_tokenizer(str(out / "tokenizer.json"))
    seen = set()
    for split in ("train", "eval"):
        for name, (stream, rows) in _streams(out, m, split).items():
            # the stream is exactly its documents' tokens, each ended by EOS, in input order
            expect = [t for r in rows for t in tok.encode(texts[r["order"]]) + [tok.eos_id]]
            assert stream.tolist() == expect, name
            assert [r["order"] for r in rows] == sorted(r["order"] for r in rows)
            seen.update(texts[r["order"]] for r in rows)
    assert len(seen) == 26  # every distinct text once, in one split
    # the first occurrence (input order) is the one kept
    orders = {r["order"] for split in ("train", "eval") for _, rows in _streams(out, m, split).values() for r in rows}
    assert {0, 2, 11} <= orders and not {1, 17, 25, 29} & orders
    counts = json.loads((out / m["train_token_counts"]).read_text())
    assert sum(counts) == m["splits"]["train"]["tokens"]
    again = shard_text(cfg, str(out))
    assert again["shards_written"] == 0 and again["rejected"] == m["rejected"]
    assert again["splits"] == m["splits"]


def test_a_rerun_reads_no_document_and_a_lost_shard_is_rewritten_alone(ray_local, tmp_path):
    from data.text.text_sharder import shard_text

    src = tmp_path / "corpus"
    src.mkdir()
    for i in range(16):
        (src / f"doc{i:02d}.txt").write_text(doc(i, 100))
    cfg = TextDataConfig(source=str(src), vocab_size=300, seq_len=SEQ, holdout_fraction=0.25, shard_chars=2000)
    out = tmp_path / "shards"
    m = shard_text(cfg, str(out))
    tasks = len(m["splits"]["train"]["shards"])
    assert tasks >= 4 and m["shards_written"] == 2 * tasks
    for p in src.iterdir():  # the documents change: a rerun must not read them
        p.write_text("changed " * 50)
    again = shard_text(cfg, str(out))
    assert again["shards_written"] == 0 and again["splits"] == m["splits"]
    for p in src.iterdir():
        p.write_text(doc(int(p.stem[3:]), 100))
    lost = m["splits"]["train"]["shards"][1]["name"][:-4]
    (out / f"{lost}.json").unlink()  # a task cut short: its train sidecar never written
    redo = shard_text(cfg, str(out))
    assert redo["shards_written"] == 2 and redo["splits"] == m["splits"]  # the same bytes (sha256)


def test_a_parquet_corpus_in_s3_is_sharded_into_s3(ray_local, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from data.text.text_sharder import shard_text
    from data.writing.shard_io import read_manifest
    from infra.storage import s3_client

    bucket = "text-scale"
    s3_client().create_bucket(Bucket=bucket)
    texts = [doc(i, 50) for i in range(40)] + [""]
    local = tmp_path / "corpus.parquet"
    pq.write_table(pa.table({"body": texts}), local, row_group_size=7)
    s3_client().upload_file(str(local), bucket, "corpus.parquet")
    cfg = TextDataConfig(
        source=f"s3://{bucket}/corpus.parquet", text_column="body", vocab_size=300, seq_len=SEQ, shard_chars=2500
    )
    m = shard_text(cfg, f"s3://{bucket}/shards")
    assert m["input_documents"] == 41 and m["rejected"] == {"too_short": 1}
    assert len(m["splits"]["train"]["shards"]) >= 5
    assert read_manifest(f"s3://{bucket}/shards/manifest.json") == m
    urls = shard_urls(f"s3://{bucket}/shards/manifest.json", "train")
    assert sum(len(b["tokens"]) for b in token_batches(urls, 32)) == m["splits"]["train"]["samples"]


def test_bad_text_columns_and_an_empty_corpus_are_named_before_any_shard(ray_local, tmp_path):
    from data.reading.sources import SourceError
    from data.text.text_sharder import shard_text

    src = _write_jsonl(tmp_path / "c.jsonl", [doc(1, 20)])
    with pytest.raises(SourceError, match="no column 'body' \\(text.text_column\\)"):
        shard_text(TextDataConfig(source=str(src), text_column="body"), str(tmp_path / "a"))
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(SourceError, match="not UTF-8 text .* line 2"):
        shard_text(TextDataConfig(source=str(bad)), str(tmp_path / "b"))
    short = _write_jsonl(tmp_path / "short.jsonl", ["a", "b", "a"])
    with pytest.raises(ValueError, match="no training documents left \\(3 read, rejected .*too_short"):
        shard_text(TextDataConfig(source=str(short), min_chars=5), str(tmp_path / "c"))
    assert not (tmp_path / "c").exists() or not list((tmp_path / "c").glob("*.tar"))


def test_the_sft_sample_is_exact_and_its_repeats_across_shards_are_removed(ray_local, tmp_path):
    from data.text.bpe import train_bpe
    from data.text.text_sharder import shard_pairs

    tok = train_bpe([doc(i) for i in range(5)], vocab_size=300)
    (tmp_path / "tokenizer.json").write_text(tok.json)
    rows = [{"prompt": f"Define word{i}:", "response": f"meaning {i}"} for i in range(200)]
    for i in (60, 120, 190):
        rows[i] = dict(rows[5])  # repeats in later tasks
    table = tmp_path / "pairs.jsonl"
    table.write_text("\n".join(json.dumps(r) for r in rows))
    cfg = TextDataConfig(sft_source=str(table), sft_seq_len=32, holdout_fraction=0.2, shard_sequences=40)
    m = shard_pairs(cfg, str(tmp_path / "all"), str(tmp_path / "tokenizer.json"))
    assert m["rejected"] == {"duplicate": 3} and m["duplicates_across_shards"] == 3
    assert m["splits"]["train"]["samples"] + m["splits"]["eval"]["samples"] == 197
    keys = [
        k
        for s in ("train", "eval")
        for b in token_batches(shard_urls(tmp_path / "all" / "manifest.json", s), 500)
        for k in b["keys"]
    ]
    assert len(keys) == 197 and not any(k.endswith(("-060", "-120", "-190")) for k in keys)
    sample = shard_pairs(
        TextDataConfig(sft_source=str(table), sft_seq_len=32, shard_sequences=40, sft_limit=50),
        str(tmp_path / "some"),
        str(tmp_path / "tokenizer.json"),
    )
    assert sample["sampled_pairs"] == 50
    assert sample["splits"]["train"]["samples"] + sample["splits"]["eval"]["samples"] + sample["rejected_total"] == 50


def test_a_text_value_that_is_not_text_is_one_reject_never_its_repr(ray_local, tmp_path):
    from data.text.text_sharder import shard_text

    lines = [json.dumps({"text": doc(i, 40)}) for i in range(6)] + [
        json.dumps({"text": ["a", "list"]}),
        json.dumps({"text": 42}),
        json.dumps({"text": {"a": "b"}}),
        "{not json",
        "[1, 2]",
    ]
    src = tmp_path / "mixed.jsonl"
    src.write_text("\n".join(lines) + "\n")
    m = shard_text(TextDataConfig(source=str(src), holdout_fraction=0.0, seq_len=SEQ), str(tmp_path / "out"))
    assert m["rejected"] == {"not_text": 3, "bad_record": 2}, m["rejected"]
    assert m["splits"]["train"]["documents"] == 6
