"""CLIP BPE from the open-clip-torch wheel, run offline by HF tokenizers: CLIP's own ids."""

from data.loading.tokenizer import get_tokenizer


def test_known_clip_ids():
    tok = get_tokenizer(12)
    ids = tok("A photo of a CAT")[0].tolist()
    # <start> a photo of a cat <end>, then padding: the ids CLIP's reference tokenizer gives
    assert ids == [49406, 320, 1125, 539, 320, 2368, 49407, 0, 0, 0, 0, 0]
    assert tok.vocab_size == 49408


def test_truncation_keeps_the_end_token_and_decode_round_trips():
    tok = get_tokenizer(6)
    row = tok("one two three four five six seven")[0].tolist()
    assert len(row) == 6 and row[0] == 49406 and row[-1] == 49407
    assert tok.decode(get_tokenizer(32)("thumbs up: medium skin tone")[0]) == "thumbs up : medium skin tone"
