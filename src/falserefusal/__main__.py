"""`python -m falserefusal ...` is the same as the `falserefusal` command."""

from falserefusal.cli import main

raise SystemExit(main())
