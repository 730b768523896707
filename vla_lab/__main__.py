"""``python -m vla_lab ...`` and the ``vla-lab`` console script: the command line (also under ``torchrun``).

Ctrl-C is honoured from the first moment. Importing the command line takes seconds (torch, transformers); an
interrupt then exits 130 with one line, before anything was written. Once it is imported, an interrupt is
the ``KeyboardInterrupt`` that :func:`vla_lab.cli.main` turns into the same line after its clean-ups.
"""

import sys

from vla_lab.interrupts import exit_until_loaded


def main() -> int:
    """Run ``vla-lab`` with the arguments of this process."""
    words = [a for a in sys.argv[1:2] if not a.startswith("-")]
    loaded = exit_until_loaded(" ".join(["vla-lab", *words]))
    from vla_lab.cli import main as run

    loaded()
    return run()


if __name__ == "__main__":
    raise SystemExit(main())
