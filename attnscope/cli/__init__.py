"""The `attnscope` command line: thin typer commands that parse, call the core and render.

Importing this module imports neither torch nor the core: each command imports what it needs, so
``attnscope --help`` stays fast. Bad input ends as one line on stderr and exit code 2.
"""

from attnscope.cli.main import app, main

__all__ = ["app", "main"]
