"""``python -m vla_lab ...`` and the ``vla-lab`` console script: the command line (also under ``torchrun``).

Ctrl-C is honoured from the first moment. Importing the command line takes seconds (torch, transformers); an
interrupt then exits 130 with one line, before anything was written. Once it is imported, an interrupt is
the ``KeyboardInterrupt`` that :func:`vla_lab.cli.main` turns into the same line after its clean-ups.
"""

import os
import signal
import sys
from types import FrameType


def main() -> int:
    """Run ``vla-lab`` with the arguments of this process."""
    words = [a for a in sys.argv[1:2] if not a.startswith("-")]
    prog = " ".join(["vla-lab", *words])
    ready = False

    def interrupted(signum: int, frame: FrameType | None) -> None:
        if ready:
            raise KeyboardInterrupt
        if int(os.environ.get("RANK", "0") or 0) == 0:  # under torchrun, rank 0 says it for all
            sys.stderr.write(f"{prog}: error: interrupted\n")
            sys.stderr.flush()
        os._exit(130)

    signal.signal(signal.SIGINT, interrupted)
    from vla_lab.cli import main as run

    ready = True
    return run()


if __name__ == "__main__":
    raise SystemExit(main())
