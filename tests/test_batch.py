"""Folders in, folders out: relative layout, file types and GeoTIFF tags kept, bad files named, reruns resumable."""
import numpy as np
import pytest
import tifffile

from napari_cdd_dehaze.cli import main
from napari_cdd_dehaze.io.image_files import GEOTIFF_TAGS, read_image, write_image
from napari_cdd_dehaze.models import load_model
from napari_cdd_dehaze.restore.files import plan_jobs, restore_files

# A GeoTIFF as GDAL writes one: pixel scale, tie point, GeoKeys for EPSG:32633, GDAL nodata and metadata.
GEO_TAGS = [(33550, "d", 3, (10.0, 10.0, 0.0), True),
            (33922, "d", 6, (0.0, 0.0, 0.0, 500000.0, 5000000.0, 0.0), True),
            (34735, "H", 16, (1, 1, 0, 3, 1024, 0, 1, 1, 1025, 0, 1, 1, 3072, 0, 1, 32633), True),
            (42112, "s", 0, '<GDALMetadata><Item name="AREA_OR_POINT">Area</Item></GDALMetadata>', True),
            (42113, "s", 0, "0", True)]


def _hazy(rng, shape):
    return ((0.4 * rng.random(shape) + 0.55) * 255).astype(np.uint8)


def _tags(path):
    with tifffile.TiffFile(path) as tif:
        return {t.code: t.value for t in tif.pages[0].tags.values() if t.code in GEOTIFF_TAGS}


@pytest.fixture
def without_rasterio(monkeypatch):
    """The path of an installation without the [geo] extra: tifffile, GeoTIFF tags copied verbatim."""
    import napari_cdd_dehaze.restore.files as files
    monkeypatch.setattr(files, "rasterio_available", lambda: False)


@pytest.fixture(params=["rasterio", "tifffile"])
def geotiff_reader(request, monkeypatch):
    """Both ways a GeoTIFF is restored: through rasterio (where installed) and without it."""
    if request.param == "rasterio":
        pytest.importorskip("rasterio")
    else:
        request.getfixturevalue("without_rasterio")
    return request.param


@pytest.fixture
def folder(tmp_path):
    rng = np.random.default_rng(0)
    src = tmp_path / "in"
    write_image(src / "a.png", _hazy(rng, (40, 48, 3)))
    write_image(src / "sub" / "b.jpg", _hazy(rng, (32, 32, 3)))
    (src / "sub" / "deeper").mkdir()
    tifffile.imwrite(src / "sub" / "deeper" / "scene.tif", _hazy(rng, (36, 44, 3)), photometric="rgb",
                     extratags=GEO_TAGS)  # uncompressed: restored through a memory map
    tifffile.imwrite(src / "packed.tif", (rng.random((30, 30)) * 4000).astype(np.uint16), compression="zlib",
                     extratags=GEO_TAGS)
    (src / "sub" / "broken.png").write_bytes(b"not a png")
    (src / "notes.txt").write_text("not an image")
    return src


def test_a_folder_restores_with_its_layout_types_and_geotiff_tags_and_names_the_bad_file(folder, tmp_path, capsys,
                                                                                        without_rasterio):
    out = tmp_path / "out"
    assert main(["apply", str(folder), "--out", str(out), "--method", "dcp"]) == 1
    err = capsys.readouterr().err
    assert 'packed.tif: a GeoTIFF restored without rasterio' in err and "napari-cdd-dehaze[geo]" in err
    assert "broken.png" in err and "1 of 5 image(s) failed" in err
    for name in ("a.png", "sub/b.jpg", "sub/deeper/scene.tif", "packed.tif"):
        restored, original = read_image(out / name), read_image(folder / name)
        assert restored.shape == original.shape and restored.dtype == original.dtype, name
        assert not np.array_equal(restored, original), name  # dehazed
    assert not (out / "sub" / "broken.png").exists() and not (out / "notes.txt").exists()
    for name in ("sub/deeper/scene.tif", "packed.tif"):
        assert _tags(out / name) == _tags(folder / name) and len(_tags(out / name)) == len(GEO_TAGS), name


