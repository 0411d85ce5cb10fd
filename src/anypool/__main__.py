"""``python -m anypool``: the ``anypool`` command line."""

from anypool.cli import main

raise SystemExit(main())
