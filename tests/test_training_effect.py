"""A short, real training run on synthetic haze moves the restorer in the right direction.

Training data: hazy left halves and clear right halves of four scikit-image photos (unpaired). Measured on a
fifth photo that training never saw, under haze of its own: the trained (EMA) restorer must beat both the
untrained network and the hazy input in PSNR against the clear photo, and lower the dark-channel haze density.
"""
import numpy as np
import torch
from skimage.metrics import peak_signal_noise_ratio as psnr

from napari_cdd_dehaze.restore import restore_array
from napari_cdd_dehaze.synthesis import dark_channel, random_haze
from napari_cdd_dehaze.trainer import Trainer

from conftest import tiny_config


def test_short_training_run_dehazes_a_held_out_photo(unpaired_folders, photos, tmp_path):
    clear = photos["motorcycle"][::3, ::3]
    hazy = random_haze(clear, np.random.default_rng(1))
    config = tiny_config(width=16, blocks=3, disc_width=16, crop=64, num_patches=64, nce_layers=(0, 4, 8, 12),
                         head_dim=64, steps=120, lr=5e-4, decay_from=1.0, checkpoint_every=1000)
    trainer = Trainer(config, *unpaired_folders, tmp_path / "run")
    with torch.no_grad():
        untrained = restore_array(trainer.method.restorer, hazy)
    trainer.run()
    restored = restore_array(trainer.method.shipped_restorer(), hazy)

    scores = {name: psnr(clear, image, data_range=1) for name, image in
              [("hazy", hazy), ("untrained", untrained), ("trained", restored)]}
    haze = {name: float(dark_channel(image).mean()) for name, image in [("hazy", hazy), ("trained", restored)]}
    print(scores, haze)
    assert scores["trained"] > scores["untrained"] + 2, scores
    assert scores["trained"] > scores["hazy"] + 2, scores
    assert haze["trained"] < 0.6 * haze["hazy"], haze
