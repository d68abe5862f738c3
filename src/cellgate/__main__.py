"""``python -m cellgate``: the same as the ``cellgate`` command."""

from cellgate.cli import main

main()
