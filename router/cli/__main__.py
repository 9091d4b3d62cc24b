"""``python -m router.cli``: the ``polyroute`` command line."""

from router.cli import main

raise SystemExit(main())
