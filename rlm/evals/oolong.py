"""`oolong` and `oolong-pairs`: aggregate over lines whose labels must be inferred.

Modelled on OOLONG's synthetic split (trec-coarse). Each context line is a question a user
asked on a date:

    Date: Mar 02, 2023 || User: 48213 || Instance: Who painted The Night Watch?

Every question belongs to exactly one of six labels (`LABELS`: the TREC coarse question
types, e.g. "human being" above) but the label is not written anywhere: reading it takes
understanding, which a sub-model can supply line by line, while the aggregation over
thousands of lines is work for code. The questions come from templates, so the gold
labels are known exactly.

- `oolong` asks one aggregate question: the count of a label, the most or least frequent
  label, how two labels compare, a count for one user, or a count in a date range.
  Scoring follows OOLONG: a numeric answer scores 0.75 ** |error|; a label or comparison
  answer scores 1 when it matches exactly, else 0.
- `oolong-pairs` (the RLM paper's OOLONG-Pairs) asks for every pair of users meeting a
  condition over their labels; the answer is scored by F1 over the pairs.

`size` is the context length in tokens (four characters a token).
"""

from __future__ import annotations

import datetime as dt
import itertools
import random
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from rlm.evals.base import (
    CHARS_PER_TOKEN,
    AnswerKind,
    Instance,
    Task,
    _answer_part,
    extract_number,
    normalize_label,
)

LABELS: tuple[str, ...] = (
    "abbreviation",
    "entity",
    "description and abstract concept",
    "human being",
    "location",
    "numeric value",
)

# Short forms a model may use for a label.
_ALIASES: dict[str, str] = {
    "abbreviation": "abbreviation",
    "abbreviations": "abbreviation",
    "entity": "entity",
    "entities": "entity",
    "description and abstract concept": "description and abstract concept",
    "description": "description and abstract concept",
    "abstract concept": "description and abstract concept",
    "human being": "human being",
    "human": "human being",
    "location": "location",
    "locations": "location",
    "numeric value": "numeric value",
    "numeric": "numeric value",
}
_LABEL_PATTERN = re.compile(
    r"\b(" + "|".join(sorted(map(re.escape, _ALIASES), key=len, reverse=True)) + r")\b"
)

COMPARISONS = ("more common than", "less common than", "same frequency as")

