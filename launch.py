#!/usr/bin/env python
"""Start the Studio: web UI + REST API and a queue worker process.

    python launch.py [--host 127.0.0.1] [--port 7860] [--data-dir DIR] [--no-worker] [--workers N]
                     [--auth auto|on|off] [--public-url URL] [--allowed-host NAME] [--share]

Same as ``studio serve``. Off loopback (or with --public-url/--share) accounts are on.
"""
import sys


def main(argv: list[str] | None = None) -> int:
    from studio.cli import main as cli_main

    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
    return cli_main(["serve", *argv])


if __name__ == "__main__":
    sys.exit(main())
