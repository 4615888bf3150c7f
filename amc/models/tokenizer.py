"""ALBEF's text conventions on a BERT WordPiece ``vocab.txt``.

* :func:`pre_caption` is ALBEF's ``dataset/utils.py:pre_caption`` (lowercase, drop
  punctuation, collapse spaces, cut to ``max_words`` words).
* :class:`AlbefTokenizer` is bert-base-uncased's tokenization (basic tokenizer: clean,
  lowercase, strip accents, split punctuation and CJK characters; then greedy
  longest-match-first WordPiece) written out here, so it does not depend on how a
  transformers release builds its tokenizers (transformers 5's ``BertTokenizer(vocab_file=)``
  silently builds a 5-token vocabulary). A batch is ``[CLS]`` + word pieces with NO
  trailing ``[SEP]`` (ALBEF's convention: its ``models/tokenization_bert.py`` builds ``[CLS] X``), truncated to
  ``max_length`` (training) or not at all (``max_length=None``: evaluation, as released)
  and padded to the longest text of the batch.

No token id is hard-coded: special tokens are looked up in the vocabulary.
"""

from __future__ import annotations

import dataclasses
import re
import unicodedata
from pathlib import Path

import torch
from torch import Tensor

from amc.io import AmcError

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
_MAX_CHARS_PER_WORD = 100  # BERT's WordpieceTokenizer: longer words become [UNK]


def pre_caption(caption: str, max_words: int) -> str:
    """ALBEF's caption cleaning, verbatim in behaviour."""
    caption = (
        re.sub(r"([,.'!?\"()*#:;~])", "", caption.lower())
        .replace("-", " ")
        .replace("/", " ")
        .replace("<person>", "person")
    )
    caption = re.sub(r"\s{2,}", " ", caption)
    caption = caption.rstrip("\n").strip(" ")
    words = caption.split(" ")
    if len(words) > max_words:
        caption = " ".join(words[:max_words])
    return caption


@dataclasses.dataclass
class TokenBatch:
    """Token ids and 0/1 attention mask, both [B, L] int64, padded to the longest text."""

    input_ids: Tensor
    attention_mask: Tensor

    def to(self, device: torch.device | str) -> TokenBatch:
        return TokenBatch(self.input_ids.to(device), self.attention_mask.to(device))


class AlbefTokenizer:
    """bert-base-uncased WordPiece with ALBEF's batch layout ([CLS] + pieces, no [SEP])."""

    def __init__(self, vocab: list[str], source: str = "vocabulary", do_lower_case: bool = True) -> None:
        self.source = source
        self.do_lower_case = do_lower_case
        self.ids_to_tokens = list(vocab)
        self.vocab: dict[str, int] = {}
        for index, token in enumerate(self.ids_to_tokens):
            self.vocab[token] = index  # a repeated line: the last one wins, as in HF's load_vocab
        missing = [token for token in SPECIAL_TOKENS if token not in self.vocab]
        if missing:
            raise AmcError(f"{source}: vocabulary lacks the special token(s) {', '.join(missing)}")
        self._never_split = set(SPECIAL_TOKENS)

    # ------------------------------------------------------------------ ids
    @property
    def vocab_size(self) -> int:
        return len(self.ids_to_tokens)

    def __len__(self) -> int:
        return self.vocab_size

    @property
    def pad_token_id(self) -> int:
        return self.vocab["[PAD]"]

    @property
    def unk_token_id(self) -> int:
        return self.vocab["[UNK]"]

    @property
    def cls_token_id(self) -> int:
        return self.vocab["[CLS]"]

    @property
    def sep_token_id(self) -> int:
        return self.vocab["[SEP]"]

    @property
    def mask_token_id(self) -> int:
        return self.vocab["[MASK]"]

    # -------------------------------------------------------------- tokenize
    def tokenize(self, text: str) -> list[str]:
        """Word pieces of one text (no special tokens added)."""
        pieces: list[str] = []
        for word in self._basic_tokenize(text):
            pieces.extend(self._wordpiece(word))
        return pieces

    def encode(self, text: str) -> list[int]:
        """[CLS] + word-piece ids (untruncated, unpadded)."""
        unk = self.unk_token_id
        return [self.cls_token_id] + [self.vocab.get(piece, unk) for piece in self.tokenize(text)]

    def __call__(self, texts: list[str] | str, max_length: int | None) -> TokenBatch:
        """Batch of texts -> [CLS] + pieces, truncated to ``max_length`` (None: kept whole), padded to the longest."""
        if isinstance(texts, str):
            texts = [texts]
        if max_length is not None and max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {max_length}")
        encoded = [self.encode(text)[:max_length] for text in texts]
        length = max((len(ids) for ids in encoded), default=1)
        input_ids = torch.full((len(encoded), length), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(encoded), length), dtype=torch.long)
        for row, ids in enumerate(encoded):
            input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            attention_mask[row, : len(ids)] = 1
        return TokenBatch(input_ids=input_ids, attention_mask=attention_mask)

    def decode(self, ids: list[int] | Tensor) -> list[str]:
        if isinstance(ids, Tensor):
            ids = ids.tolist()
        return [self.ids_to_tokens[i] for i in ids]

    # ------------------------------------------------ BERT's BasicTokenizer
    def _basic_tokenize(self, text: str) -> list[str]:
        text = _clean_text(text)
        text = _pad_cjk(text)
        text = unicodedata.normalize("NFC", text)
        words: list[str] = []
        for token in text.split():
            if token in self._never_split:
                words.append(token)
                continue
            if self.do_lower_case:
                token = _strip_accents(token.lower())
            words.extend(_split_on_punctuation(token))
        return words

    def _wordpiece(self, word: str) -> list[str]:
        if len(word) > _MAX_CHARS_PER_WORD:
            return ["[UNK]"]
        pieces, start = [], 0
        while start < len(word):
            end, piece = len(word), None
            while start < end:
                candidate = word[start:end]
                if start > 0:
                    candidate = "##" + candidate
                if candidate in self.vocab:
                    piece = candidate
                    break
                end -= 1
            if piece is None:
                return ["[UNK]"]
            pieces.append(piece)
            start = end
        return pieces


