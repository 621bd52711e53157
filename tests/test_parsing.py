"""The fenced-code and FINAL-marker parser: examples for each documented case, and
properties over arbitrary code, answers and text."""

from __future__ import annotations

import string

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rlm import ModelResponse
from rlm.strategies import FencedCodeParser, FinalMarker
from rlm.strategies.parsing import find_final_marker

PARSER = FencedCodeParser()


def parse(text: str) -> tuple[list[str], FinalMarker | None]:
    parsed = PARSER.parse(ModelResponse(text=text))
    return [b.code for b in parsed.code_blocks], parsed.final


# -- code blocks -----------------------------------------------------------------------


def test_repl_and_python_fences_run_in_order() -> None:
    text = "Look:\n```repl\nx = 1\n```\nthen\n```python\nprint(x)\n```\n"
    assert parse(text)[0] == ["x = 1", "print(x)"]


def test_other_languages_and_bare_fences_are_not_code() -> None:
    text = '```json\n{"a": 1}\n```\n```\nplain\n```\n```bash\nls\n```'
    assert parse(text)[0] == []


def test_fence_inside_list_item_is_dedented() -> None:
    text = "1. First:\n   ```repl\n   for i in range(2):\n       print(i)\n   ```\n"
    assert parse(text)[0] == ["for i in range(2):\n    print(i)"]


def test_crlf_line_endings() -> None:
    text = "```repl\r\nx = 1\r\nprint(x)\r\n```\r\nFINAL(done)\r\n"
    code, final = parse(text)
    assert code == ["x = 1\nprint(x)"]
    assert final == FinalMarker("answer", "done")


def test_unclosed_fence_runs_to_the_end() -> None:
    assert parse("```repl\nprint(1)\nprint(2)")[0] == ["print(1)\nprint(2)"]


def test_longer_fence_holds_triple_backticks() -> None:
    text = '````repl\ns = """\n```\n"""\nprint(s)\n````'
    assert parse(text)[0] == ['s = """\n```\n"""\nprint(s)']


def test_empty_block_is_skipped() -> None:
    assert parse("```repl\n\n   \n```")[0] == []


# -- FINAL markers ---------------------------------------------------------------------


def test_balanced_parentheses() -> None:
    assert find_final_marker("FINAL(f(1) (approx))") == FinalMarker("answer", "f(1) (approx)")


def test_parentheses_inside_quotes_do_not_count() -> None:
    assert find_final_marker('FINAL(the smiley ":)" wins)') == FinalMarker(
        "answer", 'the smiley ":)" wins'
    )


def test_quoted_string_literal_is_unwrapped() -> None:
    assert find_final_marker('FINAL("Paris")') == FinalMarker("answer", "Paris")
    assert find_final_marker("FINAL('it\\'s 5')") == FinalMarker("answer", "it's 5")


def test_apostrophes_in_prose_answers() -> None:
    assert find_final_marker("FINAL(it's 42) and that's all") == FinalMarker("answer", "it's 42")


def test_multiline_answer() -> None:
    text = "Done.\nFINAL(line one\nline two (b)\nline three)\nthanks"
    assert find_final_marker(text) == FinalMarker("answer", "line one\nline two (b)\nline three")


def test_markdown_emphasis_around_marker() -> None:
    assert find_final_marker("**FINAL(42)**") == FinalMarker("answer", "42")
    assert find_final_marker("> _FINAL(yes)_") == FinalMarker("answer", "yes")
    assert find_final_marker("- FINAL_VAR(total)") == FinalMarker("var", "total")


def test_text_after_closing_parenthesis_is_not_the_answer() -> None:
    assert find_final_marker("FINAL(7) because I counted") == FinalMarker("answer", "7")


def test_first_marker_wins() -> None:
    assert find_final_marker("FINAL(a)\nFINAL(b)") == FinalMarker("answer", "a")


def test_marker_in_code_fence_or_inline_code_is_not_a_marker() -> None:
    assert find_final_marker("```repl\nFINAL(1)\n```") is None
    assert find_final_marker("I will call `FINAL(x)` later.") is None
    assert find_final_marker("```\nFINAL(no)\n```\nFINAL(yes)") == FinalMarker("answer", "yes")


