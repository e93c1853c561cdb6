"""Text sources, the byte-level BPE, packed text shards and SFT pair shards, the token loader."""

import json

import numpy as np
import pytest

from data.loading.loader import LoaderSpec, TrainStream
from data.loading.shard_reading import token_batches
from data.reading.sources import SourceError
from data.text.bpe import load_tokenizer, train_bpe
from data.text.text_demo import parse_wordnet_data
from data.text.text_sources import list_documents, list_pairs
from data.writing.sharder import shard_urls
from pipelines.config import TextDataConfig

WORDS = (
    "the quick brown fox jumps over the lazy dog while a merry band of players rehearse "
    "their lines beneath an old oak tree and the moon rises slowly over the quiet hills"
).split()


def doc(i: int, n: int = 400) -> str:
    rng = np.random.default_rng(i)
    return " ".join(rng.choice(WORDS, n)) + f" (document {i})."


@pytest.fixture()
def corpus(tmp_path):
    src = tmp_path / "corpus"
    (src / "sub").mkdir(parents=True)
    for i in range(12):
        (src / ("sub" if i % 2 else ".") / f"doc{i:02d}.txt").write_text(doc(i))
    (src / "copy.txt").write_text(doc(3))  # a duplicate of doc03
    (src / "empty.md").write_text("")
    (src / "ignored.bin").write_bytes(b"\x00\x01")
    return src


def test_bpe_round_trips_and_has_the_special_tokens():
    tok = train_bpe([doc(i) for i in range(5)] + ["Ünïcødé ✓ text"], vocab_size=300)
    assert tok.vocab_size <= 300 and tok.eos_id != tok.mask_id
    for text in (doc(7), "Ünïcødé ✓ text", "unseen wörds: 42!\n\tindented"):
        assert tok.decode(tok.encode(text)) == text  # byte-level: nothing is unknown
    ids = tok.encode("the fox") + [tok.mask_id, tok.eos_id] + tok.encode(" more")
    assert tok.decode(ids) == "the fox_ more"
    assert tok.decode(ids, stop_at_eos=True) == "the fox_"


def test_text_sources_name_the_bad_field(tmp_path):
    table = tmp_path / "docs.jsonl"
    table.write_text(json.dumps({"body": "x"}) + "\n")
    with pytest.raises(SourceError, match="no column 'text' \\(text.text_column\\)"):
        list_documents(str(table))
    assert list_documents(str(table), "body") == [{"key": "0", "text": "x"}]
    with pytest.raises(SourceError, match="text.response_column"):
        list_pairs(str(table), "body", "answer")
    with pytest.raises(SourceError, match="does not exist"):
        list_documents(str(tmp_path / "missing"))


def test_wordnet_lines_become_definition_pairs():
    text = (
        "  1 This software and database is being provided\n"
        '00001740 03 n 01 entity 0 003 ~ 00001930 n 0000 | that which is perceived; "some example"\n'
        "00002137 00 a 02 long(a) 0 lengthy 0 000 | primarily temporal sense; being long  \n"
    )
    assert parse_wordnet_data(text, "noun")[0] == {
        "prompt": "Define entity (noun):",
        "response": "that which is perceived",
        "synset": "noun-00001740",
    }
    assert parse_wordnet_data(text, "adj")[1]["prompt"] == "Define long (adjective):"


def test_text_shards_pack_documents_with_eos(ray_local, corpus, tmp_path):
    from data.text.text_sharder import shard_text

    cfg = TextDataConfig(source=str(corpus), vocab_size=300, seq_len=32, holdout_fraction=0.25, shard_chars=5000)
    out = tmp_path / "shards"
    m = shard_text(cfg, str(out))
    assert m["input_documents"] == 14
    assert m["rejected"] == {"duplicate": 1, "too_short": 1}
    tr, ev = m["splits"]["train"], m["splits"]["eval"]
    assert tr["documents"] + ev["documents"] == 12 and ev["documents"] >= 1
    assert len(tr["shards"]) > 1
    for split in (tr, ev):
        assert split["tokens"] == split["samples"] * 32
    tok = load_tokenizer(str(out / "tokenizer.json"))
    seqs = np.concatenate(
        [b["tokens"].numpy().reshape(-1) for b in token_batches(shard_urls(out / "manifest.json", "train"), 7)]
    )
    assert len(seqs) == tr["tokens"]
    # the stream of the first shard is its documents, each ended by EOS, in order
    first = np.concatenate(
        [b["tokens"].numpy().reshape(-1) for b in token_batches([str(out / tr["shards"][0]["name"])], 50)]
    )
    texts = tok.decode(first).split("(document ")
    assert len(texts) > 2 and all(t.split(").")[0].isdigit() for t in texts[1:])
    assert int((first == tok.eos_id).sum()) >= 1
    counts = json.loads((out / m["train_token_counts"]).read_text())
    assert sum(counts) == tr["tokens"]
    again = shard_text(cfg, str(out))  # a rerun reuses tokenizer and shards
    assert again["shards_written"] == 0 and again["splits"]["train"]["tokens"] == tr["tokens"]


def test_sft_pairs_keep_the_prompt_length_and_reject_what_does_not_fit(ray_local, tmp_path):
    from data.text.text_sharder import shard_pairs

    tok = train_bpe([doc(i) for i in range(5)], vocab_size=300)
    (tmp_path / "tokenizer.json").write_text(tok.json)
    rows = [{"prompt": f"Define word{i}:", "response": " ".join(WORDS[i % 25 : i % 25 + 3])} for i in range(40)]
    rows += [
        {"prompt": "Define long:", "response": " ".join(WORDS * 3)},
        {"prompt": "", "response": "x"},
        dict(rows[0]),
    ]
    table = tmp_path / "pairs.jsonl"
    table.write_text("\n".join(json.dumps(r) for r in rows))
    cfg = TextDataConfig(sft_source=str(table), sft_seq_len=32, holdout_fraction=0.2, shard_sequences=16)
    m = shard_pairs(cfg, str(tmp_path / "sft"), str(tmp_path / "tokenizer.json"))
    assert m["rejected"] == {"duplicate": 1, "empty": 1, "too_long": 1}
    assert m["splits"]["train"]["samples"] + m["splits"]["eval"]["samples"] == 40
    batch = next(token_batches(shard_urls(tmp_path / "sft" / "manifest.json", "train"), 64))
    by_prompt = {r["prompt"]: r["response"] for r in rows}
    for x, plen in zip(batch["tokens"], batch["prompt_len"]):
        prompt = tok.decode(x[:plen])
        assert tok.decode(x[plen:], stop_at_eos=True) == by_prompt[prompt]
        assert x[-1] == tok.eos_id  # padded with EOS


def test_train_stream_yields_token_batches(ray_local, corpus, tmp_path):
    from data.text.text_sharder import shard_text

    shard_text(TextDataConfig(source=str(corpus), vocab_size=300, seq_len=16, shard_chars=5000), str(tmp_path / "s"))
    urls = tuple(shard_urls(tmp_path / "s" / "manifest.json", "train"))
    spec = LoaderSpec(urls=urls, batch_size=8, image_size=0, epoch_samples=40, tokens=True, shuffle_buffer=50)
    batches = list(TrainStream(spec))
    assert len(batches) == 5
    assert all(b["tokens"].shape == (8, 16) and b["tokens"].dtype.is_floating_point is False for b in batches)
    resumed = list(TrainStream(spec, start=3))  # a resume rebuilds the same batches
    assert all((a["tokens"] == b["tokens"]).all() for a, b in zip(batches[3:], resumed))
