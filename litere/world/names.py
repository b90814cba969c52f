"""Invented one- and two-syllable names for the bundled worlds, split into a training and an evaluation pool.

Every name is assigned to one pool by a fixed hash of its spelling, so a world built from the evaluation pool
shares no name with any training world, whatever the seeds.
"""
from __future__ import annotations

import random
import zlib
from functools import lru_cache

from litere.env.text import STOPWORDS

_ONSETS = ["b", "d", "f", "g", "h", "j", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z",
           "br", "dr", "fr", "gr", "kr", "pr", "tr", "bl", "gl", "kl", "pl", "sl", "st", "sk", "sh", "th"]
_SIMPLE_ONSETS = ["b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z"]
_VOWELS = ["a", "e", "i", "o", "u"]
_CODAS = ["", "n", "l", "r", "k", "m", "t", "x", "s", "nd", "rn", "sk"]
_SECOND_CODAS = ["", "n", "l", "r"]

# Real words a name must not be: the words of the page and question templates and common English words
# (a name like "Born" or "Stand" would make search and reading ambiguous).
_NOT_NAMES = frozenset("""
ban bar bat bed bet bin bit bog bon box bud bum bun bus but dam dan den did din dog don dot dun fan fat fed fen
fin fit fix fog for fox fun gal gas get gin god got gum gun gut hal ham has hat hen her him his hit hot hum hut
jam jet jot kin kit lab lad lap led leg let lid lit log lot man mat men met mix mob mom mud mum nan net nil nor
not nun nut pal pan pat pen pet pin pit pod pop pot pun put ran rat red rib rid rim rot run rut sad sat sex set
sin sit six sob son sum sun tan tap tax ten tin tip ton top tot tub van vat vet vim von zen zip
band bank bark barn bask bend best bind bland blast blend blot bond born brand brim brisk bust
dark darn desk disk dusk fend find fist fond fund gland grand grin grind hand hint kind land lend lest
lost mask mind must pond rand rend risk rust sand send silk sink stand stern sunk tend torn tusk turn
wind word work worn that this thin than then them thus shot shut skin skit stem stun stir star slam slim slot
slit plan plus plot glum glen grim grit gram brat trim trot drum from frat prom the she sky spa bra pro pre tri
baker paper later never river fever lever liter meter motor sugar solar polar radar tutor tumor lemon melon demon
salon baron robin tenor minor panel label model novel metal total vital rival navel level devil fatal petal pedal
medal hotel motel venus lunar tuna soda sofa data diva lava gala coma sonar kilo memo
""".split()) | STOPWORDS


def _all_names() -> tuple[list[str], list[str]]:
    """(one-syllable, two-syllable) candidate names."""
    one = [o + v + c for o in _ONSETS for v in _VOWELS for c in _CODAS]
    two = [o + v + o2 + v2 + c for o in _ONSETS for v in _VOWELS for o2 in _SIMPLE_ONSETS for v2 in _VOWELS
           for c in _SECOND_CODAS]
    return _usable(one), _usable(two)


def _usable(names: list[str]) -> list[str]:
    return [n.capitalize() for n in names if len(n) >= 3 and n not in _NOT_NAMES]


def pool_of(name: str) -> str:
    """"eval" for about one name in eight, "train" for the others; fixed by the spelling alone."""
    return "eval" if zlib.crc32(name.lower().encode()) % 8 == 0 else "train"


@lru_cache(maxsize=None)
def name_pool(pool: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(one-syllable names, two-syllable names) of a pool, in a fixed order."""
    if pool not in ("train", "eval"):
        raise ValueError(f"name pool must be 'train' or 'eval', got {pool!r}")
    one, two = _all_names()
    return tuple(n for n in one if pool_of(n) == pool), tuple(n for n in two if pool_of(n) == pool)


class NameDrawer:
    """Draws distinct names from a pool (about 40% one-syllable, the rest two-syllable), never one whose lower
    case is in `reserved` (the words of the world's own templates)."""

    def __init__(self, pool: str, rng: random.Random, reserved: frozenset[str] = frozenset()):
        self.one, self.two = name_pool(pool)
        self.rng = rng
        self.used: set[str] = {n for n in self.one + self.two if n.lower() in reserved}

    def draw(self) -> str:
        for _ in range(1000):
            source = self.one if self.rng.random() < 0.4 else self.two
            name = source[self.rng.randrange(len(source))]
            if name not in self.used:
                self.used.add(name)
                return name
        raise RuntimeError("the name pool is exhausted; make the world smaller")
