"""Video editing by instruction (MoViE): streaming I/O, world clips, consistency metrics,
cross-frame attention."""