def test_a_rerun_skips_what_is_done_and_overwrite_redoes_it(folder, tmp_path, capsys):
    out = tmp_path / "out"
    main(["apply", str(folder), "--out", str(out), "--method", "dcp"])
    (out / "a.png").unlink()  # as if the batch had stopped before this file
    stamp = (out / "packed.tif").stat().st_mtime_ns
    capsys.readouterr()
    assert main(["apply", str(folder), "--out", str(out), "--method", "dcp"]) == 1  # the broken file still fails
    assert "1 restored, 3 skipped" in capsys.readouterr().err and (out / "a.png").is_file()
    assert (out / "packed.tif").stat().st_mtime_ns == stamp
    main(["apply", str(folder), "--out", str(out), "--method", "dcp", "--overwrite"])
    assert "4 restored, 0 skipped" in capsys.readouterr().err


def test_a_stopped_batch_leaves_no_partial_output_and_an_output_folder_inside_is_not_read(folder, tmp_path):
    out = folder / "restored"  # inside the input folder: its files are never taken as inputs
    jobs = plan_jobs([folder], out)
    assert not any("restored" in str(job.source) for job in jobs) and len(jobs) == 5
    asked = []

    def stop_in_the_second_file():
        asked.append(1)
        return len(asked) > 3
    report = restore_files(load_model("dcp"), jobs, should_stop=stop_in_the_second_file)
    assert report.stopped and len(report.restored) == 1
    written = sorted(p.name for p in out.rglob("*") if p.is_file())
    assert written == [jobs[0].target.name]  # nothing half-written beside the one finished file


def test_chosen_bands_are_restored_together_and_the_others_copied():
    """A blue/green/red/NIR scene: the model sees red, green, blue (bands 2, 1, 0) as RGB; NIR stays bit-identical."""
    from napari_cdd_dehaze.restore.engine import restore_array

    rng = np.random.default_rng(1)
    scene = (rng.random((40, 44, 4)) * 3000 + 1000).astype(np.uint16)
    dcp = load_model("dcp")
    out = restore_array(dcp, scene, bands=(2, 1, 0))
    assert np.array_equal(out[..., 3], scene[..., 3])
    rgb = restore_array(dcp, scene[..., [2, 1, 0]], channel_axis=-1)
    assert np.array_equal(out[..., [2, 1, 0]], rgb)  # as if the three were an RGB image of their own
    first = restore_array(dcp, np.moveaxis(scene, -1, 0), channel_axis=0, bands=(2, 1, 0))  # channel-first
    assert np.array_equal(np.moveaxis(first, 0, -1), out)
    with pytest.raises(ValueError, match="bands must be 3 different bands"):
        restore_array(dcp, scene, bands=(0, 1))


def test_apply_with_bands_on_a_channel_first_geotiff(tmp_path, capsys, geotiff_reader):
    rng = np.random.default_rng(2)
    scene = (rng.random((6, 40, 48)) * 0.4 * 65535 + 0.5 * 65535).astype(np.uint16)  # six bands, (C, Y, X)
    (tmp_path / "in").mkdir()
    tifffile.imwrite(tmp_path / "in" / "scene.tif", scene, photometric="minisblack", planarconfig="separate",
                     extratags=GEO_TAGS)
    assert main(["apply", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--method", "dcp",
                 "--bands", "4,3,2"]) == 0
    out = read_image(tmp_path / "out" / "scene.tif")
    assert out.shape == scene.shape and out.dtype == scene.dtype
    assert all(np.array_equal(out[b], scene[b]) for b in (0, 4, 5))  # not chosen: unchanged, in their order
    assert all(not np.array_equal(out[b], scene[b]) for b in (1, 2, 3))
    if geotiff_reader == "tifffile":
        assert _tags(tmp_path / "out" / "scene.tif") == _tags(tmp_path / "in" / "scene.tif")
    assert main(["apply", str(tmp_path / "in"), "--out", str(tmp_path / "o2"), "--method", "dcp",
                 "--bands", "0,1,2"]) == 2 and "counted from 1" in capsys.readouterr().err


