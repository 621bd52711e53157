"""A `clitest/...` model provider for command-line tests: scripted models, no network.

- `clitest/echo`: answers with a description of `context` (its files, or its length).
- `clitest/salary`: computes the salary task's answer with code, in one iteration.
- `clitest/direct`: reads the whole prompt and answers the salary query, unless the
  prompt is over 100,000 characters (then the provider refuses: context too long).
- `clitest/down`: the provider is unavailable.
- `clitest/nokey`: building the model fails for a missing key.
- `clitest/chatty`: runs code forever and never answers.
- `clitest/interrupt`: presses Ctrl-C during its second call.
"""

from __future__ import annotations

import asyncio
import re
import signal
from collections.abc import Callable

import pytest

import rlm
from rlm.errors import ContextTooLongError, MissingAPIKeyError, ProviderUnavailableError
from rlm.providers.base import Model, ModelRequest
from rlm.testing import FunctionModel

ECHO_CODE = """\
```repl
if isinstance(context, dict):
    FINAL("files: " + ", ".join(sorted(context)))
else:
    FINAL(f"{len(context)} characters")
```"""

SALARY_CODE = """\
I'll parse the records and sum the department's salaries.
```repl
import re
rows = re.findall(r"Department: ([^|]+?) \\| .*?Salary: \\$([\\d,]+)", context)
total = sum(int(s.replace(",", "")) for d, s in rows if d == {department!r})
print(len(rows), "records", total)
FINAL(str(total))
```"""

RECORD = re.compile(r"Department: ([^|]+?) \| .*?Salary: \$([\d,]+)")


def _department(text: str) -> str:
    match = re.search(r"total salary of all (.+?) employees", text)
    return match[1] if match else "Engineering"


def _echo(name: str) -> Model:
    return FunctionModel(lambda req: ECHO_CODE, name=name)


def _salary(name: str) -> Model:
    def reply(request: ModelRequest) -> str:
        return SALARY_CODE.format(department=_department(request.messages[1].content))

    return FunctionModel(reply, name=name)


def _direct(name: str) -> Model:
    def reply(request: ModelRequest) -> str:
        prompt = request.messages[-1].content
        if len(prompt) > 100_000:
            raise ContextTooLongError("this prompt is longer than the model accepts", model=name)
        department = _department(prompt)
        total = sum(int(s.replace(",", "")) for d, s in RECORD.findall(prompt) if d == department)
        return f"The total is ${total:,}."

    return FunctionModel(reply, name=name)


def _down(name: str) -> Model:
    def reply(request: ModelRequest) -> str:
        raise ProviderUnavailableError("the server answered HTTP 503 after 3 attempts", model=name)

    return FunctionModel(reply, name=name)


def _nokey(name: str) -> Model:
    raise MissingAPIKeyError("CLITEST_API_KEY is not set: export it or pass api_key=...")


def _chatty(name: str) -> Model:
    return FunctionModel(lambda req: "```repl\nprint('still looking')\n```", name=name)


def _interrupt(name: str) -> Model:
    calls = 0

    async def reply(request: ModelRequest) -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            return "```repl\nfound = 41\nprint(found)\n```"
        signal.raise_signal(signal.SIGINT)  # what Ctrl-C does
        await asyncio.sleep(30)
        return "FINAL(never reached)"

    return FunctionModel(reply, name=name)


FACTORIES: dict[str, Callable[[str], Model]] = {
    "echo": _echo,
    "salary": _salary,
    "direct": _direct,
    "down": _down,
    "nokey": _nokey,
    "chatty": _chatty,
    "interrupt": _interrupt,
}


def clitest_model(name: str) -> Model:
    base = name.split(":", 1)[0]
    if base not in FACTORIES:
        raise rlm.errors.UnknownModelError(f"clitest has no model {name!r}")
    return FACTORIES[base](f"clitest-{name}")


@pytest.fixture(autouse=True, scope="session")
def _clitest_provider() -> None:
    rlm.register_provider("clitest", clitest_model)
    rlm.set_price("clitest-salary", rlm.Price(input=0.15, output=0.60))
    rlm.set_price("clitest-direct", rlm.Price(input=2.50, output=10.00))
