"""GeoTIFFs written and read back with rasterio: the restored file lies on the same grid with the same metadata."""
import numpy as np
import pytest

from napari_cdd_dehaze.cli import main
from napari_cdd_dehaze.models import load_model
from napari_cdd_dehaze.restore.engine import restore_array
from napari_cdd_dehaze.restore.geotiff import declared_roles, model_bands

rasterio = pytest.importorskip("rasterio")
from rasterio.crs import CRS  # noqa: E402
from rasterio.enums import ColorInterp  # noqa: E402
from rasterio.transform import from_origin  # noqa: E402

FRAME = 24


def _scene(rng, bands: int, side: int = 96) -> np.ndarray:
    """A hazy (bands, Y, X) uint16 scene in a nodata-0 frame of FRAME pixels."""
    from skimage import data

    photo = data.astronaut()[::512 // side, ::512 // side][:side, :side] / 255.0
    hazy = 0.5 * photo + 0.45
    stack = [hazy[..., 0], hazy[..., 1], hazy[..., 2]] + [rng.random((side, side)) * 0.8 + 0.1] * (bands - 3)
    scene = (np.stack(stack) * 60000 + 1000).astype(np.uint16)
    return np.pad(scene, ((0, 0), (FRAME, FRAME), (FRAME, FRAME)))


def _write(path, scene, descriptions, **profile):
    count, h, w = scene.shape
    with rasterio.open(path, "w", driver="GTiff", width=w, height=h, count=count, dtype=scene.dtype,
                       crs=CRS.from_epsg(32633), transform=from_origin(500000, 5000000, 10, 10), nodata=0,
                       **profile) as dst:
        dst.write(scene)
        for b, description in enumerate(descriptions, start=1):
            dst.set_band_description(b, description)
        dst.update_tags(SENSOR="synthetic")
        dst.update_tags(4, WAVELENGTH="842")
    if profile.get("tiled"):
        with rasterio.open(path, "r+") as dst:
            dst.build_overviews([2, 4], rasterio.enums.Resampling.average)


def _dark_channel(rgb: np.ndarray, valid: np.ndarray) -> float:
    return float(rgb.min(axis=0)[valid].mean())


def test_a_4_band_geotiff_keeps_its_grid_metadata_nodata_and_nir_and_its_rgb_is_dehazed(tmp_path):
    scene = _scene(np.random.default_rng(0), 4)
    (tmp_path / "in").mkdir()
    source = tmp_path / "in" / "scene.tif"
    _write(source, scene, ["red", "green", "blue", "nir"], tiled=True, blockxsize=64, blockysize=64,
           compress="deflate", predictor=2)
    assert main(["apply", str(source), "--out", str(tmp_path / "out"), "--method", "dcp"]) == 0
    with rasterio.open(source) as a, rasterio.open(tmp_path / "out" / "scene.tif") as b:
        assert (b.crs, b.transform, b.nodata, b.count, b.dtypes) == (a.crs, a.transform, a.nodata, a.count, a.dtypes)
        assert b.descriptions == ("red", "green", "blue", "nir") and b.colorinterp == a.colorinterp
        assert (b.compression, b.block_shapes, b.overviews(1)) == (a.compression, a.block_shapes, [2, 4])
        assert b.tags()["SENSOR"] == "synthetic" and b.tags(4)["WAVELENGTH"] == "842"
        before, after = a.read(), b.read()
    valid = (scene != 0).any(axis=0)
    assert (after[:, ~valid] == 0).all()  # the frame is still nodata
    assert np.array_equal(after[3], before[3])  # NIR passes through bit for bit
    assert _dark_channel(after[:3], valid) < _dark_channel(before[:3], valid) - 1000  # the RGB is dehazed


def test_the_same_geotiff_without_rasterio_keeps_its_geotiff_tags_verbatim(tmp_path, monkeypatch):
    import tifffile

    import napari_cdd_dehaze.restore.files as files
    from napari_cdd_dehaze.io.image_files import GEOTIFF_TAGS

    scene = _scene(np.random.default_rng(3), 4)
    (tmp_path / "in").mkdir()
    _write(tmp_path / "in" / "scene.tif", scene, ["red", "green", "blue", "nir"])
    monkeypatch.setattr(files, "rasterio_available", lambda: False)  # an installation without the [geo] extra
    assert main(["apply", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--method", "dcp"]) == 0

    def tags(path):
        with tifffile.TiffFile(path) as tif:
            return {t.code: t.value for t in tif.pages[0].tags.values() if t.code in GEOTIFF_TAGS}
    kept = tags(tmp_path / "out" / "scene.tif")
    assert kept == tags(tmp_path / "in" / "scene.tif") and {33550, 33922, 34735, 42113} <= set(kept)
    with rasterio.open(tmp_path / "out" / "scene.tif") as b:  # and rasterio reads it on the same grid
        assert (b.crs, b.transform, b.nodata) == (CRS.from_epsg(32633), from_origin(500000, 5000000, 10, 10), 0)
        assert np.array_equal(b.read(4), scene[3])


def test_a_nodata_value_given_on_the_command_line_is_left_out_like_the_files_own(tmp_path):
    scene = _scene(np.random.default_rng(5), 3)
    source = tmp_path / "scene.tif"
    with rasterio.open(source, "w", driver="GTiff", width=scene.shape[2], height=scene.shape[1], count=3,
                       dtype="uint16", crs=CRS.from_epsg(32633), transform=from_origin(500000, 5000000, 10, 10),
                       photometric="RGB") as dst:  # no nodata declared
        dst.write(scene)
    assert main(["apply", str(source), "--out", str(tmp_path / "out"), "--method", "dcp", "--nodata", "0"]) == 0
    with rasterio.open(tmp_path / "out" / "scene.tif") as b:
        out, declared = b.read(), b.nodata
    inner = scene[:, FRAME:-FRAME, FRAME:-FRAME]
    alone = restore_array(load_model("dcp"), inner.transpose(1, 2, 0)).transpose(2, 0, 1)
    assert declared == 0 and (out[:, :FRAME] == 0).all() and np.array_equal(out[:, FRAME:-FRAME, FRAME:-FRAME], alone)


def test_the_declared_band_order_decides_what_the_model_sees(tmp_path):
    """Bands stored blue, green, red, NIR (as a Sentinel-2 stack often is): the model sees red, green, blue."""
    rgbn = _scene(np.random.default_rng(1), 4)
    stored = rgbn[[2, 1, 0, 3]]
    source = tmp_path / "bgrn.tif"
    _write(source, stored, ["B02 blue", "B03 green", "B04 red", "B08 nir"])
    assert main(["apply", str(source), "--out", str(tmp_path / "out"), "--method", "dcp"]) == 0
    with rasterio.open(tmp_path / "out" / "bgrn.tif") as b:
        out = b.read()
    valid = (stored != 0).any(axis=0)
    expected = restore_array(load_model("dcp"), rgbn[:3].transpose(1, 2, 0), valid=valid).transpose(2, 0, 1)
    assert np.array_equal(out[[2, 1, 0]], expected) and np.array_equal(out[3], stored[3])


def test_an_alpha_band_marks_nodata_and_passes_through(tmp_path):
    """RGBA: alpha 0 pixels take no part (the scene restores as without them) and alpha itself is copied."""
    rgb = _scene(np.random.default_rng(2), 3)[:, FRAME:-FRAME, FRAME:-FRAME]
    alpha = np.zeros(rgb.shape[1:], np.uint16)
    alpha[10:-10, 10:-10] = 65535
    source = tmp_path / "rgba.tif"
    with rasterio.open(source, "w", driver="GTiff", width=rgb.shape[2], height=rgb.shape[1], count=4,
                       dtype="uint16", photometric="RGB", alpha="YES", crs=CRS.from_epsg(32633),
                       transform=from_origin(500000, 5000000, 10, 10)) as dst:
        dst.write(np.concatenate([rgb, alpha[None]]))
    assert main(["apply", str(source), "--out", str(tmp_path / "out"), "--method", "dcp"]) == 0
    with rasterio.open(tmp_path / "out" / "rgba.tif") as b:
        out = b.read()
        assert b.colorinterp[3] == ColorInterp.alpha
    inner = restore_array(load_model("dcp"), rgb[:, 10:-10, 10:-10].transpose(1, 2, 0)).transpose(2, 0, 1)
    assert np.array_equal(out[:3, 10:-10, 10:-10], inner)
    assert np.array_equal(out[3], alpha) and np.array_equal(out[:3, :10], rgb[:, :10])


def test_a_grey_band_beside_an_alpha_band_is_restored_and_the_alpha_copied(tmp_path):
    grey = _scene(np.random.default_rng(4), 3)[0, FRAME:-FRAME, FRAME:-FRAME]
    alpha = np.full(grey.shape, 65535, np.uint16)
    alpha[:8] = 0
    source = tmp_path / "la.tif"
    with rasterio.open(source, "w", driver="GTiff", width=grey.shape[1], height=grey.shape[0], count=2,
                       dtype="uint16", alpha="YES", crs=CRS.from_epsg(32633),
                       transform=from_origin(500000, 5000000, 10, 10)) as dst:
        dst.write(np.stack([grey, alpha]))
    assert main(["apply", str(source), "--out", str(tmp_path / "out"), "--method", "dcp"]) == 0
    with rasterio.open(tmp_path / "out" / "la.tif") as b:
        assert b.colorinterp[1] == ColorInterp.alpha
        out = b.read()
    assert np.array_equal(out[1], alpha) and np.array_equal(out[0, :8], grey[:8])  # alpha, and its empty rows
    assert np.array_equal(out[0, 8:], restore_array(load_model("dcp"), grey[8:], channel_axis=None))


def test_declared_roles_from_colour_interpretation_then_descriptions():
    assert declared_roles(["red", "green", "blue", "undefined"], [None] * 4) == ([0, 1, 2], None)
    assert declared_roles(["gray", "undefined", "undefined", "undefined"], ["B2 blue", "green", "Red", "nir"]) \
        == ([2, 1, 0], None)
    assert declared_roles(["gray"] * 6, [None] * 6) == (None, None)
    assert declared_roles(["red", "green", "blue", "alpha"], [None] * 4) == ([0, 1, 2], 3)
    assert model_bands(6, None, None, None, 3) is None  # six undeclared bands: each alone as grey
    assert model_bands(3, None, None, None, 3) == [0, 1, 2]
    assert model_bands(4, None, 3, None, 3) == [0, 1, 2]  # three besides an alpha
    assert model_bands(4, [0, 1, 2], None, [3, 2, 1], 3) == [3, 2, 1]  # the user's choice wins
