"""Compile `.pyc` files before timing, as installing a package does.

`pip install` compiles a package's modules at install time, and Python writes a `.pyc`
the first time it imports a module anywhere that allows it, so an installed library
never compiles its source again. This machine (and the CI image) sets
`PYTHONDONTWRITEBYTECODE=1`, and `uv sync` installs rlm editable without compiling it:
without this step every benchmark process would compile rlm's modules (and the SDKs')
from source on first import, about 20 ms inside a "first run" that no user of an
installed rlm pays. Up-to-date files are skipped, so only the first call takes long.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

HERE = Path(__file__).resolve().parent


def compile_for(python: str, *extra: Path) -> None:
    """Compile the site-packages of `python`'s environment and the `extra` folders."""
    out = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    )
    folders = [out.stdout.strip(), *(str(p) for p in extra)]
    subprocess.run(
        [python, "-m", "compileall", "-q", "-j", "0", *folders],
        stdout=subprocess.DEVNULL,
        check=False,  # a broken file in some package must not stop the benchmark
    )