def test_marker_mid_sentence_is_prose() -> None:
    assert find_final_marker("When done I will write FINAL(answer) here.") is None


def test_final_var_takes_a_name() -> None:
    assert find_final_marker("FINAL_VAR(result)") == FinalMarker("var", "result")
    assert find_final_marker("FINAL_VAR('result')") == FinalMarker("var", "result")


def test_unclosed_marker_is_no_answer() -> None:
    assert find_final_marker("FINAL(never closed") is None


def test_code_and_marker_in_one_reply() -> None:
    code, final = parse("```repl\ntotal = 3\n```\nFINAL_VAR(total)")
    assert code == ["total = 3"]
    assert final == FinalMarker("var", "total")


# -- properties --------------------------------------------------------------------------

code_line = st.text(
    alphabet=st.characters(blacklist_categories=["Cs", "Cc"], blacklist_characters="\r"),
    max_size=40,
)
code_text = (
    st.lists(code_line, min_size=1, max_size=8).map("\n".join).filter(lambda c: c.strip() != "")
)


def fence_for(code: str) -> str:
    longest = run = 0
    for ch in code:
        run = run + 1 if ch == "`" else 0
        longest = max(longest, run)
    # A closing fence is a line of only fence characters: pick a longer run than any in
    # the code, and let hypothesis avoid lines that are only backticks of that length.
    return "`" * max(3, longest + 1)


@given(code=code_text, lang=st.sampled_from(["repl", "python", "py"]))
@settings(suppress_health_check=[HealthCheck.too_slow])
def test_any_code_in_a_fence_parses_back_exactly(code: str, lang: str) -> None:
    fence = fence_for(code)
    text = f"Some prose.\n{fence}{lang}\n{code}\n{fence}\nMore prose."
    assert parse(text)[0] == [code]


@given(code=code_text, indent=st.integers(min_value=1, max_value=6))
def test_indented_fence_parses_back_exactly(code: str, indent: int) -> None:
    fence = fence_for(code)
    pad = " " * indent
    body = "\n".join(pad + line for line in code.split("\n"))
    text = f"- item\n{pad}{fence}repl\n{body}\n{pad}{fence}\n"
    assert parse(text)[0] == [code]


def balanced(text: str) -> bool:
    depth = 0
    for ch in text:
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if depth < 0:
            return False
    return depth == 0


answer_chars = string.ascii_letters + string.digits + " .,;:!?-+*/=()[]{}$%#@\n" + "éß中😀"
plain_answer = (
    st.text(alphabet=answer_chars, min_size=1, max_size=60)
    .map(str.strip)
    .filter(lambda a: a != "" and balanced(a))
)


@given(answer=plain_answer, prefix=st.sampled_from(["", "Done.\n", "**", "> ", "1. "]))
def test_final_round_trips_any_balanced_answer(answer: str, prefix: str) -> None:
    suffix = "**" if prefix == "**" else ""
    assert find_final_marker(f"{prefix}FINAL({answer}){suffix}\ntrailing text") == FinalMarker(
        "answer", answer
    )


@given(answer=st.text(max_size=60))
def test_final_of_a_string_literal_round_trips_anything(answer: str) -> None:
    assert find_final_marker(f"FINAL({answer!r})") == FinalMarker("answer", answer)


@given(text=st.text(max_size=300))
def test_parser_never_raises(text: str) -> None:
    PARSER.parse(ModelResponse(text=text))


@given(code=code_text, answer=plain_answer)
def test_markers_inside_code_never_count(code: str, answer: str) -> None:
    inner = f"{code}\nFINAL({answer})\nFINAL_VAR(x)"
    fence = fence_for(inner)
    text = f"Here is code:\n{fence}repl\n{inner}\n{fence}\nand inline `FINAL({answer})` too."
    assert parse(text)[1] is None


@given(
    before=st.text(alphabet=string.ascii_letters + " \n", max_size=40),
    name=st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,15}", fullmatch=True),
)
def test_final_var_round_trips_names(before: str, name: str) -> None:
    assert find_final_marker(f"{before}\nFINAL_VAR({name})") == FinalMarker("var", name)
