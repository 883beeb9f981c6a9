"""The restoration engine: tiles agree with the whole image, every layout and dtype round-trips, stop works."""
import numpy as np
import pytest
import torch
from skimage.transform import resize

from napari_cdd_dehaze.gan.networks import GeneratorConfig, ResnetGenerator
from napari_cdd_dehaze.imaging.devices import pick_device
from napari_cdd_dehaze.restore.dispatch import Dispatcher
from napari_cdd_dehaze.restore.engine import RestoreOptions, restore_array
from napari_cdd_dehaze.restore.tiles import default_margin, imposed_statistics, receptive_field
from napari_cdd_dehaze.restore.windows import Cancelled


@pytest.fixture(scope="module")
def generator():
    """A small generator with PyTorch's default initialisation: outputs vary strongly with the input."""
    torch.manual_seed(0)
    return ResnetGenerator(GeneratorConfig(width=8, blocks=3)).eval()


@pytest.fixture(scope="module")
def photo(photos):
    return resize(photos["coffee"], (517, 1031), anti_aliasing=True).astype(np.float32)  # odd, not /4


def test_receptive_field_of_the_paper_generator():
    g = ResnetGenerator(GeneratorConfig(width=8, blocks=9))
    assert receptive_field(g) == 169  # 7×7 stem, 2 downs, 18 convs at 1/4, 2 resize-convs, 7×7 out
    assert default_margin(g) % 4 == 0 and default_margin(g) >= 169 // 2


@pytest.mark.parametrize("tile", [64, 100, 128, 256])
def test_tiles_match_the_whole_image_within_2_of_255(generator, photo, tile):
    whole = restore_array(generator, photo, RestoreOptions(device="cpu", tile=0))
    tiled = restore_array(generator, photo, RestoreOptions(device="cpu", tile=tile))
    assert tiled.shape == whole.shape == photo.shape and tiled.dtype == np.float32
    assert np.abs(tiled - whole).max() < 2 / 255
    assert np.abs(tiled - whole).max() < 1e-4  # in fact: float rounding only


def test_tiles_match_the_whole_image_with_a_dark_channel_head(photo):
    """The dark channel's 15×15 window near a tile's edge reads the margin, not padding."""
    torch.manual_seed(0)
    g = ResnetGenerator(GeneratorConfig(width=8, blocks=2, output="dehaze", dark_patch=15)).eval()
    with torch.no_grad():
        g.head[1].weight[:, -1] += 0.5  # make the dark channel matter to the output
    whole = restore_array(g, photo, RestoreOptions(device="cpu", tile=0))
    tiled = restore_array(g, photo, RestoreOptions(device="cpu", tile=100))
    assert np.abs(tiled - whole).max() < 3e-4  # float rounding: the whole pass's norms sum in another order



def test_statistics_from_a_reduced_copy_are_shared_so_there_are_no_seams(generator, photo):
    """Beyond ``stats_max_pixels`` the statistics are approximate, but every tile uses the same ones."""
    runner = Dispatcher(generator, torch.device("cpu"), tile=128, stats_max_pixels=200 * 200)
    x = torch.from_numpy(np.ascontiguousarray(photo[:516, :1028].transpose(2, 0, 1)))[None] * 2 - 1
    read = lambda y0, y1, x0, x1: x[..., y0:y1, x0:x1]  # noqa: E731
    out = torch.zeros_like(x)

    def write(y0, y1, x0, x1, y):
        out[..., y0:y1, x0:x1] = y
    runner.run(read, write, 516, 1028)
    stats = runner.statistics(read, 516, 1028)
    with torch.inference_mode(), imposed_statistics(generator, stats):
        reference = generator(x)  # one pass over the whole image with the same shared statistics
    assert (out - reference).abs().max() < 1e-4


def test_the_statistics_pass_of_a_large_image_runs_on_a_copy_of_bounded_size(generator, photo, monkeypatch):
    """Exact statistics up to ``stats_max_pixels``; beyond, a copy of at most ``approx_stats_pixels`` (memory)."""
    import napari_cdd_dehaze.restore.tiles as tiling
    seen, record = [], tiling.record_statistics
    monkeypatch.setattr(tiling, "record_statistics", lambda g, x: seen.append(x.shape[-2:]) or record(g, x))
    x = torch.zeros(1, 3, 516, 1028)
    read = lambda y0, y1, x0, x1: x[..., y0:y1, x0:x1]  # noqa: E731
    Dispatcher(generator, torch.device("cpu"), tile=128).statistics(read, 516, 1028)
    Dispatcher(generator, torch.device("cpu"), tile=128, stats_max_pixels=516 * 1028 - 1,
                approx_stats_pixels=100 * 100).statistics(read, 516, 1028)
    assert seen[0] == (516, 1028)
    assert seen[1][0] * seen[1][1] <= 100 * 100 and seen[1][0] % 4 == 0 and seen[1][1] % 4 == 0


