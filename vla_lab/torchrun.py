"""``python -m vla_lab.torchrun [torchrun options] COMMAND ...``: ``vla-lab COMMAND`` on several processes, as
``torchrun [torchrun options] -m vla_lab COMMAND ...`` runs it, with the command line's manners.

torchrun reports a Ctrl-C with its own warnings and a Python traceback (exit 1), and a failed worker with a
``ChildFailedError`` report, after the workers have printed their one line each. Here torch's own launcher
(``torch.distributed.run``, same options) runs with its logs quiet: the workers' lines are the whole report
(rank 0's only, for an interrupt or a refused input, which every rank meets alike), an interrupt exits 130 and a
failed run exits with its first failed worker's status. Ctrl-C is honoured from the first moment.
"""

from __future__ import annotations

import logging
import signal
import sys
from typing import Any, NoReturn

from vla_lab.interrupts import exit_until_loaded

PROG = "vla-lab torchrun"


def main(argv: list[str] | None = None) -> int:
    """Launch ``vla-lab`` under torch's launcher with ``argv`` (default: this process's arguments)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    loaded = exit_until_loaded(PROG)
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    loaded()
    parser = get_args_parser()

    def one_line(message: str) -> NoReturn:
        print(f"{PROG}: error: {message}", file=sys.stderr)
        raise SystemExit(2)

    parser.error = one_line  # type: ignore[method-assign]
    try:
        args = parser.parse_args(argv)
        if args.module or args.no_python:
            one_line(f"-m/--module, --no-python: got {'-m' if args.module else '--no-python'}, expected the vla-lab "
                     "command right after the torchrun options (it runs as -m vla_lab)")
        command = [args.training_script, *args.training_script_args]
        args.training_script, args.training_script_args, args.module = "vla_lab", command, True
        for name in list(logging.root.manager.loggerDict):  # each of torch's elastic loggers has its own level
            if name.startswith("torch.distributed"):
                logging.getLogger(name).setLevel(logging.CRITICAL)
        run(args)
    except (KeyboardInterrupt, SignalException):
        return 130  # the workers got the signal too and said so (rank 0)
    except ChildFailedError as exc:
        rank, status = _first_failure(exc)
        if 0 not in exc.failures:  # rank 0 said nothing: the failed ranks kept a refused input to themselves
            print(f"{PROG}: error: rank {rank}: got exit status {status}, expected 0 (rank 0 ran without error)",
                  file=sys.stderr)
        return status
    return 0


def _first_failure(exc: Any) -> tuple[int, int]:
    """(global rank, exit status) of the first worker that failed (status 130 or 1 when a signal killed it)."""
    rank, failure = exc.get_first_failure()
    code = int(failure.exitcode)
    if code < 0:
        code = 130 if -code == signal.SIGINT else 1
    return int(rank), code


if __name__ == "__main__":
    raise SystemExit(main())