@pytest.mark.parametrize("model, nodata, dtype", [("default", 0, np.uint16), ("dcp", 0, np.uint16),
                                                  ("default", float("nan"), np.float32)],
                         ids=["bundled model, 0", "dcp, 0", "bundled model, NaN"])
def test_a_nodata_frame_does_not_change_the_restored_scene(model, nodata, dtype):
    """The same scene with and without a 200-pixel nodata frame: the same valid pixels (within 1/255), and the frame
    is still nodata."""
    from skimage import data

    from napari_cdd_dehaze.restore.engine import restore_array

    photo = data.astronaut()[100:260:2, 120:320:2] / 255.0
    scene = (0.55 * photo + 0.4) * (65535 if dtype == np.uint16 else 3.0)  # hazy; floats beyond [0, 1]
    scene = scene.astype(dtype)
    framed = np.pad(scene, ((200, 200), (200, 200), (0, 0)), constant_values=nodata)
    restorer = load_model(model)
    alone = restore_array(restorer, scene, nodata=nodata)
    in_frame = restore_array(restorer, framed, nodata=nodata)
    scale = 65535 if dtype == np.uint16 else 3.0
    core = in_frame[200:-200, 200:-200].astype(np.float64)
    assert np.abs(core - alone).max() <= scale / 255
    assert np.abs(alone.astype(np.float64) - scene).mean() > scale * 0.01  # it did restore
    frame = np.ones(framed.shape[:2], bool)
    frame[200:-200, 200:-200] = False
    assert np.array_equal(in_frame[frame], framed[frame], equal_nan=True)


def test_nodata_holes_inside_the_scene_stay_nodata_and_the_rest_is_restored():
    from napari_cdd_dehaze.restore.engine import restore_array

    rng = np.random.default_rng(4)
    scene = ((0.4 * rng.random((60, 70, 3)) + 0.55) * 255).astype(np.uint8)
    scene[10:20, 15:30] = 0  # an irregular footprint: a hole of nodata inside the data
    out = restore_array(load_model("dcp"), scene, nodata=0)
    assert (out[10:20, 15:30] == 0).all() and np.abs(out.astype(int) - scene).mean() > 2


