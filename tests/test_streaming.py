"""Streamed inference (one layer at a time over row bands) equals the whole-image pass, in bounded memory."""
import numpy as np
import pytest
import torch
from skimage.transform import resize

from napari_cdd_dehaze.gan.networks import GeneratorConfig, ResnetGenerator
from napari_cdd_dehaze.restore import streamed as streaming
from napari_cdd_dehaze.restore.engine import RestoreOptions, restore_array
from napari_cdd_dehaze.restore.streamed import StreamedRunner, plan
from napari_cdd_dehaze.restore.windows import Cancelled


def _strong(config: GeneratorConfig) -> ResnetGenerator:
    """Weights large enough that every layer's statistics matter (a wrong mean shows as a large error)."""
    torch.manual_seed(0)
    g = ResnetGenerator(config).eval()
    for p in g.parameters():
        p.data.normal_(0, 0.2)
    return g


def _stream(g, x, **kw):
    out = torch.full((1, g.config.channels, *x.shape[-2:]), float("nan"))

    def write(y0, y1, x0, x1, t):
        out[..., y0:y1, x0:x1] = t
    runner = StreamedRunner(g, torch.device("cpu"), **kw)
    runner.run(lambda y0, y1, x0, x1: x[..., y0:y1, x0:x1], write, *x.shape[-2:])
    return out


@pytest.mark.parametrize("config", [
    GeneratorConfig(width=8, blocks=2),
    GeneratorConfig(width=8, blocks=2, upsample="transpose"),
    GeneratorConfig(width=8, blocks=3, output="dehaze"),
    GeneratorConfig(channels=1, width=8, blocks=1, output="haze"),
    GeneratorConfig(width=8, blocks=1, output="derain"),
    GeneratorConfig(width=8, blocks=1, output="dehaze", dark_patch=15),
], ids=["resize", "transpose", "scattering", "grey", "rain", "dark channel"])
@pytest.mark.parametrize("where", ["ram", "files", "device, ram, files"])
@pytest.mark.parametrize("band_elements", [1, 60_000, 1 << 24], ids=["4-row bands", "mixed", "one band"])
def test_streamed_output_equals_the_whole_image_pass(config, where, band_elements, tmp_path):
    g = _strong(config)
    x = torch.rand(1, config.channels, 100, 132) * 2 - 1
    with torch.inference_mode():
        expected = g(x)
    # 4-row bands exercise every band edge and halo many times; "mixed" makes some stages one band (they
    # normalise themselves) and others several (merged statistics), read across each other
    # "device, ram, files": one full-resolution store fits each memory; on a CPU the "device" is RAM too,
    # but the stores take the same path as on a GPU (kept where they are computed, not copied to the host)
    one_store = config.width * 100 * 132 * 4
    places = {"ram": {"memory_bytes": 1 << 30}, "files": {"memory_bytes": 0},
              "device, ram, files": {"device_memory_bytes": one_store, "memory_bytes": one_store}}[where]
    out = _stream(g, x, band_elements=band_elements, scratch_dir=str(tmp_path), **places)
    assert not out.isnan().any()
    assert (out - expected).abs().max() < 1e-4
    assert list(tmp_path.iterdir()) == []  # scratch files are unlinked at once: nothing is left behind


def test_stores_go_to_files_beyond_the_memory_budget(monkeypatch, tmp_path):
    made = []
    original = streaming.FileStore.__init__

    def spy(self, *args, **kwargs):
        made.append(args[:3])
        original(self, *args, **kwargs)
    monkeypatch.setattr(streaming.FileStore, "__init__", spy)
    g = _strong(GeneratorConfig(width=8, blocks=1))
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    _stream(g, x, memory_bytes=8 * 64 * 64 * 4, scratch_dir=str(tmp_path))  # room for the first store only
    assert made and (16, 32, 32) in made  # the half-resolution store went to a file


