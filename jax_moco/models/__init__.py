"""Flax Linen models: torchvision-compatible ResNets, split BatchNorm and the MoCo encoder."""
