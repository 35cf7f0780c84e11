"""The character tokenizer: vocabulary, round trips, JSON files, unknown characters."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from minituner.minigpt.tokenizer import CharTokenizer


@pytest.fixture(scope="module")
def tok(corpus):
    return CharTokenizer.from_text(corpus.all_text())


def test_vocabulary_covers_spanish_letters(tok):
    for ch in "áéíóúñÉ":
        assert ch in tok.chars, ch
    assert tok.chars[0] == "\n" and tok.newline_id == 0
    assert tok.vocab_size == len(tok.chars) == len(set(tok.chars))
    assert all(len(c) == 1 for c in tok.chars)


def test_shipped_tokenizer_matches_the_corpus(base, tok):
    assert base.tok.chars == tok.chars


def test_encode_decode_round_trip(tok, corpus):
    for line in corpus.pretrain[:200] + corpus.control_es + [e.text for e in corpus.finetune_test]:
        ids = tok.encode(line)
        assert len(ids) == len(line)
        assert tok.decode(ids) == line


@given(st.data())
def test_round_trip_property(data):
    tok = CharTokenizer("abcñé \n.")
    text = data.draw(st.text(alphabet=tok.chars, max_size=50))
    assert tok.decode(tok.encode(text)) == text


def test_json_save_load(tok, tmp_path):
    path = tmp_path / "tok.json"
    tok.save(path)
    loaded = CharTokenizer.load(path)
    assert loaded.chars == tok.chars
    assert loaded.stoi == tok.stoi
    text = "Él fue a la escuela ayer. | He __ to school yesterday. = went"
    assert loaded.encode(text) == tok.encode(text)
    # stored as readable UTF-8, not \\u escapes
    assert "ñ" in path.read_text(encoding="utf-8")
    assert json.loads(path.read_text(encoding="utf-8"))["type"] == "char"


@pytest.mark.parametrize("bad", ["?", "He went to school! ", "Ça"])
def test_unknown_character_raises_naming_it(tok, bad):
    unknown = [ch for ch in bad if ch not in tok.chars]
    assert unknown
    with pytest.raises(ValueError) as exc:
        tok.encode(bad)
    for ch in unknown:
        assert repr(ch) in str(exc.value)
    assert "\n" not in str(exc.value)


def test_duplicate_or_multichar_vocabulary_rejected():
    with pytest.raises(ValueError):
        CharTokenizer(["a", "a"])
    with pytest.raises(ValueError):
        CharTokenizer(["ab"])


@pytest.mark.parametrize(
    "content",
    ["not json at all", "[1, 2]", '{"type": "bpe", "chars": ["a"]}', '{"type": "char"}', ""],
)
def test_load_corrupt_file_raises_value_error(tmp_path, content):
    path = tmp_path / "tokenizer.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError) as exc:
        CharTokenizer.load(path)
    assert str(path) in str(exc.value)


def test_load_missing_file_raises_value_error(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        CharTokenizer.load(tmp_path / "nope.json")
