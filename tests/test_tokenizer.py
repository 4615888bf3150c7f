"""ALBEF's text conventions: pre_caption, WordPiece on vocab.txt, [CLS] + pieces without [SEP]."""

from __future__ import annotations

import pytest
import torch

from amc.io import AmcError
from amc.models.tokenizer import AlbefTokenizer, load_tokenizer, pre_caption

WORDS = ["a", "the", "red", "blue", "circle", "square", "left", "of", "man", "cafe", "un", "on", "top", ","]
PIECES = ["##s", "##aff", "##able", "##ed", "##e"]


def bert_like_vocab(path, size=30522):
    """bert-base-uncased's layout: [PAD]=0, [unused*], [UNK]=100, [CLS]=101, [SEP]=102, [MASK]=103."""
    lines = ["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    lines += WORDS + PIECES
    lines += [f"filler{i}" for i in range(size - len(lines))]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return lines


def demo_like_vocab(path, size=512):
    lines = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS + PIECES
    lines += [f"w{i}" for i in range(size - len(lines))]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return lines


@pytest.mark.parametrize(
    "text, max_words, expected",
    [
        ("A man, on top of the  RED-car!", 30, "a man on top of the red car"),
        ("  what's <person> doing?\n", 30, "whats person doing"),
        ("left/right (the) blue;square", 30, "left right the bluesquare"),  # no space for ;
        ("one two three four five", 3, "one two three"),
        ('say "hi" ~ #1 * :)', 30, "say hi 1"),
    ],
)
def test_pre_caption_matches_albef(text, max_words, expected):
    assert pre_caption(text, max_words) == expected


def test_full_size_vocab_is_read_completely(tmp_path):
    # transformers 5's BertTokenizer(vocab_file=...) builds a 5-token vocabulary: ours must not.
    lines = bert_like_vocab(tmp_path / "vocab.txt")
    tokenizer = load_tokenizer(tmp_path)  # a folder holding vocab.txt
    assert tokenizer.vocab_size == len(lines) == 30522
    assert (tokenizer.pad_token_id, tokenizer.cls_token_id, tokenizer.mask_token_id) == (0, 101, 103)
    assert tokenizer.unk_token_id == 100 and tokenizer.sep_token_id == 102
    assert load_tokenizer(tmp_path / "vocab.txt").vocab_size == 30522  # or the file itself


def test_demo_vocab_special_ids_come_from_the_file(tmp_path):
    demo_like_vocab(tmp_path / "vocab.txt")
    tokenizer = load_tokenizer(tmp_path / "vocab.txt")
    assert tokenizer.vocab_size == 512
    assert (tokenizer.pad_token_id, tokenizer.cls_token_id, tokenizer.mask_token_id) == (0, 2, 4)


def test_batch_is_cls_plus_pieces_without_sep_padded_to_longest(tmp_path):
    demo_like_vocab(tmp_path / "vocab.txt")
    tokenizer = load_tokenizer(tmp_path)
    batch = tokenizer(["red circles", "the blue square left of a man"], max_length=30)
    assert batch.input_ids.dtype == torch.long and batch.attention_mask.dtype == torch.long
    assert tokenizer.decode(batch.input_ids[0]) == ["[CLS]", "red", "circle", "##s"] + ["[PAD]"] * 4
    assert tokenizer.decode(batch.input_ids[1]) == [
        "[CLS]",
        "the",
        "blue",
        "square",
        "left",
        "of",
        "a",
        "man",
    ]
    assert batch.attention_mask.tolist() == [[1, 1, 1, 1, 0, 0, 0, 0], [1] * 8]
    assert tokenizer.sep_token_id not in batch.input_ids
    truncated = tokenizer(["the blue square left of a man"], max_length=4)
    assert tokenizer.decode(truncated.input_ids[0]) == ["[CLS]", "the", "blue", "square"]


def test_wordpiece_and_basic_tokenization(tmp_path):
    demo_like_vocab(tmp_path / "vocab.txt")
    tokenizer = load_tokenizer(tmp_path)
    assert tokenizer.tokenize("Unaffable CAFÉ, squares") == [
        "un",
        "##aff",
        "##able",
        "cafe",
        ",",
        "square",
        "##s",
    ]
    assert tokenizer.tokenize("zzz red\tblue\x00") == ["[UNK]", "red", "blue"]
    assert tokenizer.tokenize("a" * 101) == ["[UNK]"]


@pytest.mark.parametrize(("make_vocab", "size"), [(demo_like_vocab, 512), (bert_like_vocab, 30522)])
def test_matches_transformers_bert_tokenizer(tmp_path, make_vocab, size):
    # transformers is a dev dependency for this comparison only (docs/architecture.md)
    transformers = pytest.importorskip("transformers")
    lines = make_vocab(tmp_path / "vocab.txt")
    try:
        reference = transformers.BertTokenizer(vocab={t: i for i, t in enumerate(lines)}, do_lower_case=True)
    except TypeError:
        pytest.skip("this transformers release has no BertTokenizer(vocab=...)")
    assert len(reference) == size
    ours = load_tokenizer(tmp_path)
    texts = ["Red circles left of the blue squares", "unaffable café", "a man on top, zzz", "the  square-ed"]
    for text in texts:
        expected = reference(text)["input_ids"]
        assert expected[-1] == reference.sep_token_id
        assert ours.encode(text) == expected[:-1], text  # ALBEF: the same without the trailing [SEP]


def test_vocabulary_errors(tmp_path):
    with pytest.raises(AmcError, match="vocab.txt: vocabulary file not found"):
        load_tokenizer(tmp_path)
    (tmp_path / "vocab.txt").write_text("[PAD]\n[UNK]\nhello\n")
    with pytest.raises(AmcError, match=r"lacks the special token\(s\) \[CLS\], \[SEP\], \[MASK\]"):
        load_tokenizer(tmp_path)
    with pytest.raises(AmcError, match="special token"):
        AlbefTokenizer(["a", "b"])
