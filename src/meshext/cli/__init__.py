"""The ``meshext`` command."""
