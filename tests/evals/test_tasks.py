"""The evaluation tasks: deterministic generation, gold answers that match the data, scorers."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from rlm.evals import Instance, get_task, task_names
from rlm.evals.base import extract_number
from rlm.evals.oolong import _TEMPLATES, LABELS, pairs_f1, parse_pairs

ALL_TASKS = ["niah", "oolong", "oolong-pairs", "salary"]
SMALL = {"salary": 200, "niah": 2_000, "oolong": 2_000, "oolong-pairs": 2_000}


def test_registry_lists_every_task_and_names_them_on_a_typo() -> None:
    assert task_names() == ALL_TASKS
    with pytest.raises(KeyError, match="known tasks: niah, oolong, oolong-pairs, salary"):
        get_task("salaries")


@pytest.mark.parametrize("name", ALL_TASKS)
def test_generation_is_deterministic_per_seed(name: str) -> None:
    task = get_task(name)
    first = task.generate(SMALL[name], seed=7)
    again = task.generate(SMALL[name], seed=7)
    other = task.generate(SMALL[name], seed=8)
    assert first == again
    assert first.context != other.context


@pytest.mark.parametrize("name", ALL_TASKS)
def test_gold_answer_scores_full_marks_and_nothing_scores_zero(name: str) -> None:
    task = get_task(name)
    for seed in range(3):
        instance = task.generate(SMALL[name], seed=seed)
        assert instance.score(instance.gold) == 1.0
        assert instance.score(None) == 0.0
        assert instance.score("I don't know.") == 0.0


@pytest.mark.parametrize("name", ALL_TASKS)
def test_sizes_out_of_range_are_refused(name: str) -> None:
    task = get_task(name)
    with pytest.raises(ValueError, match=name):
        task.generate(0)


# -- salary -----------------------------------------------------------------------------

RECORD = re.compile(r"Department: ([^|]+?) \| .*?Salary: \$([\d,]+)")


def test_salary_records_look_like_the_seed_and_the_gold_is_their_sum() -> None:
    instance = get_task("salary").generate(1_000, seed=3)
    lines = instance.context.splitlines()
    assert len(lines) == 1_000
    assert lines[41].startswith("Employee #00042 | Name: ")
    assert 220 <= len(instance.context) / len(lines) <= 260  # about 240 characters a record
    total = sum(
        int(m[2].replace(",", "")) for m in map(RECORD.search, lines) if m and m[1] == "Engineering"
    )
    assert instance.gold == str(total)
    assert instance.query.startswith("What is the total salary of all Engineering employees?")


def test_salary_can_ask_about_another_department() -> None:
    instance = get_task("salary").generate(500, seed=1, department="Sales")
    lines = instance.context.splitlines()
    total = sum(int(m[2].replace(",", "")) for m in map(RECORD.search, lines) if m[1] == "Sales")
    assert instance.gold == str(total)
    assert "Sales employees" in instance.query
    with pytest.raises(ValueError, match="unknown department"):
        get_task("salary").generate(10, department="Astronauts")


def test_salary_scorer_accepts_usual_ways_of_writing_the_total_and_nothing_else() -> None:
    instance = get_task("salary").generate(100, seed=0)
    total = int(instance.gold)
    for written in (
        f"{total}",
        f"${total:,}",
        f"The total salary is **${total:,}**.",
        f"Answer: {total:,}",
        f"{total}.0",
    ):
        assert instance.score(written) == 1.0, written
    assert instance.score(f"${total + 50:,}") == 0.0
    assert instance.score(f"${total // 2:,}") == 0.0


def test_salary_scales_to_100k_records() -> None:
    instance = get_task("salary").generate(100_000, seed=0)
    assert instance.context.count("\n") == 99_999
    assert instance.context.splitlines()[-1].startswith("Employee #100000 |")


# -- niah -------------------------------------------------------------------------------


def test_niah_hides_one_needle_at_the_requested_depth() -> None:
    task = get_task("niah")
    for depth in (0.0, 0.5, 1.0):
        instance = task.generate(8_000, seed=2, depth=depth)
        key = instance.details["key"]
        needle = f"One of the special magic numbers for {key} is: {instance.gold}."
        assert instance.context.count("special magic number") == 1
        position = instance.context.index(needle) / len(instance.context)
        assert abs(position - depth) < 0.02
        assert key in instance.query
        assert abs(instance.context_tokens - 8_000) / 8_000 < 0.01


def test_niah_distractors_are_other_keys() -> None:
    instance = get_task("niah").generate(4_000, seed=5, distractors=3)
    keys = re.findall(r"magic numbers for (\S+) is", instance.context)
    assert len(keys) == 4 and len(set(keys)) == 4
    assert keys.count(instance.details["key"]) == 1


def test_niah_scores_by_string_match() -> None:
    instance = get_task("niah").generate(1_000, seed=0)
    assert instance.score(f"The special magic number is {instance.gold}.") == 1.0
    assert instance.score(str(int(instance.gold) + 1)) == 0.0


def test_niah_reaches_a_million_tokens() -> None:
    instance = get_task("niah").generate(1_000_000, seed=1)
    assert instance.context_chars >= 3_990_000
    assert instance.gold in instance.context


# -- oolong -----------------------------------------------------------------------------


def _template_patterns() -> list[tuple[re.Pattern[str], str]]:
    patterns = []
    for label, templates in _TEMPLATES.items():
        for template in templates:
            regex = re.sub(r"\\\{\w+\\\}", ".+?", re.escape(template))
            patterns.append((re.compile(f"^{regex}$"), label))
    return patterns


def relabel(context: str) -> list[tuple[str, str, str]]:
    """(date, user, label) of each line, found independently from the question's template."""
    patterns = _template_patterns()
    out = []
    for line in context.splitlines():
        match = re.fullmatch(r"Date: (.+?) \|\| User: (\d+) \|\| Instance: (.+)", line)
        assert match, line
        labels = {label for pattern, label in patterns if pattern.match(match[3])}
        assert len(labels) == 1, (line, labels)
        out.append((match[1], match[2], labels.pop()))
    return out


