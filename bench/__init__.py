"""Benchmarks: each module has main(argv) -> int and prints one JSON object."""
from __future__ import annotations

import argparse


def add_threads_arg(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1 by default: with 2 threads on a shared 2-core box OpenMP oversubscription "
                         "makes timings swing 10x+)")


def apply_threads(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(max(1, args.threads))