def test_a_channel_first_rgb_tiff_is_restored_as_colour_not_as_three_grey_planes(tmp_path):
    from napari_cdd_dehaze.restore.engine import restore_array

    rgb = ((0.4 * np.random.default_rng(7).random((3, 40, 50)) + 0.55) * 255).astype(np.uint8)
    (tmp_path / "in").mkdir()
    tifffile.imwrite(tmp_path / "in" / "planar.tif", rgb, photometric="rgb", planarconfig="separate")
    assert main(["apply", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--method", "dcp"]) == 0
    out = read_image(tmp_path / "out" / "planar.tif")
    assert out.shape == rgb.shape
    assert np.array_equal(out, restore_array(load_model("dcp"), rgb.transpose(1, 2, 0)).transpose(2, 0, 1))


def test_transparent_pixels_of_a_png_take_no_part_and_stay_as_they_were(tmp_path):
    from napari_cdd_dehaze.restore.engine import restore_array

    rng = np.random.default_rng(6)
    scene = ((0.4 * rng.random((50, 60, 3)) + 0.55) * 255).astype(np.uint8)
    rgba = np.concatenate([np.pad(scene, ((20, 20), (20, 20), (0, 0)), constant_values=7),
                           np.pad(np.full((50, 60, 1), 255, np.uint8), ((20, 20), (20, 20), (0, 0)))], axis=-1)
    write_image(tmp_path / "in" / "cutout.png", rgba)
    assert main(["apply", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--method", "dcp"]) == 0
    out = read_image(tmp_path / "out" / "cutout.png")
    assert np.array_equal(out[20:-20, 20:-20, :3], restore_array(load_model("dcp"), scene))
    assert np.array_equal(out[:20], rgba[:20]) and np.array_equal(out[..., 3], rgba[..., 3])


def test_apply_leaves_the_declared_nodata_of_a_geotiff_out(tmp_path, geotiff_reader):
    """GDAL_NODATA 0 declared in the file (GEO_TAGS): the frame stays 0 and the scene is restored as alone."""
    from napari_cdd_dehaze.restore.engine import restore_array

    rng = np.random.default_rng(5)
    scene = ((0.4 * rng.random((50, 60, 3)) + 0.55) * 65535).astype(np.uint16)
    framed = np.pad(scene, ((30, 30), (40, 40), (0, 0)))
    (tmp_path / "in").mkdir()
    tifffile.imwrite(tmp_path / "in" / "framed.tif", framed, photometric="rgb", extratags=GEO_TAGS)
    assert main(["apply", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--method", "dcp"]) == 0
    out = read_image(tmp_path / "out" / "framed.tif")
    assert (out[:30] == 0).all() and (out[:, :40] == 0).all()
    assert np.array_equal(out[30:-30, 40:-40], restore_array(load_model("dcp"), scene))


@pytest.mark.parametrize("compression", [None, "zlib"], ids=["memory-mapped", "compressed"])
def test_an_ome_tiff_keeps_its_axes_physical_sizes_and_channel_name(tmp_path, compression):
    rng = np.random.default_rng(6)
    volume = ((0.4 * rng.random((3, 40, 50)) + 0.5) * 4000).astype(np.uint16)  # Z, Y, X
    (tmp_path / "in").mkdir()
    tifffile.imwrite(tmp_path / "in" / "cells.ome.tif", volume, ome=True, photometric="minisblack",
                     compression=compression, metadata={"axes": "ZYX", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5,
                                                        "PhysicalSizeZ": 2.0, "Channel": {"Name": ["DAPI"]}})
    assert main(["apply", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--method", "dcp"]) == 0
    with tifffile.TiffFile(tmp_path / "out" / "cells.ome.tif") as tif:
        assert tif.is_ome and tif.series[0].axes == "ZYX" and tif.series[0].shape == volume.shape
        ome = tif.ome_metadata
        restored = tif.asarray()
    for text in ('PhysicalSizeX="0.5"', 'PhysicalSizeZ="2.0"', 'Name="DAPI"', 'SizeZ="3"'):
        assert text in ome
    assert restored.dtype == volume.dtype and not np.array_equal(restored, volume)


class _PlanesOnDemand:
    """A stack that makes each plane when indexed, as a reader of a file larger than memory would."""

    def __init__(self, count: int, side: int, dtype) -> None:
        self.shape, self.dtype, self.ndim = (count, side, side), np.dtype(dtype), 3

    def __getitem__(self, index):
        plane = np.random.default_rng(index[0]).random(self.shape[1:]) * 0.4 + 0.5
        return (plane * 4000).astype(self.dtype)


def test_a_lazy_stack_restores_one_plane_at_a_time_into_a_mapped_array():
    """restore_out_of_core on a stack read plane by plane: what numpy allocates at a time stays far below the
    stack's size (the output is a memory-mapped temporary file); on a dask stack the result equals restoring it
    in memory, and a float stack is mapped with one range for every plane."""
    import tracemalloc

    da = pytest.importorskip("dask.array")
    from napari_cdd_dehaze.restore.engine import restore_array
    from napari_cdd_dehaze.restore.lazy import restore_out_of_core

    dcp = load_model("dcp")
    lazy = _PlanesOnDemand(64, 128, np.uint16)  # 2 MiB
    tracemalloc.start()
    out = restore_out_of_core(dcp, lazy)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert isinstance(out, np.memmap) and out.shape == lazy.shape and peak < out.nbytes / 2, (peak, out.nbytes)
    assert np.array_equal(out[5], restore_array(dcp, lazy[(5,)]))
    planes = [lazy[(i,)] for i in range(6)]
    stack = da.stack([da.from_array(p, chunks=p.shape) for p in planes])
    assert np.array_equal(restore_out_of_core(dcp, stack), restore_array(dcp, np.asarray(stack)))
    floats = stack.astype(np.float32) / 1000  # beyond [0, 1]: one robust range for every plane
    assert np.abs(restore_out_of_core(dcp, floats) - restore_array(dcp, np.asarray(floats))).max() < 0.05 * 4
