"""``python -m vla_lab ...`` runs the ``vla-lab`` command line (also under ``torchrun``)."""

from vla_lab.cli import main

raise SystemExit(main())
