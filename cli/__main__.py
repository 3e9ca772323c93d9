"""``python -m atcdn.cli``: the same as the ``atcdn`` command."""

from atcdn.cli.main import main

main()
