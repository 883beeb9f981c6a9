"""The npe2 manifest is found through the package's entry point, validates, and its sample data loads."""
import numpy as np
from npe2 import PluginManifest


def test_manifest_validates_and_names_its_commands():
    manifest = PluginManifest.from_distribution("napari-cdd-dehaze")
    assert manifest.name == "napari-cdd-dehaze"
    assert "Image Processing" in manifest.categories
    manifest.validate_imports()  # every python_name resolves


def test_hazy_sample_is_hazier_than_its_reference():
    from napari_cdd_dehaze._sample_data import hazy_outdoor_scene
    from napari_cdd_dehaze.imaging.primitives import image_dark_channel as dark_channel

    (clear, clear_meta, kind), (hazy, hazy_meta, _) = hazy_outdoor_scene()
    assert kind == "image" and hazy.dtype == np.uint8 and hazy.shape == clear.shape
    assert dark_channel(hazy / 255).mean() > dark_channel(clear / 255).mean() + 0.2


def test_microscopy_sample_is_a_veiled_12_bit_image():
    from napari_cdd_dehaze._sample_data import hazy_microscopy_image

    (specimen, _, kind), (hazy, meta, _) = hazy_microscopy_image()
    assert kind == "image" and hazy.dtype == np.uint16 and hazy.shape == specimen.shape and hazy.max() <= 4095
    assert meta["contrast_limits"] == (0, 4095)
    # the out-of-focus veil lifts the blacks and flattens the contrast
    assert np.percentile(hazy, 1) > np.percentile(specimen, 1) + 200
    assert hazy.std() < 0.7 * specimen.std()
