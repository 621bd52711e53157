"""`niah`: find one needle in a haystack (RULER-style single needle, S-NIAH).

The haystack is generated filler prose; one sentence in it is the needle:

    One of the special magic numbers for wandering-lighthouse is: 4829175.

inserted at a chosen depth (0.0 = the start, 1.0 = the end; drawn from the seed unless
given). The query asks for the magic number of that key. `size` is the haystack's length in
tokens, estimated at four characters a token, from 1K to several million (8K to 1M+ is the
usual sweep). Scoring is RULER's string match: 1 when the number appears in the answer.
`distractors=` adds needles for other keys, which makes the task harder (RULER's
multi-key variant).
"""

from __future__ import annotations

import random
import re

from rlm.evals.base import CHARS_PER_TOKEN, Instance, Task

NEEDLE = "One of the special magic numbers for {key} is: {number}."

_ADJECTIVES = (
    "amber", "ancient", "brisk", "calm", "crimson", "curious", "distant", "dusty", "eager",
    "faded", "gentle", "golden", "hollow", "humble", "icy", "lively", "lonely", "misty",
    "narrow", "quiet", "restless", "rustic", "silver", "sleepy", "steady", "tidy", "velvet",
    "wandering", "wild", "woven",
)  # fmt: skip
_NOUNS = (
    "anchor", "archive", "bridge", "canyon", "cathedral", "compass", "garden", "glacier",
    "harbor", "lantern", "library", "lighthouse", "market", "meadow", "mill", "orchard",
    "river", "saddle", "signal", "summit", "teapot", "thicket", "tower", "trumpet", "tuba",
    "valley", "violin", "warehouse", "window", "workshop",
)  # fmt: skip
_PEOPLE = (
    "the founders", "most investors", "a good editor", "the committee", "young engineers",
    "the old farmers", "every startup", "the town council", "a careful reader", "the crew",
)  # fmt: skip
_VERBS = (
    "noticed", "argued about", "rebuilt", "ignored", "measured", "described", "admired",
    "questioned", "painted", "studied", "forgot", "celebrated", "repaired", "mapped",
)  # fmt: skip
_IDEAS = (
    "the value of patience", "how habits form", "why small teams move fast",
    "the cost of waiting", "what makes work last", "the shape of good questions",
    "how cities grow", "the trouble with plans", "why tools matter", "the pleasure of craft",
    "how markets change", "what people remember",
)  # fmt: skip
_TEMPLATES = (
    "The {adj} {noun} stood near the {noun2} for as long as anyone could remember.",
    "In {year}, {people} {verb} the {adj} {noun} by the {noun2}.",
    "It is easy to overlook {idea}, though not for {people}.",
    "{People} often say that {idea} matters more than the {noun} itself.",
    "Nobody expected the {noun} to become so {adj}, yet it did.",
    "When the {noun2} closed, {people} {verb} the {adj} {noun} instead.",
    "There is a lesson here about {idea}.",
    "By {year} the {adj} {noun} had been {verb} twice.",
    "Most of what we know about {idea} comes from the {noun2}.",
    "The {noun} was {adj}, the {noun2} was {adj2}, and the afternoon went on.",
    "If you ask {people} about {idea}, they will point at the {adj} {noun}.",
    "Some things, like the {noun2}, only make sense in hindsight.",
)  # fmt: skip


def make_key(rng: random.Random) -> str:
    """A needle key like "sleepy-tuba"."""
    return f"{rng.choice(_ADJECTIVES)}-{rng.choice(_NOUNS)}"


def _sentence(rng: random.Random) -> str:
    template = rng.choice(_TEMPLATES)
    people = rng.choice(_PEOPLE)
    return template.format(
        adj=rng.choice(_ADJECTIVES),
        adj2=rng.choice(_ADJECTIVES),
        noun=rng.choice(_NOUNS),
        noun2=rng.choice(_NOUNS),
        people=people,
        People=people[0].upper() + people[1:],
        verb=rng.choice(_VERBS),
        idea=rng.choice(_IDEAS),
        year=rng.randint(1850, 2020),
    )


def haystack_sentences(rng: random.Random, chars: int) -> list[str]:
    """Filler sentences (paragraph breaks included) adding up to about `chars` characters."""
    out: list[str] = []
    total = 0
    in_paragraph = 0
    while total < chars:
        sentence = _sentence(rng)
        in_paragraph += 1
        if in_paragraph >= rng.randint(4, 9):
            sentence += "\n\n"
            in_paragraph = 0
        else:
            sentence += " "
        out.append(sentence)
        total += len(sentence)
    return out


class NiahTask(Task):
    """One magic number hidden in `size` tokens of filler prose."""

    name = "niah"
    description = "single needle in a haystack (RULER S-NIAH): find one key's magic number"
    size_unit = "tokens"
    default_sizes = (8_000, 32_000, 128_000, 1_000_000)
    min_size = 100
    max_size = 20_000_000

    def generate(
        self,
        size: int,
        seed: int = 0,
        *,
        depth: float | None = None,
        distractors: int = 0,
    ) -> Instance:
        """A haystack of about `size` tokens with the needle at `depth` (0 to 1)."""
        self.check_size(size)
        if depth is not None and not 0.0 <= depth <= 1.0:
            raise ValueError(f"depth must be between 0.0 and 1.0, not {depth!r}")
        if distractors < 0:
            raise ValueError("distractors must be >= 0")
        rng = random.Random(f"rlm-niah:{seed}:{size}")
        key = make_key(rng)
        number = rng.randint(1_000_000, 9_999_999)
        if depth is None:
            depth = round(rng.random(), 2)
        needles: list[tuple[float, str]] = [(depth, NEEDLE.format(key=key, number=number))]
        used = {key}
        for _ in range(distractors):
            other = make_key(rng)
            while other in used:
                other = make_key(rng)
            used.add(other)
            needles.append(
                (rng.random(), NEEDLE.format(key=other, number=rng.randint(1_000_000, 9_999_999)))
            )
        needle_chars = sum(len(text) + 1 for _, text in needles)
        sentences = haystack_sentences(rng, max(0, size * CHARS_PER_TOKEN - needle_chars))
        # Insert from the deepest needle up so earlier positions stay valid.
        for where, text in sorted(needles, key=lambda n: -n[0]):
            index = round(where * len(sentences))
            sentences.insert(index, text + " ")
        context = "".join(sentences).rstrip()
        return Instance(
            task=self.name,
            size=size,
            seed=seed,
            context=context,
            query=(
                f"What is the special magic number for {key} mentioned in the provided "
                "text? Answer with the number only."
            ),
            gold=str(number),
            answer_kind="number",
            details={"key": key, "depth": depth, "distractors": distractors},
        )

    def score(self, instance: Instance, answer: str | None) -> float:
        """RULER's string match: 1 when the magic number appears in the answer, else 0."""
        if answer is None:
            return 0.0
        digits = re.findall(r"\d+", answer.replace(",", ""))
        return 1.0 if instance.gold in digits else 0.0
