"""Training: the shared trainer core, FSDP2, checkpoints, and the SFT stage."""