_FILL: dict[str, tuple[str, ...]] = {
    "abbr": ("NASA", "UNESCO", "HTML", "DNA", "NATO", "CPU", "GDP", "RSVP", "FIFA", "OPEC",
             "LASER", "SCUBA", "UNICEF", "ASAP", "JPEG", "RAM", "HVAC", "PIN", "OLED", "ETA"),
    "org": ("World Health Organization", "European Union", "International Monetary Fund",
            "Federal Bureau of Investigation", "Universal Serial Bus",
            "Organisation for Economic Co-operation and Development",
            "Massachusetts Institute of Technology", "British Broadcasting Corporation"),
    "animal": ("axolotl", "pangolin", "okapi", "quokka", "narwhal", "capybara", "tapir",
               "kinkajou", "dugong", "fossa", "gharial", "numbat"),
    "thing": ("ripe lime", "flamingo", "sapphire", "school bus", "ruby", "canary",
              "robin's egg", "emerald", "pumpkin", "polar bear"),
    "person": ("Louis Armstrong", "Jimi Hendrix", "Yo-Yo Ma", "Miles Davis", "Ravi Shankar",
               "Clara Schumann", "Django Reinhardt", "Charlie Parker", "Nina Simone"),
    "sport_place": ("Wimbledon", "Augusta National", "Lord's", "the Camp Nou", "Daytona",
                    "Fenway Park", "the Maracana", "St Andrews"),
    "dish": ("paella", "pho", "moussaka", "ceviche", "bibimbap", "goulash", "tagine",
             "pierogi", "jollof rice"),
    "device": ("refrigerator", "jet engine", "microwave oven", "solar panel", "thermostat",
               "bicycle gear", "fountain pen", "smoke detector", "hydraulic press"),
    "pair": ("weather and climate", "a virus and a bacterium", "a simile and a metaphor",
             "an alligator and a crocodile", "baking soda and baking powder",
             "a lake and a pond", "stocks and bonds", "empathy and sympathy"),
    "phenomenon": ("the northern lights", "tides", "hiccups", "rainbows", "thunder",
                   "jet lag", "inflation", "deja vu", "earthquakes", "the seasons"),
    "word": ("serendipity", "ubiquitous", "ephemeral", "hubris", "zeitgeist", "schadenfreude",
             "paradigm", "entropy", "irony", "nostalgia"),
    "invention": ("telephone", "printing press", "light bulb", "World Wide Web", "telescope",
                  "steam engine", "polio vaccine", "ballpoint pen", "safety elevator"),
    "role": ("president", "prime minister", "woman in space", "king", "chancellor",
             "astronaut", "female pilot"),
    "country": ("France", "Brazil", "Kenya", "Japan", "Canada", "India", "Norway", "Peru",
                "Egypt", "Australia", "Mexico", "Vietnam"),
    "book": ("Moby-Dick", "Pride and Prejudice", "One Hundred Years of Solitude",
             "Things Fall Apart", "The Tale of Genji", "War and Peace", "Don Quixote",
             "Beloved", "The Little Prince"),
    "painting": ("The Night Watch", "Starry Night", "Guernica", "The Birth of Venus",
                 "The Persistence of Memory", "Girl with a Pearl Earring", "The Scream"),
    "piece": ("The Four Seasons", "The Magic Flute", "Bolero", "The Rite of Spring",
              "Clair de Lune", "The Nutcracker", "Rhapsody in Blue"),
    "landmark": ("Machu Picchu", "the Taj Mahal", "Angkor Wat", "the Alhambra", "Petra",
                 "the Golden Gate Bridge", "Uluru", "the Acropolis", "Chichen Itza",
                 "Table Mountain"),
    "where_thing": ("the world's largest coral reef", "the deepest lake",
                    "the oldest university", "the tallest waterfall", "penguins in the wild",
                    "the longest river", "the Rosetta Stone"),
    "items": ("bones", "keys", "strings", "players", "teeth", "squares", "cards", "pieces"),
    "container": ("human body", "piano", "violin", "soccer team", "adult mouth",
                  "chessboard", "standard deck", "Rubik's cube"),
    "event": ("the fall of the Berlin Wall", "the first Moon landing", "the Battle of Hastings",
              "the signing of the Magna Carta", "the first Olympic Games",
              "the Chernobyl disaster", "the opening of the Suez Canal"),
    "city": ("Paris", "Nairobi", "Lima", "Osaka", "Toronto", "Cairo", "Sydney", "Oslo",
             "Mumbai", "Hanoi", "Denver", "Lisbon"),
    "measure": ("tall", "long", "deep", "heavy", "old", "wide"),
    "product": ("cup of coffee", "gallon of milk", "movie ticket", "postage stamp",
                "loaf of bread", "subway ride"),
}  # fmt: skip

_TEMPLATES: dict[str, tuple[str, ...]] = {
    "abbreviation": (
        "What does {abbr} stand for?",
        "What is the full form of {abbr}?",
        "What is the abbreviation for the {org}?",
        "What does the acronym {abbr} mean?",
        "How is the {org} usually abbreviated?",
    ),
    "entity": (
        "What kind of animal is a {animal}?",
        "What color is a {thing}?",
        "What instrument did {person} play?",
        "What sport is played at {sport_place}?",
        "What are the main ingredients of {dish}?",
        "What is a baby {animal} called?",
    ),
    "description and abstract concept": (
        "How does a {device} work?",
        "What is the difference between {pair}?",
        "What causes {phenomenon}?",
        "What does the word {word} mean?",
        "Why do people experience {phenomenon}?",
        "What is the origin of the word {word}?",
    ),
    "human being": (
        "Who invented the {invention}?",
        "Who was the first {role} of {country}?",
        "Who wrote {book}?",
        "Who painted {painting}?",
        "Which composer wrote {piece}?",
        "Who designed {landmark}?",
    ),
    "location": (
        "Where is {landmark} located?",
        "What is the capital of {country}?",
        "Which country borders {country} to the north?",
        "In which city was {person} born?",
        "Where can you find {where_thing}?",
        "Which continent is {city} on?",
    ),
    "numeric value": (
        "How many {items} are in a {container}?",
        "In what year did {event} happen?",
        "How far is it from {city} to {city2}?",
        "How {measure} is {landmark}?",
        "How much does a {product} cost in {city}?",
        "What is the population of {city}?",
    ),
}

_START_DATE = dt.date(2022, 1, 1)
_DAYS = 3 * 365


