"""tokcal.vocab on real tokenizer families built offline with the ``tokenizers`` library.

Each id's type is checked against an independent rule: the text comes from the tokenizer's *own*
decoder (``tokenizer.decoder.decode``, after an anchor piece so that no decoder strips a leading
space), not from tokcal's byte tables; its specials from the tokenizer's added tokens.
"""

from __future__ import annotations

import json
import unicodedata

import numpy as np
import pyarrow.parquet as pq
import pytest
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from tokcal import SchemaError, TokenTable
from tokcal.slices import TokenTypeSlice
from tokcal.synthetic import make_table
from tokcal.vocab import (
    CONVENTIONS,
    TOKEN_TYPES,
    Vocabulary,
    byte_level_spelling,
    detect_convention,
    type_counts,
)

CORPUS = [
    "In the beginning God created the heaven and the earth. And the earth was without form, and void; "
    "and darkness was upon the face of the deep.",
    "And God said, Let there be light: and there was light. And God saw the light, that it was good.",
    "The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs! 1234567890, 42.",
    "Calibration measures whether a model's confidence matches its accuracy, token by token.",
    "Ünïcödé text — with em dashes, “quotes”, café, naïve, 東京 and emoji 🙂 — survives tokenization.",
    "def f(x):\n\treturn x ** 2  # code\n\n",
]


