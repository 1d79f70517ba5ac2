#!/usr/bin/env python
"""Start the Studio: web UI + REST API on loopback and a queue worker process.

    python launch.py --host 127.0.0.1 --port 7860 --data-dir DIR [--no-worker] [--workers N]
"""
import argparse
import sys

from studio.cli import add_serve_args


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_serve_args(ap)
    args = ap.parse_args(argv)
    from studio.cli import main as cli_main

    forward = ["serve", "--host", args.host, "--port", str(args.port)]
    if args.data_dir:
        forward += ["--data-dir", args.data_dir]
    if args.no_worker:
        forward.append("--no-worker")
    if args.workers:
        forward += ["--workers", str(args.workers)]
    if args.insecure_listen:
        forward.append("--insecure-listen")
    return cli_main(forward)


if __name__ == "__main__":
    sys.exit(main())
