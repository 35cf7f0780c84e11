"""``python -m minituner``: the command line (minituner.cli), Ctrl-C included.

A Ctrl-C while the CLI is still importing (torch takes a while) is one ``error:`` line
and exit status 130, like one during a command.
"""

import sys


def _run() -> int:
    try:
        from minituner.cli import main
    except KeyboardInterrupt:
        print("error: interrupted (Ctrl-C)", file=sys.stderr)
        return 130
    return main()


sys.exit(_run())