def byte_level_bpe() -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(CORPUS * 3, trainers.BpeTrainer(
        vocab_size=420, special_tokens=["<|endoftext|>", "<pad>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return tok


def llama_style_bpe() -> Tokenizer:
    """Llama 2 / Mistral layout: <unk> <s> </s>, the 256 byte pieces <0x00>..<0xFF>, then BPE pieces
    over ``▁``-marked text, byte fallback for anything else."""
    base = Tokenizer(models.BPE())
    base.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="always", split=True)  # merges stay inside words
    base.train_from_iterator(CORPUS * 3, trainers.BpeTrainer(vocab_size=300, show_progress=False,
                                                             limit_alphabet=60))
    spec = json.loads(base.to_str())["model"]
    specials = ["<unk>", "<s>", "</s>"]
    vocab = {s: i for i, s in enumerate(specials + [f"<0x{b:02X}>" for b in range(256)])}
    for piece in sorted(spec["vocab"], key=spec["vocab"].get):
        vocab.setdefault(piece, len(vocab))
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in spec["merges"]]
    tok = Tokenizer(models.BPE(vocab, merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.add_special_tokens(specials)
    return tok


def unigram() -> Tokenizer:
    """T5-style SentencePiece Unigram with the Metaspace pre-tokenizer."""
    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator(CORPUS * 3, trainers.UnigramTrainer(
        vocab_size=200, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>", show_progress=False))
    return tok


def wordpiece() -> Tokenizer:
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator(CORPUS * 3, trainers.WordPieceTrainer(
        vocab_size=300, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"], show_progress=False))
    return tok


FAMILIES = {"byte-level": byte_level_bpe, "llama": llama_style_bpe, "unigram": unigram, "wordpiece": wordpiece}
EXPECTED_CONVENTION = {"byte-level": "byte-level", "llama": "sentencepiece", "unigram": "sentencepiece",
                       "wordpiece": "wordpiece"}
ANCHOR = {"byte-level": "a", "llama": "▁a", "unigram": "▁a", "wordpiece": "a"}
EOS = {"<|endoftext|>", "</s>", "[SEP]"}


def independent_type(tok: Tokenizer, family: str, i: int) -> str:
    """The type of id i from the tokenizer's own decoder and added tokens (module docstring)."""
    piece = tok.id_to_token(i)
    added = {int(k): v for k, v in tok.get_added_tokens_decoder().items()}
    if i in added and added[i].special:
        return "eos" if piece in EOS else "special"
    anchor = ANCHOR[family]
    base = tok.decoder.decode([anchor])
    full = tok.decoder.decode([anchor, piece])
    assert full.startswith(base), (piece, full, base)
    text = full[len(base):]
    partial = "\ufffd" in text  # the decoders' replacement for an incomplete UTF-8 character
    start = text[:1].isspace()
    body = text.lstrip()
    if family == "wordpiece":
        # WordPiece's decoder "cleans up" spaces before punctuation; the ## prefix is the word-start rule
        start, body = not piece.startswith("##"), text.strip()
    body = body.replace("\ufffd", "")
    if not body.strip() and not partial:
        return "whitespace" if (body or start) else "other"
    if partial or any(unicodedata.category(c).startswith("L") for c in body):
        return "word-initial" if start else "continuation"
    if body.strip().isdigit():
        return "digits"
    if all(unicodedata.category(c)[0] in "PS" or c.isspace() for c in body.strip()):
        return "punctuation"
    return "other"


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request):
    return request.param, FAMILIES[request.param]()


def test_every_id_has_the_independent_type(family):
    name, tok = family
    v = Vocabulary.from_tokenizer(tok)
    assert v.convention == EXPECTED_CONVENTION[name]
    assert v.size == tok.get_vocab_size(with_added_tokens=True)
    got = [v.token_type(i) for i in range(v.size)]
    want = [independent_type(tok, name, i) for i in range(v.size)]
    bad = [(i, tok.id_to_token(i), g, w) for i, (g, w) in enumerate(zip(got, want, strict=True)) if g != w]
    assert not bad, bad[:10]
    counts = type_counts(v)
    assert counts["word-initial"] > 10 and counts["continuation"] > 10, counts  # both sides are populated
    if name == "llama":
        assert v.token_type(vocab_id(tok, "<0x0A>")) == "whitespace"
        assert v.token_type(vocab_id(tok, "<0x41>")) == "continuation"  # 'A' without a word start
        assert v.token_type(vocab_id(tok, "<0xE6>")) == "continuation"  # a fragment of 東
        assert v.piece_bytes(vocab_id(tok, "<0xE6>")) == b"\xe6"


def vocab_id(tok: Tokenizer, piece: str) -> int:
    i = tok.token_to_id(piece)
    assert i is not None, piece
    return i


def test_decode_and_display_match_the_tokenizer(family):
    name, tok = family
    v = Vocabulary.from_tokenizer(tok)
    for text in CORPUS:
        ids = tok.encode(text).ids
        want = tok.decode(ids)
        got = v.decode(ids)
        if name in ("llama", "unigram"):
            got = got[1:] if got.startswith(" ") else got  # the tokenizer strips the first ▁'s space
        if name == "wordpiece":  # the decoder's cleanup glues punctuation; compare without spaces
            got, want = got.replace(" ", ""), want.replace(" ", "")
        assert got == want
        starts = v.starts_word(ids)
        if name != "wordpiece":
            # every word of the text begins at a token that starts a word
            n_words = len(text.split())
            assert starts.sum() >= n_words * 0.9
    assert v.display(10**6) == f"<{10**6}>"


def test_transformers_wrapper_gives_the_same_vocabulary(family):
    from transformers import PreTrainedTokenizerFast

    name, tok = family
    eos = {"byte-level": "<|endoftext|>", "llama": "</s>", "unigram": "</s>", "wordpiece": "[SEP]"}[name]
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=eos)
    a, b = Vocabulary.from_tokenizer(hf), Vocabulary.from_tokenizer(tok)
    assert a.convention == b.convention and a.pieces == b.pieces
    np.testing.assert_array_equal(a.token_types(), b.token_types())
    assert a.eos_ids == {vocab_id(tok, eos)}
    wider = Vocabulary.from_tokenizer(hf, size=a.size + 3)  # a model's padded output layer
    assert wider.pieces[-3:] == (None, None, None) and wider.token_type(a.size) == "other"


def test_embedded_demo_model_has_about_1180_continuations():
    from transformers import AutoTokenizer

    from tokcal.demo.run import ASSETS_DIR

    hf = AutoTokenizer.from_pretrained(ASSETS_DIR)
    v = Vocabulary.from_tokenizer(hf)
    assert v.convention == "byte-level"
    counts = type_counts(v)
    tok = hf.backend_tokenizer
    want = sum(independent_type(tok, "byte-level", i) == "continuation" for i in range(v.size))
    assert counts["continuation"] == want
    assert 1150 <= want <= 1210  # 1,179 on the shipped tokenizer
    assert counts["eos"] == 1 and v.token_type(hf.eos_token_id) == "eos"


def test_tiktoken_style_bytes():
    pieces = [b"the", b" the", b"\n", b"\xe6\x9d", b"\xb1", b"42", b" ,"]
    v = Vocabulary.from_bytes(pieces, special={"<|endoftext|>": 7})
    assert v.convention == "bytes" and v.size == 8 and v.pieces[1] == byte_level_spelling(b" the") == "Ġthe"
    assert [v.token_type(i) for i in range(8)] == ["continuation", "word-initial", "whitespace", "continuation",
                                                   "continuation", "digits", "punctuation", "eos"]
    assert v.decode([1, 3, 4]) == " the東"
    assert v.id_of_bytes(b" the") == 1 and v.id_of_piece("Ġthe") == 1 and v.id_of_text(" the") == 1
    assert v.display(3) == "\\xe6\\x9d"


def test_tiktoken_encoding():
    """A real ``tiktoken.Encoding``, built offline from the byte-level BPE's pieces as its ranks."""
    tiktoken = pytest.importorskip("tiktoken")
    bpe = byte_level_bpe()
    ranks = {}
    for i in range(bpe.get_vocab_size()):
        b = Vocabulary.from_tokenizer(bpe).piece_bytes(i)
        if b is not None:
            ranks.setdefault(b, len(ranks))
    enc = tiktoken.Encoding("test", pat_str=r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+""",
                            mergeable_ranks=ranks, special_tokens={"<|endoftext|>": len(ranks)})
    v = Vocabulary.from_tiktoken(enc)
    assert v.convention == "bytes" and v.size == enc.n_vocab
    for text in CORPUS:
        ids = enc.encode(text)
        assert v.decode(ids) == text
        for i in ids:
            assert v.piece_bytes(i) == enc.decode_single_token_bytes(i)
    assert v.token_type(len(ranks)) == "eos"
    by_bpe = Vocabulary.from_tokenizer(bpe)
    same = {by_bpe.piece_bytes(i): by_bpe.token_type(i) for i in range(by_bpe.size) if by_bpe.piece_bytes(i)}
    assert all(v.token_type(i) == same[v.piece_bytes(i)] for i in range(len(ranks)))


@pytest.mark.parametrize("piece,conv,expected", [
    ("Ġthe", "byte-level", "word-initial"), ("▁the", "sentencepiece", "word-initial"),
    ("ing", "byte-level", "continuation"), ("'s", "byte-level", "continuation"),
    ("the", "wordpiece", "word-initial"), ("##ing", "wordpiece", "continuation"), ("the", "none", "word-initial"),
    (" the", "text", "word-initial"), ("the", "text", "continuation"), (".", "byte-level", "punctuation"),
    ("Ġ(", "byte-level", "punctuation"), ("...", "byte-level", "punctuation"), ("$", "byte-level", "punctuation"),
    ("##", "wordpiece", "punctuation"), ("7", "byte-level", "digits"), ("Ġ1999", "byte-level", "digits"),
    ("\n", "text", "whitespace"), ("Ċ", "byte-level", "whitespace"), ("ĊĊ", "byte-level", "whitespace"),
    ("Ġ", "byte-level", "whitespace"), ("▁", "sentencepiece", "whitespace"), ("\t", "none", "whitespace"),
    ("<0x0A>", "sentencepiece", "whitespace"), ("<0x41>", "sentencepiece", "continuation"),
    ("<pad>", "byte-level", "special"), ("[CLS]", "wordpiece", "special"), ("<|im_start|>", "byte-level", "special"),
    ("<eos>", "byte-level", "eos"), ("</s>", "sentencepiece", "eos"), ("<|endoftext|>", "byte-level", "eos"),
    ("[SEP]", "wordpiece", "eos"), ("<", "byte-level", "punctuation"), ("", "byte-level", "other"),
    ("Ã", "byte-level", "continuation"), ("ĠÃ", "byte-level", "word-initial"),
])
def test_known_pieces(piece, conv, expected):
    """Without a tokenizer's list of specials, specials are recognised by their spelling."""
    assert Vocabulary([piece], conv).token_type(0) == expected


def test_detect_convention():
    assert detect_convention(["[CLS]", "the", "##ing"]) == "wordpiece"
    assert detect_convention(["<s>", "Ġthe", "ing"]) == "byte-level"
    assert detect_convention(["<s>", "▁the", "ing", "<0x0A>"]) == "sentencepiece"
    assert detect_convention(["<|endoftext|>", " the", "ing", " cat"]) == "text"
    assert detect_convention(["the", "ing"]) == "none"
    with pytest.raises(Exception, match="convention"):
        Vocabulary(["a"], "marker")
    assert set(CONVENTIONS) >= {"byte-level", "sentencepiece", "wordpiece", "bytes"}


def test_table_stores_raw_pieces_and_convention(tmp_path, family):
    name, tok = family
    v = Vocabulary.from_tokenizer(tok)
    t = make_table(300, v.size, seed=1)
    t.vocab = v
    path = t.write_parquet(tmp_path / f"{name}.parquet")
    meta = json.loads(pq.read_schema(path).metadata[b"tokcal"])
    assert meta["schema_version"] == 3 and meta["vocabulary"]["convention"] == v.convention
    assert meta["vocabulary"]["pieces"] == list(v.pieces) and "vocab" not in meta
    back = TokenTable.read_parquet(path)
    assert back.vocabulary == v
    sl = TokenTypeSlice()
    np.testing.assert_array_equal(sl.codes(back), sl.codes(t))


def test_version_1_tables_are_still_read(tmp_path):
    """Version 1 stored decoded strings; their leading spaces still mark word starts."""
    t = make_table(200, 50, seed=2)
    decoded = list(t.vocab)  # ' the', ',', ... as tokcal < 0.2 stored them
    arrow = t.to_arrow()
    meta = json.loads(arrow.schema.metadata[b"tokcal"])
    meta["schema_version"] = 1
    meta.pop("vocabulary")
    meta["vocab"] = decoded
    pq.write_table(arrow.replace_schema_metadata({b"tokcal": json.dumps(meta).encode()}), tmp_path / "v1.parquet")
    back = TokenTable.read_parquet(tmp_path / "v1.parquet")
    assert back.vocabulary.convention == "text" and back.vocab == decoded
    np.testing.assert_array_equal(back.vocabulary.token_types(), t.vocabulary.token_types())
    meta["schema_version"] = 4
    pq.write_table(arrow.replace_schema_metadata({b"tokcal": json.dumps(meta).encode()}), tmp_path / "v4.parquet")
    with pytest.raises(SchemaError, match="schema version 4"):
        TokenTable.read_parquet(tmp_path / "v4.parquet")
    meta.update(schema_version=2, vocabulary={"convention": "klingon", "pieces": ["a"]})
    pq.write_table(arrow.replace_schema_metadata({b"tokcal": json.dumps(meta).encode()}), tmp_path / "bad.parquet")
    with pytest.raises(SchemaError, match="bad.parquet.*convention 'klingon'"):
        TokenTable.read_parquet(tmp_path / "bad.parquet")


def test_token_types_cover_the_declared_set():
    v = Vocabulary.from_pieces(["Ġthe", "ing", ",", "7", "Ġ", "<pad>", "<eos>", "\x00"])
    assert [TOKEN_TYPES[k] for k in v.token_types()] == [
        "word-initial", "continuation", "punctuation", "digits", "whitespace", "special", "eos", "other"]


def test_concat_refuses_different_vocabularies():
    a, b = make_table(100, 30, seed=1), make_table(100, 30, seed=2)
    assert TokenTable.concat([a, b]).vocabulary == a.vocabulary
    b.vocab = Vocabulary(list(a.vocabulary.pieces), "text")
    with pytest.raises(Exception, match="concat: table 1 has another vocabulary"):
        TokenTable.concat([a, b])
