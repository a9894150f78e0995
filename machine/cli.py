"""The commands' error convention: a bad input is one line on stderr and exit code 2, never a traceback.

Every input check in the project raises ValueError with a message that says what is wrong and how to
fix it; a command wraps its `run(args)` in `cli` so that the user sees just that message.

    return cli(run, parse_args(argv), "probe.py")
"""
import sys


def cli(run_fn, args, prog):
    """Run a script's `run(args)`; a ValueError (bad input) is one line on stderr and exit code 2."""
    try:
        return run_fn(args)
    except ValueError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
