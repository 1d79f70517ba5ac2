"""The embedded world: a procedural image world, the Studio's default SD-format model trained on
it, and WorldEval's judge. See docs/embedded-world.md.

Modules: ``generator`` (scenes, captions, labels, edit pairs, subjects), ``tokenizer`` (the
world's CLIP BPE files), ``models`` (builders + the judge CNN), ``data`` (cached training sets),
``train`` (``python -m engines.world.train STAGE``), ``eval`` (``python -m engines.world.eval``),
``paths`` (where the shipped weights live).
"""