def load_tokenizer(path: str | Path) -> AlbefTokenizer:
    """A folder holding ``vocab.txt``, or the ``vocab.txt`` file itself (one token a line)."""
    path = Path(path)
    vocab_file = path / "vocab.txt" if path.is_dir() else path
    if not vocab_file.is_file():
        raise AmcError(f"{vocab_file}: vocabulary file not found")
    try:
        text = vocab_file.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise AmcError(f"{vocab_file}: not a UTF-8 text vocabulary ({error})") from None
    # One token per line; a token is the line without its line ending (HF: rstrip("\n")).
    tokens = text.split("\n")
    if tokens and tokens[-1] == "":
        tokens.pop()
    tokens = [token.rstrip("\r") for token in tokens]
    if not tokens:
        raise AmcError(f"{vocab_file}: empty vocabulary")
    return AlbefTokenizer(tokens, source=str(vocab_file))


# ------------------------------------------------------------ helpers (BERT)
def _is_whitespace(char: str) -> bool:
    if char in (" ", "\t", "\n", "\r"):
        return True
    return unicodedata.category(char) == "Zs"


def _is_control(char: str) -> bool:
    if char in ("\t", "\n", "\r"):
        return False
    return unicodedata.category(char) in ("Cc", "Cf")


def _is_punctuation(char: str) -> bool:
    cp = ord(char)
    # Every non-alphanumeric ASCII character counts as punctuation (BERT's rule).
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(char).startswith("P")


def _is_cjk(cp: int) -> bool:
    return (
        0x4E00 <= cp <= 0x9FFF
        or 0x3400 <= cp <= 0x4DBF
        or 0x20000 <= cp <= 0x2A6DF
        or 0x2A700 <= cp <= 0x2B73F
        or 0x2B740 <= cp <= 0x2B81F
        or 0x2B820 <= cp <= 0x2CEAF
        or 0xF900 <= cp <= 0xFAFF
        or 0x2F800 <= cp <= 0x2FA1F
    )


def _clean_text(text: str) -> str:
    out = []
    for char in text:
        cp = ord(char)
        if cp == 0 or cp == 0xFFFD or _is_control(char):
            continue
        out.append(" " if _is_whitespace(char) else char)
    return "".join(out)


def _pad_cjk(text: str) -> str:
    return "".join(f" {char} " if _is_cjk(ord(char)) else char for char in text)


def _strip_accents(text: str) -> str:
    return "".join(char for char in unicodedata.normalize("NFD", text) if unicodedata.category(char) != "Mn")


def _split_on_punctuation(text: str) -> list[str]:
    words: list[list[str]] = []
    start_new = True
    for char in text:
        if _is_punctuation(char):
            words.append([char])
            start_new = True
        else:
            if start_new:
                words.append([])
            start_new = False
            words[-1].append(char)
    return ["".join(word) for word in words]
