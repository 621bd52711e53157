"""The `rlm_cassette` pytest fixture, installed as a pytest plugin with rlm.

```python
def test_churn(rlm_cassette):
    model = rlm_cassette("openai/gpt-4o-mini")  # resolved only to record: CI needs no key
    result = rlm.run("Which customers churned?", docs, model=model)
    assert "ACME" in result.answer
```

The first run records the real model's replies into
`<test folder>/cassettes/<test module>/<test name>.jsonl`; later runs replay them with no
request sent (commit the file). The mode comes from, in order: the fixture's `mode=`
argument, `pytest --rlm-record-mode=MODE`, the `RLM_RECORD_MODE` variable, and otherwise
`"none"` when `CI` is set (a missing cassette fails instead of calling a paid API) and
`"once"` elsewhere. Modes are those of `rlm.testing.Cassette`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from rlm.errors import ConfigurationError
from rlm.providers.base import Model
from rlm.testing.cassette import RECORD_MODES, Cassette, RecordMode

CassetteFactory = Callable[..., Cassette]


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("rlm")
    group.addoption(
        "--rlm-record-mode",
        choices=RECORD_MODES,
        default=None,
        help="how rlm_cassette treats cassettes: once (record if missing), new, all, none",
    )


def _mode(config: pytest.Config) -> RecordMode:
    chosen: Any = config.getoption("--rlm-record-mode") or os.environ.get("RLM_RECORD_MODE")
    if chosen is None:
        return "none" if os.environ.get("CI") else "once"
    if chosen not in RECORD_MODES:
        raise ConfigurationError(
            f"RLM_RECORD_MODE must be one of {', '.join(RECORD_MODES)}, not {chosen!r}"
        )
    mode: RecordMode = chosen
    return mode


@pytest.fixture
def rlm_cassette(request: pytest.FixtureRequest) -> Iterator[CassetteFactory]:
    """A factory of `Cassette`s stored next to the test (see the module docstring).

    Call it as `rlm_cassette(model, name=None, mode=None)`; `name` defaults to the test's
    name, so call it with distinct names to use several cassettes in one test.
    """
    made: list[Cassette] = []
    test_file = Path(str(request.node.path))
    folder = test_file.parent / "cassettes" / test_file.stem

    def make(
        model: str | Model | None = None, *, name: str | None = None, mode: RecordMode | None = None
    ) -> Cassette:
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", name or request.node.name).strip("_")
        cassette = Cassette(folder / f"{stem}.jsonl", model, mode=mode or _mode(request.config))
        made.append(cassette)
        return cassette

    yield make
    for cassette in made:
        cassette.close()
