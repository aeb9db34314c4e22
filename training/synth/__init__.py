"""The embedded synthetic world: a seeded city of streets and distinctive facades, a database drive and a
query revisit under other conditions, written in the generic dataset format or rendered on the fly.

``python -m training.synth --preset tiny --seed 0 --out DIR``; from Python::

    from training.synth import SynthConfig, generate, SynthWorld
    generate(SynthConfig.preset("small", seed=0), out_dir)

numpy and OpenCV only (no torch).

Difficulty (``python -m training.synth.difficulty DIR``, raw-pixel baseline: 16x12 colour thumbnails,
mean-centred, cosine) on ``small`` seed 0: recall@1 0.22 overall (chance ~0.01), from 0.60 (day) to 0.02
(night). ``small`` (992 + 992 images at 240x320) costs about 45 CPU-seconds (about 20 ms per image).
"""

from training.synth.config import CONDITIONS, PRESETS, SynthConfig
from training.synth.generate import generate
from training.synth.world import SynthWorld

__all__ = ["CONDITIONS", "PRESETS", "SynthConfig", "SynthWorld", "generate"]
