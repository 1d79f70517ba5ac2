"""Engines: pure compute packages. They never import studio/, ui/ or storage/."""
