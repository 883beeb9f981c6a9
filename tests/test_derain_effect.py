"""A short, real DCD-GAN run on synthetic rain moves the restorer in the right direction.

Training data: rainy left halves and clear right halves of four scikit-image photos (unpaired). Measured on a
fifth photo that training never saw, under streaks of its own (no veil, so every change is the streaks): the
trained (EMA) restorer must come much closer to the clear photo than the untrained network, and pass less of
the rain through than it passes of the scene — on streak pixels, R(rainy) − R(clear) must be a small part of
rainy − clear.
"""
import torch
from conftest import tiny_config
from skimage.metrics import peak_signal_noise_ratio as psnr

from napari_cdd_dehaze.restore import restore_array
from napari_cdd_dehaze.synthesis import RainLayer, add_rain
from napari_cdd_dehaze.trainer import Trainer


def test_short_training_run_derains_a_held_out_photo(rainy_folders, photos, tmp_path):
    clear = photos["motorcycle"][::3, ::3]
    rainy = add_rain(clear, [RainLayer(density=0.004, length=14, angle=10, blur=0.6, brightness=0.7)], seed=1)
    streaks = (rainy - clear).min(axis=-1) > 0.15
    config = tiny_config(method="dcd-gan", width=16, blocks=3, disc_width=16, crop=64, num_patches=64,
                         nce_layers=(0, 4, 8, 12), head_dim=64, steps=100, lr=5e-4, decay_from=1.0,
                         lambda_cycle=10.0, checkpoint_every=1000)
    trainer = Trainer(config, *rainy_folders, tmp_path / "run")
    with torch.no_grad():
        untrained = restore_array(trainer.method.restorer, rainy)
    trainer.run()
    restorer = trainer.method.shipped_restorer()
    restored, restored_clear = restore_array(restorer, rainy), restore_array(restorer, clear)

    scores = {name: psnr(clear, image, data_range=1) for name, image in
              [("rainy", rainy), ("untrained", untrained), ("trained", restored), ("trained on clear", restored_clear)]}
    passed = float((restored - restored_clear)[streaks].mean() / (rainy - clear)[streaks].mean())
    print(scores, f"rain passed through: {passed:.2f}")
    assert scores["trained"] > scores["untrained"] + 3, scores
    assert passed < 0.5, passed
