"""Run the command-line programs in-process and capture exit code and output."""

from __future__ import annotations

import sys
from contextlib import redirect_stderr, redirect_stdout
from io import StringIO


def run_cli(main, args: list[str]) -> tuple[int, str, str]:
    """Call a ``main()`` with ``args`` as argv; return (exit code, stdout, stderr)."""
    out, err = StringIO(), StringIO()
    old = sys.argv
    sys.argv = ["prog", *[str(a) for a in args]]
    code = 0
    try:
        with redirect_stdout(out), redirect_stderr(err):
            main()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.argv = old
    return code, out.getvalue(), err.getvalue()


def augment(args: list[str]) -> tuple[int, str, str]:
    from styleswap.generator.cli import main

    return run_cli(main, args)


def train(args: list) -> tuple[int, str, str]:
    from styleswap.trainer.cli import main

    return run_cli(main, [str(a) for a in args])


def ok(result: tuple[int, str, str]) -> str:
    """stdout of a command that must succeed (the assertion shows its output otherwise)."""
    code, out, err = result
    assert code == 0, (code, out, err)
    return out
