"""The embedded synthetic world: a seeded city of streets and distinctive facades, a database drive and a
query revisit under other conditions, written in the generic dataset format or rendered on the fly.

``python -m training.synth --preset tiny --seed 0 --out DIR``; from Python::

    from training.synth import SynthConfig, generate, SynthWorld
    generate(SynthConfig.preset("small", seed=0), out_dir)

numpy and OpenCV only (no torch).
"""

from training.synth.config import CONDITIONS, PRESETS, SynthConfig
from training.synth.generate import generate
from training.synth.world import SynthWorld

__all__ = ["CONDITIONS", "PRESETS", "SynthConfig", "SynthWorld", "generate"]
