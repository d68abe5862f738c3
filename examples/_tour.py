"""What both tours share: printing a step.

Imported as ``_tour`` because Python puts a script's own directory first on
``sys.path``, so the tours run from any working directory.
"""

from __future__ import annotations


def say(line: str = "") -> None:
    print(line, flush=True)
