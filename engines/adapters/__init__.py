"""Adapters: LoRA (diffusers/peft), SHiRA (sparse high-rank, fused switching), FouRA."""
