"""gen3d: image-to-3D with synchronized 2D and 3D diffusion (Gen-3Diffusion).

Importing the package is cheap: submodules are imported where they are used
(``from gen3d.cameras import ...``), so ``import gen3d`` never pulls in diffusers or gradio.
"""

import os

# OpenMP's default busy-waiting makes torch's CPU threads spin against any other busy process: on a
# shared 2-core machine that slowed the renderer 5-25x. Passive waiting costs little when the CPU is
# free. It must be set before torch loads OpenMP; an explicit setting is respected.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
