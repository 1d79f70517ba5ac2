"""Relighting: HDR environment maps in the PQ domain, SH irradiance, portrait light-adding."""
