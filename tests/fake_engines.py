"""The test engine moved to ``bench.fake_engines`` (benches need it from an installed package);
this name stays for ``STUDIO_EXTRA_ENGINES=test-steps=tests.fake_engines:StepEngine``."""
from bench.fake_engines import COLORS, StepEngine, StepParams

__all__ = ["COLORS", "StepEngine", "StepParams"]
