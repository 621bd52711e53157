"""The loop knows protocols only (docs/architecture.md): model strings are resolved, default
subscribers wired and the pricing ledger built by `rlm.engine.RLM`, never by the loop."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import rlm

PACKAGE = Path(rlm.__file__).parent
FORBIDDEN = ("rlm.engine", "rlm.providers.registry", "rlm.providers.pricing", "rlm.telemetry")


def imported_modules(path: Path) -> set[str]:
    """Every module `path` imports, at the top or inside a function."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


@pytest.mark.parametrize("module", ["loop.py", "replies.py", "subcalls.py", "model_calls.py"])
def test_the_loop_imports_no_registry_pricing_telemetry_or_engine(module: str) -> None:
    imported = imported_modules(PACKAGE / module)
    wrong = sorted(n for n in imported if n.startswith(FORBIDDEN) or n == "rlm.providers")
    assert wrong == [], f"{module} imports {wrong}"


def test_the_engine_keeps_the_public_names_users_import() -> None:
    from rlm.engine import RLM, ReplSpec, ToolsSpec

    assert RLM is rlm.RLM
    assert ReplSpec is not None and ToolsSpec is not None


# Modules split out of a larger one: the part that was moved out must not import the
# module that uses it (the import goes one way, so neither can grow a cycle).
ONE_WAY = [
    ("repl/connection.py", "rlm.repl.subprocess"),
    ("model_calls.py", "rlm.loop"),
    ("replies.py", "rlm.loop"),
    ("cli_commands.py", "rlm.cli"),
    ("cli_output.py", "rlm.cli"),
    ("cli_output.py", "rlm.cli_commands"),
    ("telemetry/records.py", "rlm.telemetry.trajectory"),
    # shared by trajectories and batch results, so it imports neither
    ("_jsonl.py", "rlm.telemetry"),
    ("_jsonl.py", "rlm.batch"),
]


@pytest.mark.parametrize(("module", "user"), ONE_WAY)
def test_a_split_out_module_does_not_import_its_user(module: str, user: str) -> None:
    imported = imported_modules(PACKAGE / module)
    wrong = sorted(n for n in imported if n == user or n.startswith(f"{user}."))
    assert wrong == [], f"{module} imports {wrong}, which imports it"