@pytest.mark.parametrize("shape,dtype", [
    ((37, 51), np.uint8), ((37, 51), np.uint16), ((37, 51), np.float32), ((37, 51), np.float64),
    ((37, 51, 3), np.uint8), ((37, 51, 3), np.uint16), ((37, 51, 4), np.uint8), ((37, 51, 2), np.uint16),
    ((3, 37, 51), np.uint16), ((2, 3, 20, 24), np.uint8), ((2, 20, 24, 3), np.float32),
    ((3, 5), np.uint8), ((1, 1, 3), np.uint8), ((4, 70, 3), np.uint8)])
def test_every_layout_and_dtype_round_trips(generator, shape, dtype):
    rng = np.random.default_rng(0)
    if np.issubdtype(dtype, np.integer):
        array = rng.integers(0, np.iinfo(dtype).max, size=shape, dtype=dtype, endpoint=True)
    else:
        array = (rng.random(shape) * 1000 - 300).astype(dtype)  # arbitrary float range
    out = restore_array(generator, array, RestoreOptions(device="cpu", tile=64))
    assert out.shape == array.shape and out.dtype == array.dtype
    assert np.all(np.isfinite(out))
    if np.issubdtype(dtype, np.floating):  # comparable scale: mapped back into the input's robust range
        assert out.min() >= np.percentile(array, 0.1) - 1e-3 and out.max() <= np.percentile(array, 99.9) + 1e-3
    if len(shape) == 3 and shape[-1] in (2, 4):
        assert np.array_equal(out[..., -1], array[..., -1])  # alpha passes through


def test_stack_planes_are_restored_alone(generator, photo):
    planes = (photo[:64, :96] * 255).astype(np.uint8)
    stack = np.stack([planes, planes[::-1]])  # (2, 64, 96, 3)
    out = restore_array(generator, stack, RestoreOptions(device="cpu"))
    single = restore_array(generator, planes[::-1], RestoreOptions(device="cpu"))
    assert np.array_equal(out[1], single)


def test_explicit_channel_axis(generator):
    rng = np.random.default_rng(1)
    bands = rng.integers(0, 4000, size=(5, 24, 28), dtype=np.uint16)  # 5 bands first: multichannel, not a stack
    out = restore_array(generator, bands, RestoreOptions(device="cpu"), channel_axis=0)
    assert out.shape == bands.shape
    one = restore_array(generator, bands[2], RestoreOptions(device="cpu"))  # each band is restored as grey
    assert np.array_equal(out[2], one)


def test_progress_reaches_the_total_and_stop_cancels_between_tiles(generator, photo):
    seen = []
    restore_array(generator, photo[:200, :300], RestoreOptions(device="cpu", tile=64,
                                                               progress=lambda d, t: seen.append((d, t))))
    assert seen[-1][0] == seen[-1][1] and [d for d, _ in seen] == sorted(d for d, _ in seen)
    calls = []

    def stop_after_two():
        calls.append(1)
        return len(calls) > 2
    with pytest.raises(Cancelled):
        restore_array(generator, photo[:200, :300], RestoreOptions(device="cpu", tile=64, should_stop=stop_after_two))
    assert len(calls) == 3


@pytest.mark.parametrize("error", [
    "CUDA out of memory. Tried to allocate 2.00 GiB (simulated)",
    "input tensor must fit into 32-bit index math",  # cuDNN on a width-32 network's whole 8192² activations
], ids=["out of memory", "past 32-bit indexing"])
def test_out_of_memory_halves_the_tile_and_gives_the_same_result(generator, photo, monkeypatch, error):
    image = photo[:256, :384]
    expected = restore_array(generator, image, RestoreOptions(device="cpu", tile=0))
    runner_forward = Dispatcher._forward
    sizes = []

    def small_memory(self, x, whole=False):
        sizes.append(x.shape[-1])
        if x.shape[-2] * x.shape[-1] > 200 * 200:
            raise RuntimeError(error)
        return runner_forward(self, x, whole)
    monkeypatch.setattr(Dispatcher, "_forward", small_memory)
    out = restore_array(generator, image, RestoreOptions(device="cpu", tile=0))
    assert np.abs(out - expected).max() < 1e-4
    assert sizes[0] == 384 and max(sizes[1:]) < 384  # whole image first, then smaller tiles


def test_bad_input_is_a_clear_error(generator):
    with pytest.raises(ValueError, match="NaN"):
        restore_array(generator, np.array([[np.nan, 1.0], [0.0, 0.5]], np.float32))
    with pytest.raises(ValueError, match="expected an image"):
        restore_array(generator, np.zeros(5, np.uint8))
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA GPU is available"):
            pick_device("cuda")


def test_bf16_autocast_stays_close_to_fp32(generator, photo):
    image = photo[:64, :64]
    fp32 = restore_array(generator, image, RestoreOptions(device="cpu"))
    bf16 = restore_array(generator, image, RestoreOptions(device="cpu", precision="bf16"))
    error = np.abs(bf16 - fp32)
    assert 0 < error.mean() < 0.1  # autocast really ran, and stays near fp32 (random weights; see benchmarks/)
    with pytest.raises(ValueError, match="fp16 autocast is for GPUs"):
        restore_array(generator, image, RestoreOptions(device="cpu", precision="fp16"))