def test_stores_fill_the_device_then_ram_then_files(tmp_path):
    runner = StreamedRunner(_strong(GeneratorConfig(width=8, blocks=1)), torch.device("cpu"),
                            device_memory_bytes=100, memory_bytes=100, scratch_dir=str(tmp_path))
    first, second, third = (runner._new_store(1, 5, 5) for _ in range(3))  # 100 bytes each
    assert runner._in_use == {"device": 100, "ram": 100}
    assert isinstance(third, streaming.FileStore)
    first.close()  # room on the device again: the next store goes there
    fourth = runner._new_store(1, 5, 5)
    assert isinstance(fourth, streaming.MemoryStore) and runner._in_use == {"device": 100, "ram": 100}
    for store in (second, third, fourth):
        store.close()
    assert runner._in_use == {"device": 0, "ram": 0}


def test_restore_array_keeps_streamed_layers_on_a_gpu_up_to_half_its_free_memory(monkeypatch):
    from napari_cdd_dehaze.restore import engine as restore
    monkeypatch.setattr(restore.torch.cuda, "mem_get_info", lambda device: (10 << 30, 80 << 30))
    assert restore.stream_device_bytes(torch.device("cuda"), None) == 5 << 30
    assert restore.stream_device_bytes(torch.device("cuda"), 123) == 123
    assert restore.stream_device_bytes(torch.device("cpu"), None) == 0
    assert restore.stream_device_bytes(torch.device("mps"), None) == 0


def test_restore_array_streams_beyond_whole_max_pixels(photos):
    g = _strong(GeneratorConfig(width=8, blocks=2, output="dehaze"))
    photo = resize(photos["coffee"], (261, 347), anti_aliasing=True).astype(np.float32)  # odd sizes
    whole = restore_array(g, photo, RestoreOptions(device="cpu", tile=0))
    seen = []
    streamed = restore_array(g, photo, RestoreOptions(device="cpu", whole_max_pixels=100 * 100,
                                                      stream_band_elements=20_000,
                                                      progress=lambda d, t: seen.append((d, t))))
    assert np.abs(streamed - whole).max() < 1e-4
    assert seen[-1][0] == seen[-1][1] > 2 * len(plan(g))  # several bands per stage, counted to the total


def test_stop_cancels_between_bands():
    g = _strong(GeneratorConfig(width=8, blocks=1))
    calls = []

    def stop_after_five():
        calls.append(1)
        return len(calls) > 5
    image = np.random.default_rng(0).random((128, 128, 3), dtype=np.float32)
    with pytest.raises(Cancelled):
        restore_array(g, image, RestoreOptions(device="cpu", whole_max_pixels=0, should_stop=stop_after_five))
    assert len(calls) == 6


def test_out_of_memory_halves_the_band_and_gives_the_same_result(monkeypatch):
    g = _strong(GeneratorConfig(width=8, blocks=1))
    image = np.random.default_rng(1).random((96, 160, 3), dtype=np.float32)
    expected = restore_array(g, image, RestoreOptions(device="cpu", tile=0))
    stage, bands = StreamedRunner._stage, []

    def small_memory(self, *args, **kwargs):
        bands.append(self.band_elements)
        if self.band_elements > 1 << 18:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")
        return stage(self, *args, **kwargs)
    monkeypatch.setattr(StreamedRunner, "_stage", small_memory)
    out = restore_array(g, image, RestoreOptions(device="cpu", whole_max_pixels=0))
    assert np.abs(out - expected).max() < 1e-4
    assert bands[0] == 1 << 24 and bands[-1] <= 1 << 18


def test_out_of_memory_moves_the_stores_off_the_device_before_it_shrinks_the_band(monkeypatch):
    g = _strong(GeneratorConfig(width=8, blocks=1))
    image = np.random.default_rng(1).random((96, 160, 3), dtype=np.float32)
    expected = restore_array(g, image, RestoreOptions(device="cpu", tile=0))
    stage, tried = StreamedRunner._stage, []

    def full_device(self, *args, **kwargs):
        tried.append((self.device_memory_bytes, self.band_elements))
        if self.device_memory_bytes:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")
        return stage(self, *args, **kwargs)
    monkeypatch.setattr(StreamedRunner, "_stage", full_device)
    out = restore_array(g, image, RestoreOptions(device="cpu", whole_max_pixels=0, stream_device_bytes=1 << 30))
    assert np.abs(out - expected).max() < 1e-4
    assert tried[0] == (1 << 30, 1 << 24) and tried[-1] == (0, 1 << 24)


def test_an_unknown_layout_is_refused():
    g = ResnetGenerator(GeneratorConfig(width=8, blocks=1))
    g.encoder[1] = torch.nn.Identity()
    with pytest.raises(ValueError, match="expected Conv2d"):
        plan(g)




