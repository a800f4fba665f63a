"""The contouring network: residual 3D U-Net, learnable prompts and context g, two-way alignment,
configuration, checkpoints."""