def format_date(day: dt.date) -> str:
    """A date as the context writes it: "Mar 02, 2023"."""
    return day.strftime("%b %d, %Y")


@dataclass(frozen=True, slots=True)
class Record:
    """One context line and its hidden label."""

    date: dt.date
    user: int
    question: str
    label: str

    def line(self) -> str:
        return f"Date: {format_date(self.date)} || User: {self.user} || Instance: {self.question}"


def make_question(rng: random.Random, label: str) -> str:
    """A question whose TREC coarse type is `label`."""
    template = rng.choice(_TEMPLATES[label])
    values: dict[str, str] = {}
    for slot in re.findall(r"\{(\w+)\}", template):
        pool = _FILL["city" if slot == "city2" else slot]
        choice = rng.choice(pool)
        while slot == "city2" and choice == values.get("city"):
            choice = rng.choice(pool)
        values[slot] = choice
    return template.format(**values)


def generate_records(
    rng: random.Random, size_tokens: int, users: int | None = None
) -> list[Record]:
    """Records adding up to about `size_tokens` tokens of context, with skewed labels."""
    target_chars = size_tokens * CHARS_PER_TOKEN
    approx_lines = max(1, target_chars // 88)
    n_users = users if users is not None else max(6, min(60, approx_lines // 12))
    user_ids = rng.sample(range(10_000, 99_999), n_users)
    # Each user asks about some labels more than others; overall shares are skewed too.
    label_weights = [rng.uniform(0.4, 3.0) for _ in LABELS]
    user_bias = {u: [w * rng.uniform(0.1, 2.0) for w in label_weights] for u in user_ids}
    user_weights = [rng.uniform(0.3, 2.0) for _ in user_ids]
    records: list[Record] = []
    total = 0
    while total < target_chars:
        user = rng.choices(user_ids, user_weights)[0]
        label = rng.choices(LABELS, user_bias[user])[0]
        record = Record(
            date=_START_DATE + dt.timedelta(days=rng.randrange(_DAYS)),
            user=user,
            question=make_question(rng, label),
            label=label,
        )
        records.append(record)
        total += len(record.line()) + 1
    return records


def _preamble() -> str:
    labels = ", ".join(f"'{label}'" for label in LABELS)
    return (
        "Each line of the context is a question that a user asked on a date, written as "
        "'Date: ... || User: ... || Instance: <question>'. Every question belongs to exactly "
        f"one of these labels, by the kind of answer it asks for: {labels}. The labels are "
        "not written in the context; you must decide each question's label yourself."
    )


def find_labels(answer: str) -> list[str]:
    """The distinct labels an answer names (short forms like "human" count)."""
    found: list[str] = []
    for match in _LABEL_PATTERN.findall(normalize_label(answer)):
        label = _ALIASES[match]
        if label not in found:
            found.append(label)
    return found


def _counts(
    records: Sequence[Record], keep: Callable[[Record], bool] | None = None
) -> Counter[str]:
    return Counter(r.label for r in records if keep is None or keep(r))


def _unique_extreme(counts: Counter[str], most: bool) -> str | None:
    values = [counts.get(label, 0) for label in LABELS]
    target = max(values) if most else min(values)
    winners = [label for label, v in zip(LABELS, values, strict=True) if v == target]
    return winners[0] if len(winners) == 1 else None


class OolongTask(Task):
    """One aggregate question over inferred labels; OOLONG scoring."""

    name = "oolong"
    description = "aggregate questions over lines whose labels must be inferred (OOLONG)"
    size_unit = "tokens"
    default_sizes = (1_000, 8_000, 32_000, 131_000)
    min_size = 200
    max_size = 5_000_000
    question_types: tuple[str, ...] = (
        "count",
        "most_frequent",
        "least_frequent",
        "compare",
        "user_count",
        "date_count",
    )

    def generate(self, size: int, seed: int = 0, *, question: str | None = None) -> Instance:
        """A context of about `size` tokens and one question (of type `question`, or drawn)."""
        self.check_size(size)
        if question is not None and question not in self.question_types:
            raise ValueError(
                f"unknown question type {question!r}; use one of {list(self.question_types)}"
            )
        rng = random.Random(f"rlm-oolong:{seed}:{size}")
        records = generate_records(rng, size)
        kind = question or rng.choice(self.question_types)
        query, gold, answer_kind, details = self._question(rng, kind, records)
        return Instance(
            task=self.name,
            size=size,
            seed=seed,
            context="\n".join(r.line() for r in records),
            query=f"{_preamble()}\n\n{query}",
            gold=gold,
            answer_kind=answer_kind,
            details={"question_type": kind, "lines": len(records), **details},
        )

    def _question(
        self, rng: random.Random, kind: str, records: list[Record]
    ) -> tuple[str, str, AnswerKind, dict[str, object]]:
        counts = _counts(records)
        number_note = "Answer with the number only."
        label_note = "Answer with the label only."
        if kind in ("most_frequent", "least_frequent"):
            most = kind == "most_frequent"
            winner = _unique_extreme(counts, most)
            if winner is None:  # a tie: ask for a count instead, which is always defined
                return self._question(rng, "count", records)
            word = "most" if most else "least"
            return (
                f"Which label is the {word} common among all the questions? {label_note}",
                winner,
                "label",
                {"counts": dict(counts)},
            )
        if kind == "compare":
            first, second = rng.sample(LABELS, 2)
            a, b = counts.get(first, 0), counts.get(second, 0)
            relation = COMPARISONS[0] if a > b else COMPARISONS[1] if a < b else COMPARISONS[2]
            return (
                f"Is the label '{first}' more common, less common, or the same frequency as "
                f"the label '{second}'? Answer with exactly one of: "
                + ", ".join(f"'{c}'" for c in COMPARISONS)
                + ".",
                relation,
                "text",
                {"labels": [first, second], "counts": dict(counts)},
            )
        label = rng.choice(LABELS)
        if kind == "user_count":
            user = rng.choice(sorted({r.user for r in records}))
            n = sum(1 for r in records if r.user == user and r.label == label)
            return (
                f"How many questions from user {user} have the label '{label}'? {number_note}",
                str(n),
                "number",
                {"label": label, "user": user},
            )
        if kind == "date_count":
            days = sorted({r.date for r in records})
            # A window over at least a quarter of the dates, so the count is not trivial.
            lo = rng.randrange(0, max(1, len(days) // 2))
            hi = rng.randrange(min(len(days) - 1, lo + len(days) // 4), len(days))
            start, end = days[lo], days[hi]
            n = sum(1 for r in records if start <= r.date <= end and r.label == label)
            return (
                f"How many questions dated between {format_date(start)} and {format_date(end)} "
                f"(both days included) have the label '{label}'? {number_note}",
                str(n),
                "number",
                {"label": label, "start": start.isoformat(), "end": end.isoformat()},
            )
        return (
            f"How many questions have the label '{label}'? {number_note}",
            str(counts.get(label, 0)),
            "number",
            {"label": label},
        )

    def score(self, instance: Instance, answer: str | None) -> float:
        """OOLONG's scoring: 0.75 ** |error| for numbers; exact match for labels."""
        if answer is None:
            return 0.0
        if instance.answer_kind == "number":
            value = extract_number(answer)
            if value is None:
                return 0.0
            return float(0.75 ** abs(value - float(instance.gold)))
        part = _answer_part(answer)
        if instance.answer_kind == "label":
            labels = find_labels(part)
            return 1.0 if labels == [instance.gold] else 0.0
        said = normalize_label(part)
        named = [c for c in COMPARISONS if c in said]
        return 1.0 if named == [instance.gold] else 0.0


# -- oolong-pairs ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PairCondition:
    """A condition on a pair of users, over their labels."""

    text: str
    holds: Callable[[Counter[str], Counter[str]], bool]


def _pair_conditions(rng: random.Random) -> list[PairCondition]:
    a, b = rng.sample(LABELS, 2)
    n = rng.randint(2, 4)
    return [
        PairCondition(
            f"both users have at least one question with the label '{a}' or '{b}'",
            lambda x, y: (x[a] + x[b]) > 0 and (y[a] + y[b]) > 0,
        ),
        PairCondition(
            f"both users have at least {n} questions with the label '{a}'",
            lambda x, y: x[a] >= n and y[a] >= n,
        ),
        PairCondition(
            f"one of the users has at least one question with the label '{a}' and the other "
            f"has at least one question with the label '{b}'",
            lambda x, y: (x[a] > 0 and y[b] > 0) or (x[b] > 0 and y[a] > 0),
        ),
        PairCondition(
            f"both users have more questions with the label '{a}' than with the label '{b}'",
            lambda x, y: x[a] > x[b] and y[a] > y[b],
        ),
        PairCondition(
            f"both users have exactly {n - 1} question(s) with the label '{a}'",
            lambda x, y: x[a] == n - 1 and y[a] == n - 1,
        ),
    ]


_PAIR = re.compile(r"\(\s*(\d+)\s*,\s*(\d+)\s*\)")
_LOOSE_PAIR = re.compile(r"^\W*(\d+)\s*(?:,|&|and|-|/|\s)\s*(\d+)\W*$")


def parse_pairs(answer: str | None) -> set[tuple[int, int]]:
    """Pairs like "(12345, 67890)", or one "12345, 67890" a line, as (smaller, larger)."""
    if not answer:
        return set()
    found = _PAIR.findall(answer)
    if not found:
        found = [m.groups() for line in answer.splitlines() if (m := _LOOSE_PAIR.match(line))]
    pairs: set[tuple[int, int]] = set()
    for left, right in found:
        x, y = int(left), int(right)
        if x != y:
            pairs.add((min(x, y), max(x, y)))
    return pairs


def pairs_f1(predicted: set[tuple[int, int]], gold: set[tuple[int, int]]) -> float:
    """F1 of `predicted` against `gold` (1 when both are empty)."""
    if not predicted and not gold:
        return 1.0
    hits = len(predicted & gold)
    if hits == 0:
        return 0.0
    precision = hits / len(predicted)
    recall = hits / len(gold)
    return 2 * precision * recall / (precision + recall)


class OolongPairsTask(Task):
    """Every pair of users meeting a condition over their labels; F1 scoring."""

    name = "oolong-pairs"
    description = "list every user pair meeting a condition over inferred labels (F1)"
    size_unit = "tokens"
    default_sizes = (1_000, 8_000, 32_000)
    min_size = 200
    max_size = 5_000_000

    def generate(self, size: int, seed: int = 0, *, condition: int | None = None) -> Instance:
        """A context of about `size` tokens and a pair question (condition index or drawn).

        When no condition is given, one is drawn among those that hold for 5% to 45% of
        all user pairs, so the answer is neither empty nor everything.
        """
        self.check_size(size)
        rng = random.Random(f"rlm-oolong-pairs:{seed}:{size}")
        approx_lines = max(1, size * CHARS_PER_TOKEN // 88)
        records = generate_records(rng, size, users=max(5, min(40, approx_lines // 15)))
        by_user: dict[int, Counter[str]] = {}
        for r in records:
            by_user.setdefault(r.user, Counter())[r.label] += 1
        users = sorted(by_user)
        conditions = _pair_conditions(rng)
        if condition is not None:
            if not 0 <= condition < len(conditions):
                raise ValueError(f"condition must be 0 to {len(conditions) - 1}")
            chosen = condition
        else:
            total_pairs = max(1, len(users) * (len(users) - 1) // 2)

            def share(index: int) -> float:
                holds = conditions[index].holds
                hits = sum(
                    1 for x, y in itertools.combinations(users, 2) if holds(by_user[x], by_user[y])
                )
                return hits / total_pairs

            shares = [share(i) for i in range(len(conditions))]
            good = [i for i, s in enumerate(shares) if 0.05 <= s <= 0.45]
            some = [i for i, s in enumerate(shares) if s > 0] or list(range(len(conditions)))
            chosen = rng.choice(good) if good else min(some, key=lambda i: abs(shares[i] - 0.25))
        picked = conditions[chosen]
        gold = sorted(
            (x, y)
            for x, y in itertools.combinations(users, 2)
            if picked.holds(by_user[x], by_user[y])
        )
        query = (
            f"{_preamble()}\n\nList every pair of user IDs where {picked.text}. Write each pair "
            "as (smaller id, larger id), one pair per line, each pair once. If no pair "
            "qualifies, answer 'none'."
        )
        return Instance(
            task=self.name,
            size=size,
            seed=seed,
            context="\n".join(r.line() for r in records),
            query=query,
            gold="\n".join(f"{x},{y}" for x, y in gold),
            answer_kind="pairs",
            details={
                "condition": picked.text,
                "condition_index": chosen,
                "users": len(users),
                "lines": len(records),
                "gold_pairs": len(gold),
            },
        )

    def score(self, instance: Instance, answer: str | None) -> float:
        """F1 between the pairs in `answer` and the gold pairs (order inside a pair ignored)."""
        gold = {
            (int(a), int(b))
            for line in instance.gold.splitlines()
            if line
            for a, b in [line.split(",")]
        }
        return pairs_f1(parse_pairs(answer), gold)
