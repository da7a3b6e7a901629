"""MovingShapes: a world small enough to measure motion customization on a CPU.

`BASE_DIR` is the shipped, pretrained tiny text-to-video base (diffusers folder);
`python -m motioncrafter.toyworld.pretrain` reproduces it.
"""

from pathlib import Path

BASE_DIR = Path(__file__).parent / "base"
# sha256 of the shipped weights (base.fingerprint_folder); tests check the committed folder against it
BASE_FINGERPRINT = "d91beeda58a8bc7f"
