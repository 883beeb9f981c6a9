"""OME-Zarr written by ome-zarr, restored, read back with ome-zarr: same axes, metadata, levels; restored lazily."""
import numpy as np
import pytest

from napari_cdd_dehaze.cli import main
from napari_cdd_dehaze.models import load_model
from napari_cdd_dehaze.restore.engine import restore_array
from napari_cdd_dehaze.restore.ome_zarr import downsample_into, is_ome_zarr

zarr = pytest.importorskip("zarr")
ome_writer = pytest.importorskip("ome_zarr.writer")
from ome_zarr.io import parse_url  # noqa: E402
from ome_zarr.reader import Reader  # noqa: E402


def _write_volume(path, volume, zarr_format=3):
    root = zarr.open_group(str(path), mode="w", zarr_format=zarr_format)
    fmt = None
    if zarr_format == 2:
        from ome_zarr.format import FormatV04
        fmt = FormatV04()
    ome_writer.write_image(volume, root, axes="zyx", fmt=fmt, scale_factors=[{"y": 2, "x": 2}, {"y": 4, "x": 4}],
                           coordinate_transformations=[[{"type": "scale", "scale": [2.0, 0.5 * f, 0.5 * f]}]
                                                       for f in (1, 2, 4)])
    omero = {"channels": [{"label": "DAPI", "color": "0000FF", "window": {"start": 0, "end": 4095}}]}
    if zarr_format == 3:
        root.attrs["ome"] = {**root.attrs["ome"], "omero": omero}
    else:
        root.attrs["omero"] = omero


def _read(path):
    node = next(iter(Reader(parse_url(str(path)))()))
    return node.metadata, [np.asarray(level) for level in node.data]


@pytest.mark.parametrize("zarr_format", [3, 2], ids=["OME-Zarr 0.5", "OME-Zarr 0.4"])
def test_an_ome_zarr_volume_keeps_its_axes_scales_channel_and_pyramid(tmp_path, zarr_format):
    rng = np.random.default_rng(0)
    volume = ((0.4 * rng.random((3, 48, 64)) + 0.5) * 4000).astype(np.uint16)  # Z, Y, X, hazy
    (tmp_path / "in").mkdir()
    _write_volume(tmp_path / "in" / "cells.ome.zarr", volume, zarr_format)
    assert is_ome_zarr(tmp_path / "in" / "cells.ome.zarr")
    assert main(["apply", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--method", "dcp"]) == 0
    before, levels_in = _read(tmp_path / "in" / "cells.ome.zarr")
    after, levels = _read(tmp_path / "out" / "cells.ome.zarr")
    assert after["axes"] == before["axes"] and after["coordinateTransformations"] == before[
        "coordinateTransformations"]
    attrs = {side: zarr.open_group(str(tmp_path / side / "cells.ome.zarr"), mode="r").attrs.asdict()
             for side in ("in", "out")}
    assert attrs["out"] == attrs["in"] and "DAPI" in str(attrs["out"])  # the whole metadata, channel names too
    assert after.get("channel_names") == ["DAPI"]
    assert [a.shape for a in levels] == [a.shape for a in levels_in] and all(a.dtype == np.uint16 for a in levels)
    dcp = load_model("dcp")
    for z in range(3):  # level 0: each plane restored alone as grey
        assert np.array_equal(levels[0][z], restore_array(dcp, volume[z], channel_axis=None))
    block_means = levels[0].reshape(3, 24, 2, 32, 2).mean(axis=(2, 4))
    assert np.abs(levels[1].astype(float) - block_means).max() <= 0.5  # the pyramid rebuilt from the result
    assert not (tmp_path / "out" / ".cells.ome.zarr.partial").exists()
    # a rerun skips it, as any file
    assert main(["apply", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--method", "dcp"]) == 0


def test_downsampling_averages_edge_blocks_and_a_z_factor():
    above = np.arange(2 * 5 * 7, dtype=np.float32).reshape(2, 5, 7)
    below = np.zeros((1, 3, 4), np.float32)
    downsample_into(above, below)
    assert below[0, 0, 0] == above[:, :2, :2].mean() and below[0, 2, 3] == above[:, 4:, 6:].mean()
