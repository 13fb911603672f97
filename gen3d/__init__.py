"""gen3d: image-to-3D with synchronized 2D and 3D diffusion (Gen-3Diffusion).

Importing the package is cheap: submodules are imported where they are used
(``from gen3d.cameras import ...``), so ``import gen3d`` never pulls in diffusers or gradio.
"""

__version__ = "0.1.0"
