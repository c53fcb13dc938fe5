"""``python -m meshext`` runs the ``meshext`` command."""

from meshext.cli.main import main

main()
