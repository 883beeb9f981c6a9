import warnings

import numpy as np
import pytest
import torch

from napari_cdd_dehaze.gan.data import DataError, ImageFolder, UnpairedBatches, list_images, random_crop
from napari_cdd_dehaze.io.image_files import IntensityMap, read_image, to_channels, write_image


@pytest.mark.parametrize("suffix", [".png", ".tif"])
@pytest.mark.parametrize("shape,dtype", [((20, 30), np.uint8), ((20, 30), np.uint16), ((20, 30, 3), np.uint8),
                                         ((20, 30, 3), np.uint16), ((20, 30, 4), np.uint8)])
def test_lossless_formats_round_trip(tmp_path, suffix, shape, dtype):
    rng = np.random.default_rng(0)
    a = rng.integers(0, np.iinfo(dtype).max, size=shape, dtype=dtype, endpoint=True)
    write_image(tmp_path / f"x{suffix}", a)
    b = read_image(tmp_path / f"x{suffix}")
    assert b.dtype == a.dtype and np.array_equal(a, b)


def test_jpeg_reads_8bit_rgb(tmp_path):
    a = np.full((16, 16, 3), 128, np.uint8)
    write_image(tmp_path / "x.jpg", a)
    b = read_image(tmp_path / "x.jpg")
    assert b.shape == a.shape and np.abs(b.astype(int) - 128).max() <= 2


def test_intensity_map_is_reversible():
    a16 = np.array([[0, 1000, 65535]], np.uint16)
    m = IntensityMap.for_array(a16)
    assert np.array_equal(m.from_unit(m.to_unit(a16)), a16)
    f = np.array([[-3.0, 0.0, 5.0, 7.0]], np.float32)
    m = IntensityMap.for_array(f, percentiles=(0, 100))
    assert np.allclose(m.from_unit(m.to_unit(f)), f, atol=1e-5)
    with pytest.raises(ValueError, match="NaN"):
        IntensityMap.for_array(np.array([[np.nan, 1.0]]))


def test_channel_conversion():
    grey = np.full((4, 5), 0.5, np.float32)
    assert to_channels(grey, 3).shape == (3, 4, 5)
    rgba = np.zeros((4, 5, 4), np.float32)
    assert to_channels(rgba, 3).shape == (3, 4, 5)  # alpha dropped
    assert to_channels(np.ones((4, 5, 3), np.float32), 1).shape == (1, 4, 5)


def _folder_with(tmp_path, **files):
    folder = tmp_path / "imgs"
    for name, content in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            write_image(path, content)
    return folder


def test_folder_is_read_recursively_in_all_layouts(tmp_path):
    rng = np.random.default_rng(0)
    folder = _folder_with(
        tmp_path,
        **{"a.png": rng.integers(0, 255, (40, 50, 3), dtype=np.uint8),
           "sub/b.tif": rng.integers(0, 65535, (40, 50), dtype=np.uint16),
           "sub/deeper/c.png": rng.integers(0, 255, (40, 50, 4), dtype=np.uint8),
           "notes.txt": b"not an image"})
    images = ImageFolder(folder, channels=3)
    assert len(images) == 3
    for i in range(3):
        x = images.image(i)
        assert x.shape == (3, 40, 50) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1


def test_corrupt_file_is_skipped_with_one_warning_naming_it(tmp_path):
    good = np.zeros((40, 50, 3), np.uint8)
    folder = _folder_with(tmp_path, **{"good.png": good, "broken.png": b"\x89PNG\r\n\x1a\n garbage",
                                       "empty.jpg": b""})
    with pytest.warns(UserWarning) as record:
        images = ImageFolder(folder)
    assert len(images) == 1
    assert len(record) == 1
    message = str(record[0].message)
    assert "broken.png" in message and "empty.jpg" in message