@pytest.mark.parametrize(
    "question",
    ["count", "most_frequent", "least_frequent", "compare", "user_count", "date_count"],
)
def test_oolong_gold_answers_follow_from_the_lines(question: str) -> None:
    instance = get_task("oolong").generate(4_000, seed=11, question=question)
    rows = relabel(instance.context)
    counts = Counter(label for _, _, label in rows)
    details = instance.details
    assert details["question_type"] in (question, "count")
    if details["question_type"] == "count":
        assert instance.gold == str(counts[details["label"]])
    elif question == "most_frequent":
        assert instance.gold == counts.most_common(1)[0][0]
    elif question == "least_frequent":
        assert instance.gold == min(LABELS, key=lambda label: counts[label])
    elif question == "compare":
        a, b = details["labels"]
        expected = (
            "more common than"
            if counts[a] > counts[b]
            else "less common than"
            if counts[a] < counts[b]
            else "same frequency as"
        )
        assert instance.gold == expected
    elif question == "user_count":
        user, label = str(details["user"]), details["label"]
        assert instance.gold == str(sum(1 for _, u, lab in rows if u == user and lab == label))
    else:
        from datetime import date, datetime

        start, end = date.fromisoformat(details["start"]), date.fromisoformat(details["end"])
        n = sum(
            1
            for d, _, lab in rows
            if start <= datetime.strptime(d, "%b %d, %Y").date() <= end and lab == details["label"]
        )
        assert instance.gold == str(n)
    assert "labels are not written" in instance.query
    assert not any(label in instance.context for label in ("numeric value", "human being"))


def test_oolong_numbers_score_three_quarters_per_unit_of_error() -> None:
    instance = get_task("oolong").generate(3_000, seed=1, question="count")
    gold = int(instance.gold)
    assert instance.score(f"Answer: {gold}") == 1.0
    assert instance.score(str(gold + 1)) == pytest.approx(0.75)
    assert instance.score(f"There are {gold - 2} such questions.") == pytest.approx(0.5625)
    assert instance.score(str(gold + 40)) < 0.001


def test_oolong_labels_score_exactly() -> None:
    instance = get_task("oolong").generate(3_000, seed=4, question="most_frequent")
    gold = instance.gold
    wrong = next(label for label in LABELS if label != gold)
    assert instance.score(f"The most common label is **{gold}**.") == 1.0
    assert instance.score(gold.upper()) == 1.0
    assert instance.score(wrong) == 0.0
    assert instance.score(f"{gold} or {wrong}") == 0.0


def test_oolong_comparisons_score_exactly() -> None:
    instance = get_task("oolong").generate(3_000, seed=2, question="compare")
    assert instance.score(f"'{instance.gold}'") == 1.0
    wrong = next(c for c in ("more common than", "less common than") if c != instance.gold)
    assert instance.score(wrong) == 0.0


def test_oolong_pairs_gold_follows_from_the_lines() -> None:
    instance = get_task("oolong-pairs").generate(6_000, seed=3, condition=0)
    rows = relabel(instance.context)
    a, b = re.findall(r"'([^']+)'", instance.details["condition"])
    has = {u for _, u, lab in rows if lab in (a, b)}
    users = sorted({u for _, u, _ in rows})
    gold = {
        (int(x), int(y))
        for i, x in enumerate(users)
        for y in users[i + 1 :]
        if x in has and y in has
    }
    got = {tuple(map(int, line.split(","))) for line in instance.gold.splitlines()}
    assert got == gold


def test_oolong_pairs_scores_f1() -> None:
    instance = get_task("oolong-pairs").generate(6_000, seed=9)
    gold = [tuple(map(int, line.split(","))) for line in instance.gold.splitlines()]
    assert len(gold) >= 4
    as_text = "\n".join(f"({b}, {a})" for a, b in gold)  # reversed order inside pairs is fine
    assert instance.score(as_text) == 1.0
    half = "\n".join(f"({a}, {b})" for a, b in gold[: len(gold) // 2])
    assert 0.5 < instance.score(half) < 1.0
    assert instance.score("(1, 2)\n(3, 4)") == 0.0
    assert instance.score("none") == 0.0


def test_pair_parsing_and_f1() -> None:
    assert parse_pairs("(1, 2), (3,4)\n(2, 1)") == {(1, 2), (3, 4)}
    assert parse_pairs("10, 20\n30 - 40\nnot a pair 5") == {(10, 20), (30, 40)}
    assert pairs_f1(set(), set()) == 1.0
    assert pairs_f1({(1, 2)}, {(1, 2), (3, 4)}) == pytest.approx(2 / 3)


def test_extract_number_reads_the_answer_not_the_reasoning() -> None:
    assert extract_number("Answer: 42") == 42
    assert extract_number("I counted 3 chunks.\nAnswer: $1,200") == 1200
    assert extract_number("**17**") == 17
    assert extract_number("about 12.5") == 12.5
    assert extract_number("no idea") is None


def test_instances_report_their_size() -> None:
    instance: Instance = get_task("oolong").generate(8_000, seed=0)
    assert abs(instance.context_tokens - 8_000) / 8_000 < 0.02
    assert instance.context_chars == len(instance.context)
