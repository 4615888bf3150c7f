"""Language: the words that describe the objects, the vocabulary, and descriptions that pick an object out."""

from __future__ import annotations

import random

from amc.synth.scene import COLOURS, SHAPES, Obj

PLURALS = {
    "circle": "circles",
    "square": "squares",
    "triangle": "triangles",
    "diamond": "diamonds",
    "cross": "crosses",
    "star": "stars",
}
# Texts use either word for a size, so a model cannot key on one token.
SIZE_WORDS = {"small": ("small", "little"), "large": ("large", "big")}
RELATIONS = ("left of", "right of", "above", "below")
NUMBER_WORDS = {2: "two", 3: "three"}
# Flickr30k entities without a box: whole-scene phrases and a not-visual "there".
SCENE_PHRASES = ("a picture", "an image", "a dark background")
FUNCTION_WORDS = ("a", "an", "the", "and", "with", "is", "there", "on")

VOCAB_SIZE = 512
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def vocabulary_words() -> list[str]:
    """Every word the generator can emit, lowercased as ALBEF's ``pre_caption`` leaves it."""
    words = set(SHAPES) | set(PLURALS.values()) | set(COLOURS) | set(FUNCTION_WORDS)
    words |= {w for pair in SIZE_WORDS.values() for w in pair}
    words |= set(NUMBER_WORDS.values())
    for text in RELATIONS + SCENE_PHRASES:
        words |= set(text.split())
    return sorted(words)


def vocabulary_lines() -> list[str]:
    words = vocabulary_words()
    filler = VOCAB_SIZE - len(SPECIAL_TOKENS) - len(words)
    assert filler >= 0, "the generator's vocabulary no longer fits in 512 tokens"
    return [*SPECIAL_TOKENS, *words, *(f"[unused{i}]" for i in range(filler))]


def _article(words: list[str], article: str) -> list[str]:
    if article == "a" and words[0][0] in "aeiou":
        article = "an"
    return [article, *words] if article else words


def noun_phrase(obj: Obj, attrs: frozenset | set, rng: random.Random, article: str = "a") -> str:
    """E.g. "a little red circle": the attributes in ``attrs`` (``size``, ``colour``) and the shape."""
    words = []
    if "size" in attrs:
        words.append(rng.choice(SIZE_WORDS[obj.size]))
    if "colour" in attrs:
        words.append(obj.colour)
    words.append(obj.shape)
    return " ".join(_article(words, article))


def _matches(obj: Obj, other: Obj, attrs) -> bool:
    return other.shape == obj.shape and all(getattr(other, a) == getattr(obj, a) for a in attrs)


ATTRIBUTE_SETS = (frozenset(), frozenset({"colour"}), frozenset({"size"}), frozenset({"colour", "size"}))


def unique_attribute_sets(obj: Obj, objects: list[Obj]) -> list[frozenset]:
    """Attribute sets that, with the shape, single ``obj`` out among ``objects``."""
    return [a for a in ATTRIBUTE_SETS if not any(_matches(obj, o, a) for o in objects if o is not obj)]


def describe(
    obj: Obj, objects: list[Obj], rng: random.Random, article: str = "a", need_attribute: bool = False
) -> str:
    """A description that picks ``obj`` out, usually the shortest one, sometimes over-specified."""
    sets = [a for a in unique_attribute_sets(obj, objects) if a or not need_attribute]
    if rng.random() < 0.25:
        attrs = sets[-1]
    else:
        shortest = min(len(a) for a in sets)
        attrs = rng.choice([a for a in sets if len(a) == shortest])
    return noun_phrase(obj, attrs, rng, article)


def relation(a: Obj, b: Obj) -> str | None:
    """The clear spatial relation of ``a`` to ``b`` (``a`` is <relation> ``b``), or None."""
    (ax, ay), (bx, by) = a.centre, b.centre
    dx, dy = ax - bx, ay - by
    if abs(dx) > 1.5 * abs(dy) and abs(dx) > 6:
        return "left of" if dx < 0 else "right of"
    if abs(dy) > 1.5 * abs(dx) and abs(dy) > 6:
        return "above" if dy < 0 else "below"
    return None


def loosely_related(a: Obj, pred: str, b: Obj) -> bool:
    """Whether a reader could take ``a`` to be <pred> ``b`` at all (no clear-margin required)."""
    (ax, ay), (bx, by) = a.centre, b.centre
    return {"left of": ax < bx, "right of": ax > bx, "above": ay < by, "below": ay > by}[pred]


def related_pairs(objects: list[Obj]) -> list[tuple[Obj, str, Obj]]:
    pairs = []
    for a in objects:
        for b in objects:
            if a is not b and (pred := relation(a, b)) is not None:
                pairs.append((a, pred, b))
    return pairs


def join_phrases(items: list[str], comma: str = ", ") -> str:
    """ "a, b and c"; Flickr30k sentences need " , " so no token ends in "],"."""
    return items[0] if len(items) == 1 else comma.join(items[:-1]) + " and " + items[-1]
