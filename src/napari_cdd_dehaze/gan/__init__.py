"""The unpaired GANs and their training: networks, losses, methods (CDD-GAN, DCD-GAN), configuration, the
training engine, checkpoints, data and data-parallel training. Nothing here imports napari or Qt."""
