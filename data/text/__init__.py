"""Text corpora: listing and reading documents, the byte-level BPE, packing into token shards,
prompt/response pairs."""
