"""Gaussian-splatting engines: file formats, sorted-alpha and weighted-sum renderers,
planar parsing and reconstruction. Kept import-light: heavy modules load on use."""
