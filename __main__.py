"""Not the package: this checkout's root. `python -m attnscope` run from the directory above a clone
named ``attnscope`` lands here, because Python then imports the clone as an empty namespace package
(no ``__file__``) instead of the installed package (``attnscope/`` in it): say so in one line."""

import sys
from pathlib import Path

checkout = Path(__file__).resolve().parent
sys.stderr.write(
    f"attnscope: error: Python imported the source checkout {checkout} as an empty namespace package "
    f"because it runs from {checkout.parent}: run it from another directory (or use the `attnscope` command)\n"
)
sys.exit(2)