def test_missing_empty_and_unreadable_folders_fail_clearly(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        ImageFolder(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no PNG, JPEG or TIFF"):
        list_images(tmp_path / "empty")
    folder = _folder_with(tmp_path, **{"bad.png": b"nonsense"})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(DataError, match="no readable image"):
            ImageFolder(folder)


def test_small_images_are_enlarged_to_the_crop_and_crops_are_repeatable():
    image = torch.rand(3, 20, 30)
    g = torch.Generator().manual_seed(0)
    crop = random_crop(image, 32, 0, g)
    assert crop.shape == (3, 32, 32)
    image = torch.rand(3, 100, 120)
    a = random_crop(image, 64, 80, torch.Generator().manual_seed(3))  # short side → 80, then 64² crop
    b = random_crop(image, 64, 80, torch.Generator().manual_seed(3))
    assert a.shape == (3, 64, 64) and torch.equal(a, b)


def test_unpaired_batches_are_seeded_and_in_network_range(unpaired_folders):
    degraded, clean = unpaired_folders
    batches = UnpairedBatches(ImageFolder(degraded), ImageFolder(clean), crop=32, batch_size=2)
    x1, y1 = batches.sample(torch.Generator().manual_seed(5))
    x2, y2 = batches.sample(torch.Generator().manual_seed(5))
    assert x1.shape == y1.shape == (2, 3, 32, 32)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert x1.min() >= -1 and x1.max() <= 1


@pytest.mark.parametrize("layout", [dict(tile=(64, 48)), dict(rowsperstrip=37),
                                    dict(rowsperstrip=50, planarconfig="separate")])
def test_tiff_windows_read_exactly_the_pixels_under_a_window(tmp_path, layout):
    import tifffile

    from napari_cdd_dehaze.io.tiff_windows import TiffWindows

    image = np.random.default_rng(1).integers(0, 65535, (301, 257, 3), dtype=np.uint16)
    stored = np.moveaxis(image, -1, 0) if layout.get("planarconfig") == "separate" else image
    tifffile.imwrite(tmp_path / "scene.tif", stored, photometric="rgb", compression="zlib", **layout)
    with TiffWindows(tmp_path / "scene.tif") as reader:
        assert reader.shape == image.shape and reader.dtype == np.uint16
        for top, left, h, w in [(0, 0, 301, 257), (63, 47, 2, 2), (100, 30, 120, 99), (300, 256, 1, 1)]:
            np.testing.assert_array_equal(reader.read(top, left, h, w), image[top:top + h, left:left + w])
        blocks = image[:300, :256].astype(np.float64).reshape(75, 4, 64, 4, 3).mean(axis=(1, 3))
        np.testing.assert_allclose(reader.overview(4, max_elements=5000), blocks, rtol=1e-6)
        with pytest.raises(ValueError, match="outside"):
            reader.read(290, 0, 20, 10)


def test_a_large_tiff_is_cropped_by_windows_and_never_read_whole(tmp_path, monkeypatch):
    import tifffile

    from napari_cdd_dehaze.gan import data

    scene = np.random.default_rng(2).integers(0, 255, (640, 512, 3), dtype=np.uint8)
    (tmp_path / "big").mkdir()
    tifffile.imwrite(tmp_path / "big" / "scene.tif", scene, tile=(128, 128), compression="zlib")
    write_image(tmp_path / "big" / "small.png", scene[:64, :64])
    full = torch.from_numpy(to_channels(scene / 255.0, 3).astype(np.float32))

    whole_reads = []
    real_read = data.read_image
    monkeypatch.setattr(data, "read_image", lambda path, **kw: whole_reads.append(path) or real_read(path, **kw))
    folder = ImageFolder(tmp_path / "big", windowed_bytes=100_000)
    assert [p.name for p in folder.windowed] == ["scene.tif"] and len(folder) == 2
    index = [p.name for p in folder.files].index("scene.tif")
    for seed in range(3):  # at full resolution: the very crop (and flip) random_crop makes of the whole image
        got = folder.crop(index, 96, 0, torch.Generator().manual_seed(seed))
        want = random_crop(full, 96, 0, torch.Generator().manual_seed(seed))
        torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    # shrunk to a load size: from a copy block-averaged once, close to shrinking the whole image
    got = folder.crop(index, 96, 128, torch.Generator().manual_seed(0))
    want = random_crop(full, 96, 128, torch.Generator().manual_seed(0))
    assert got.shape == want.shape == (3, 96, 96) and float((got - want).abs().mean()) < 0.02
    assert all(p.name != "scene.tif" for p in whole_reads)
