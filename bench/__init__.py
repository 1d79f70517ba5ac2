"""Benchmarks: each module has main(argv) -> int and prints one JSON object."""