@pytest.mark.parametrize("band_rows", [4, 12, 37, 1000])
@pytest.mark.parametrize("plateaus", [False, True], ids=["smooth", "ties"])
def test_the_banded_airlight_is_the_whole_image_estimate(band_rows, plateaus):
    """Band by band, the same pixel as :func:`estimate_airlight` over the whole image, ties included."""
    from napari_cdd_dehaze.imaging.primitives import estimate_airlight
    from napari_cdd_dehaze.restore.windows import banded_airlight

    torch.manual_seed(1)
    x = torch.rand(1, 3, 90, 70)
    if plateaus:  # coarse levels: the dark channel and the brightness tie across many pixels
        x = (x * 4).round() / 4
    x = x * 2 - 1
    expected = estimate_airlight((x + 1) / 2, 9)
    assert torch.equal(banded_airlight(lambda y0, y1: x[..., y0:y1, :], 90, 70, 9, band_rows), expected)


@pytest.mark.parametrize("fields", [dict(pool_airlight=1), dict(airlight_floor=3),
                                    dict(pool_airlight=1, airlight_floor=5)], ids=["pooled", "floored", "both"])
def test_bands_and_tiles_compose_with_the_whole_images_airlight(fields):
    """A restorer whose airlight is one value per image (pooled, or floored by the image's estimate) gives the
    whole-image result streamed and in tiles: every band and tile gets the image's airlight, not its own."""
    torch.manual_seed(0)
    g = ResnetGenerator(GeneratorConfig(width=8, blocks=1, output="dehaze", dark_patch=7, estimate_size=64,
                                        **fields)).eval()
    with torch.no_grad():
        g.head[1].weight[1] *= 20  # an airlight map that varies a lot over the image
    image = np.random.default_rng(0).random((120, 96, 3)).astype(np.float32)
    image[:30] = 0.2 + 0.8 * image[:30]  # a bright, hazy-looking top: the airlight estimate is found there
    options = dict(device="cpu", estimate_size=0)
    whole = restore_array(g, image, RestoreOptions(tile=0, **options))
    streamed = restore_array(g, image, RestoreOptions(whole_max_pixels=1000, stream_band_elements=1 << 12, **options))
    tiled = restore_array(g, image, RestoreOptions(tile=64, **options))
    assert np.abs(streamed - whole).max() < 1e-4
    assert np.abs(tiled - whole).max() < 1e-4
    from napari_cdd_dehaze.gan.networks import ImageAirlight
    grey = torch.full((1, 1, 1, 1), 0.3)
    with g.imposing_airlight(ImageAirlight(grey, grey)):  # another airlight changes the output: the test can see it
        other = restore_array(g, image, RestoreOptions(tile=0, **options))
    assert np.abs(other - whole).max() > 0.01


def test_the_file_store_needs_no_posix_only_calls_and_leaves_nothing_behind(monkeypatch, tmp_path):
    """Streaming through files with ``os.preadv`` and ``os.pwrite`` unavailable (as on Windows) equals the whole
    pass, and a stop in the middle leaves no scratch file in the folder."""
    for name in ("preadv", "pwrite", "pread"):
        monkeypatch.delattr("os." + name, raising=False)
    g = _strong(GeneratorConfig(width=8, blocks=2, output="dehaze"))
    x = torch.rand(1, 3, 64, 96) * 2 - 1
    with torch.inference_mode():
        expected = g(x)
    out = _stream(g, x, band_elements=20_000, memory_bytes=0, scratch_dir=str(tmp_path))
    assert (out - expected).abs().max() < 1e-4
    assert list(tmp_path.iterdir()) == []
    calls = []

    def stop_later():
        calls.append(1)
        if len(calls) > 12:
            raise Cancelled("stopped")
    runner = StreamedRunner(g, torch.device("cpu"), band_elements=20_000, memory_bytes=0,
                            scratch_dir=str(tmp_path), check_stop=stop_later)
    with pytest.raises(Cancelled):
        runner.run(lambda y0, y1, x0, x1: x[..., y0:y1, x0:x1], lambda *a: None, 64, 96)
    assert list(tmp_path.iterdir()) == []
