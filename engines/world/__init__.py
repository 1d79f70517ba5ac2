"""The embedded world: a procedural image world, the Studio's default SD-format model trained on
it, and WorldEval's judge. See docs/embedded-world.md.

Modules: ``generator`` (scenes, captions, labels, edit pairs, subjects), ``tokenizer`` (the
world's CLIP BPE files), ``models`` (builders + the judge CNN), ``data`` (cached training sets),
``train`` (``python -m engines.world.train STAGE``: the CLI over one module per stage,
``train_judge`` / ``train_vae`` / ``train_text`` / ``train_unet``, sharing ``train_common``),
``eval`` (``python -m engines.world.eval``; also the gates training measures with, and it imports
nothing from training), ``paths`` (where the shipped weights live, where training writes).
"""
