"""Restoration throughput (megapixels/s) and peak memory, whole-image against tiled, in one run.

Each case runs in its own process, so its peak RSS is its own. Images are synthetic (smooth random
colour fields with noise); speed does not depend on content. Achieved GFLOP/s counts the network's
convolutions for the image itself (margins and statistics passes are overhead, not useful work) and is
set against the fp32 and bf16 matrix-multiply rates measured at the start of the same run. Each case also times
the network's convolutions alone (every distinct shape in isolation, best layout, summed: ``conv_limit_seconds``)
and prints that limit over the end-to-end time: 1.0 would mean everything but the convolutions is free.

    python benchmarks/bench_restore.py --width 32 --blocks 6
    python benchmarks/bench_restore.py --cases 1024-rgb-whole 1024-rgb-tiled
    python benchmarks/bench_restore.py --device cuda --precision bf16
    python benchmarks/bench_restore.py --device cuda --cases 4096-rgb-streamed --set stream_device_bytes=0

On a GPU the matrix-multiply rates are measured on the GPU, the timed restore ends with the array back
in host memory (``restore_array`` returns numpy), and the table adds the peak GPU memory.
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time

import numpy as np
import torch

CASES = {  # name: (side, channels, dtype, tile)  tile 0 = whole image, "stream" = layer by layer over row bands
    "1024-rgb-whole": (1024, 3, "uint8", 0),
    "1024-rgb-streamed": (1024, 3, "uint8", "stream"),
    "1024-rgb-tiled": (1024, 3, "uint8", 512),
    "2048-u16-whole": (2048, 1, "uint16", 0),
    "2048-u16-streamed": (2048, 1, "uint16", "stream"),
    "4096-rgb-streamed": (4096, 3, "uint8", "stream"),
    "8192-rgb-streamed": (8192, 3, "uint8", "stream"),
    "2048-u16-tiled": (2048, 1, "uint16", 512),
    "4096-rgb-tiled": (4096, 3, "uint8", 512),
    "8192-rgb-tiled": (8192, 3, "uint8", 512),
    "4096-rgb-whole": (4096, 3, "uint8", 0),  # GPU only: whole-image activations of 4096²/8192² need
    "8192-rgb-whole": (8192, 3, "uint8", 0),  # tens of GB (fine on a large card, not in 24 GB of RAM)
}
GPU_ONLY = {"4096-rgb-whole", "8192-rgb-whole"}
SLOW = {"2048-u16-tiled", "4096-rgb-tiled", "8192-rgb-tiled"}  # superseded by streaming: run when named


def matmul_rate(dtype: torch.dtype, n: int = 2048, repeat: int = 5, device: str = "cpu") -> float:
    a, b = torch.randn(n, n, dtype=dtype, device=device), torch.randn(n, n, dtype=dtype, device=device)
    a @ b
    _sync(device)
    start = time.perf_counter()
    for _ in range(repeat):
        a @ b
    _sync(device)
    return 2 * n ** 3 * repeat / (time.perf_counter() - start) / 1e9


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def conv_flops_per_pixel(generator: torch.nn.Module) -> float:
    """FLOPs (2 per multiply-add) of the generator's convolutions per input pixel, counted at 256²."""
    total = 0

    def count(module, inputs, output):
        nonlocal total
        k = module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups
        positions = output.numel() if isinstance(module, torch.nn.Conv2d) else inputs[0].numel()
        total += 2 * k * positions * (1 if isinstance(module, torch.nn.Conv2d) else module.out_channels
                                      // module.in_channels)
    hooks = [m.register_forward_hook(count) for m in generator.modules()
             if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
    with torch.inference_mode():
        generator(torch.zeros(1, generator.config.channels, 256, 256))
    for h in hooks:
        h.remove()
    return total / 256 ** 2


def conv_limit_seconds(generator: torch.nn.Module, side: int, device: str = "cpu",
                       dtype: torch.dtype | None = None, band_elements: int = 1 << 22) -> float:
    """The time the network's convolutions alone take on a ``side``² image: this machine's practical limit.

    Each convolution's input shape is recorded on a 256² forward and scaled to ``side``. Every distinct shape is
    then timed in isolation, in contiguous and in channels-last layout (the faster counts), under autocast to
    ``dtype`` when given. It is timed on a band of rows of about ``band_elements`` input values and scaled by
    rows, since a convolution's cost is linear in its output's rows. The sum over the network's convolutions is
    returned: no normalisation, activation, padding, upsampling or copy is in it.
    """
    shapes: list[tuple[torch.nn.Conv2d, tuple[int, int, int]]] = []
    hooks = [m.register_forward_hook(lambda m, inputs, out: shapes.append((m, tuple(inputs[0].shape[1:]))))
             for m in generator.modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.inference_mode():
        generator(torch.zeros(1, generator.config.channels, 256, 256))
    for h in hooks:
        h.remove()
    timed: dict[tuple, float] = {}
    total = 0.0
    for conv, (channels, h, w) in shapes:
        height, width = round(h * side / 256), round(w * side / 256)
        key = (conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, height, width)
        if key not in timed:
            rows = max(conv.kernel_size[0] + conv.stride[0], min(height, band_elements // max(1, channels * width)))
            x = torch.randn(1, channels, rows, width, device=device)
            layer = torch.nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                                    conv.padding).to(device).eval()
            best = float("inf")
            for layout in (torch.contiguous_format, torch.channels_last):
                xl, ll = x.contiguous(memory_format=layout), layer.to(memory_format=layout)
                best = min(best, _time_call(lambda ll=ll, xl=xl: ll(xl), device, dtype))
            out_rows = (rows + 2 * conv.padding[0] - conv.kernel_size[0]) // conv.stride[0] + 1
            full_rows = (height + 2 * conv.padding[0] - conv.kernel_size[0]) // conv.stride[0] + 1
            timed[key] = best * full_rows / out_rows
        total += timed[key]
    return total


def _time_call(call, device: str, dtype: torch.dtype | None, min_seconds: float = 0.2) -> float:
    """Best time of ``call()`` over repeats that take at least ``min_seconds`` in all (after a warm-up)."""
    with torch.inference_mode(), torch.autocast(device.split(":")[0], dtype=dtype, enabled=dtype is not None):
        call()
        _sync(device)
        best, spent = float("inf"), 0.0
        while spent < min_seconds:
            start = time.perf_counter()
            call()
            _sync(device)
            elapsed = time.perf_counter() - start
            best, spent = min(best, elapsed), spent + elapsed
    return best


def synthetic_image(side: int, channels: int, dtype: str) -> np.ndarray:
    rng = np.random.default_rng(0)
    coarse = rng.random((side // 64 + 2, side // 64 + 2, channels), dtype=np.float32)
    field = np.kron(coarse, np.ones((64, 64, 1), np.float32))[:side, :side]
    top = np.iinfo(dtype).max
    image = np.empty((side, side, channels), dtype=dtype)
    for y in range(0, side, 1024):  # bounded temporary memory
        band = field[y:y + 1024] * 0.8 + rng.random(field[y:y + 1024].shape, dtype=np.float32) * 0.2
        image[y:y + 1024] = (band * top).astype(dtype)
    return image[..., 0] if channels == 1 else image


def measure(case: str, width: int, blocks: int, precision: str, device: str = "cpu",
            settings: dict | None = None) -> dict:
    """One case in this process; ``settings`` override :class:`RestoreOptions` fields (an A/B of the engine)."""
    from napari_cdd_dehaze.gan.networks import GeneratorConfig, ResnetGenerator
    from napari_cdd_dehaze.restore.engine import RestoreOptions, restore_array

    side, channels, dtype, tile = CASES[case]
    torch.manual_seed(0)
    generator = ResnetGenerator(GeneratorConfig(channels=3, width=width, blocks=blocks)).eval()
    image = synthetic_image(side, channels, dtype)
    useful = conv_flops_per_pixel(generator) * side * side  # counted before the restore moves the net
    if tile == "stream":  # the default beyond whole_max_pixels; forced here at every size
        options = RestoreOptions(device=device, tile=None, whole_max_pixels=0, precision=precision, **settings or {})
    else:
        options = RestoreOptions(device=device, tile=tile, precision=precision, **settings or {})
    restore_array(generator, image[:64, :64], options)  # warm-up
    if device.startswith("cuda"):
        restore_array(generator, image[:512, :512], options)  # cuDNN algorithm choice for the tile size
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    restore_array(generator, image, options)
    seconds = time.perf_counter() - start
    megapixels = side * side / 1e6  # grey and RGB both take one pass
    autocast = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    limit = conv_limit_seconds(generator.cpu() if device == "cpu" else generator, side, device, autocast)
    return {"case": case, "width": width, "blocks": blocks, "precision": precision, "seconds": seconds,
            "conv_limit_s": limit, "of_limit": limit / seconds,
            "mp_per_s": megapixels / seconds, "gflop_per_s": useful / seconds / 1e9,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "device": device,
            "peak_gpu_mb": torch.cuda.max_memory_allocated(device) / 2**20 if device.startswith("cuda") else None}


def matmul_rates(device: str) -> tuple[float, float, str]:
    """fp32 and bf16 matrix-multiply GFLOP/s on ``device``, and how they were measured."""
    if device.startswith("cuda"):
        n, repeat = 8192, 10
        fp32, bf16 = (matmul_rate(t, n, repeat, device) for t in (torch.float32, torch.bfloat16))
        return fp32, bf16, f"{torch.cuda.get_device_name(device)}, matmul {n}²"
    # bf16 at 512² only: without native bf16 (AVX2 machines) a 2048² product takes minutes
    fp32, bf16 = matmul_rate(torch.float32), matmul_rate(torch.bfloat16, n=512, repeat=2)
    return fp32, bf16, f"{torch.get_num_threads()} threads, matmul fp32 2048², bf16 512²"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="*", choices=sorted(CASES), help="default: all")
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--blocks", type=int, default=9)
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, mps")
    parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=INT",
                        help="RestoreOptions fields to override, e.g. stream_device_bytes=0 (integers)")
    parser.add_argument("--json", help="write the results here as well")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--matmul-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    settings = {k: int(v) for k, v in (item.split("=", 1) for item in args.set)}
    if args.child:
        print(json.dumps(measure(args.child, args.width, args.blocks, args.precision, args.device, settings)))
        return
    if args.matmul_only:
        print(json.dumps(matmul_rates(args.device)))
        return

    # in a process of its own too: a parent that has run torch's thread pool slows its children down (measured: a
    # 1024² case took 3.3 s under such a parent and 2.65 s alone)
    done = subprocess.run([sys.executable, __file__, "--matmul-only", "--device", args.device], capture_output=True,
                          text=True, check=True)
    fp32, bf16, where = json.loads(done.stdout)
    print(f"# {platform.machine()}, {where}, torch {torch.__version__}; "
          f"matmul: fp32 {fp32:.0f} GFLOP/s, bf16 {bf16:.1f} GFLOP/s; network width {args.width}, "
          f"{args.blocks} blocks, {args.precision} on {args.device}"
          + "".join(f"; {k}={v}" for k, v in settings.items()))
    print("| case | seconds | MP/s | achieved GFLOP/s | of fp32 matmul | conv-only limit s | limit / end-to-end "
          "| peak RSS MB | peak GPU MB |", flush=True)
    print("|---|---|---|---|---|---|---|---|---|")
    results = []
    default_cases = [c for c in CASES if (args.device.startswith("cuda") or c not in GPU_ONLY) and c not in SLOW]
    for case in args.cases or default_cases:
        child = [sys.executable, __file__, "--child", case, "--width", str(args.width), "--blocks", str(args.blocks),
                 "--precision", args.precision, "--device", args.device] + (["--set", *args.set] if args.set else [])
        done = subprocess.run(child, capture_output=True, text=True)
        if done.returncode != 0:  # report the case and go on with the others
            why = (done.stderr.strip().splitlines() or ["?"])[-1]
            print(f"| {' '.join(child[2:])} | failed: {why} |", flush=True)
            continue
        r = json.loads(done.stdout)
        results.append(r)
        print(f"| {case} | {r['seconds']:.1f} | {r['mp_per_s']:.3f} | {r['gflop_per_s']:.0f} | "
              f"{r['gflop_per_s'] / fp32:.0%} | {r['conv_limit_s']:.1f} | {r['of_limit']:.2f} | {r['peak_rss_mb']:.0f} "
              f"| {'–' if r['peak_gpu_mb'] is None else round(r['peak_gpu_mb'])} |", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": platform.platform(), "where": where, "torch": torch.__version__, "matmul_fp32": fp32,
                       "matmul_bf16": bf16, "settings": settings, "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
