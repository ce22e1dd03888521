"""export.preprocess: the evaluation transform (the C kernel, the numpy + BLAS path and the
numpy reference against the training side) and image decoding (modes, bit depths, the pixel
cap, bad files)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent / "data"))
from image_files import write_huge_png, write_png16  # noqa: E402

from export import preprocess  # noqa: E402
from export.errors import ExportUsageError  # noqa: E402
from export.preprocess import (  # noqa: E402
    BACKEND_ENV,
    fast_backend,
    preprocess_images,
    preprocess_reference,
    read_image,
)

PRE = {"resize": None, "crop": 16, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
       "channel_order": "RGB", "input_scale": 255.0}


def preprocess_blas(images, pre: dict, resolution: int) -> np.ndarray:
    """:func:`preprocess_images` with the C kernel switched off (the numpy + BLAS path)."""
    old = os.environ.get(BACKEND_ENV)
    os.environ[BACKEND_ENV] = "numpy"
    try:
        return preprocess_images(images, pre, resolution)
    finally:
        if old is None:
            del os.environ[BACKEND_ENV]
        else:
            os.environ[BACKEND_ENV] = old


IMPLS = [preprocess_images, preprocess_blas, preprocess_reference]
IDS = ["fast", "blas", "numpy"]
#: the C kernel's tests need it built (`pip install -e .` compiles export/_resample.c)
needs_kernel = pytest.mark.skipif(
    fast_backend() != "c", reason="export/_resample.c is not built (pip install -e . builds it)"
    if preprocess._kernel() is None else f"{BACKEND_ENV}=numpy is set")


def _img(h: int, w: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _photo(h: int, w: int) -> np.ndarray:
    """Smooth gradients plus mild noise: closer to a photo than uniform noise."""
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    noise = np.random.default_rng(2).normal(0, 6, (h, w, 3))
    img = np.stack([xx * 200, yy * 200, 120 + 100 * np.sin(9 * xx * yy)], axis=2) + noise
    return img.clip(0, 255).astype(np.uint8)


def _training_side(img: np.ndarray, pre: dict, resolution: int) -> np.ndarray:
    """mutualnet.data.transforms' evaluation transform on a float tensor."""
    torch = pytest.importorskip("torch")
    from mutualnet.data.transforms import resize_center_crop, resize_to

    x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].float()
    x = resize_center_crop(x / pre["input_scale"], pre["resize"], pre["crop"],
                           pre.get("resize_mode", "shorter_side"))
    mean = torch.tensor(pre["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(pre["std"]).view(1, 3, 1, 1)
    return resize_to((x - mean) / std, resolution).numpy()


# ------------------------------------------------------------------ geometry and parity

@pytest.mark.parametrize("impl", IMPLS, ids=IDS)
@pytest.mark.parametrize("shape, resize, crop, res, mode", [
    ((16, 16), None, 16, 12, None),             # only the subnet resize
    ((16, 16), None, 16, 16, None),             # nothing at all
    ((40, 30), None, 16, 12, None),             # larger than crop: center crop
    ((10, 13), None, 16, 16, None),             # smaller than crop: upscale first
    ((50, 70), 24, 20, 14, "shorter_side"),     # shorter side down, crop, then r
    ((17, 23), 24, 20, 29, "shorter_side"),     # shorter side up, crop, r above the crop
    ((33, 51), 24, 21, 1, "shorter_side"),      # odd sizes, resolution 1
    ((50, 70), 20, 20, 20, "stretch"),          # whole image to 20 x 20
    ((31, 57), 24, 20, 14, "stretch"),          # one side up, the other down
    ((9, 12), None, 16, 12, "stretch"),         # upscaled to crop x crop
])
def test_matches_the_training_side_transform(impl, shape, resize, crop, res, mode) -> None:
    pre = dict(PRE, resize=resize, crop=crop)
    if mode is not None:
        pre["resize_mode"] = mode
    img = _img(*shape)
    ours = impl(img[None], pre, res)
    assert ours.shape == (1, 3, res, res) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, _training_side(img, pre, res), atol=2e-5, rtol=0)


@pytest.mark.parametrize("resize, crop, res, mode", [
    (256, 224, 128, "shorter_side"),   # MutualNet on ImageNet, the 0.25-128 subnet
    (128, 128, 128, "stretch"),        # imported TFLite MobileNet v1 0.25-128
    (None, 224, 160, "shorter_side"),
])
def test_photo_sizes_match_the_training_side(resize, crop, res, mode) -> None:
    """At 224 px the float32 sampling positions themselves differ in the last bits (torch's
    and ours alike), a few 1e-5 after normalization: 0.001 of a grey level."""
    pre = dict(PRE, resize=resize, crop=crop, resize_mode=mode)
    img = _photo(224, 300)
    ref = _training_side(img, pre, res)
    for impl in IMPLS:
        assert np.abs(impl([img], pre, res) - ref).max() < 5e-5


def test_fast_path_equals_the_numpy_reference_on_random_geometry() -> None:
    """Both modes, down- and upscales, odd sizes, crops, resolutions above and below the
    crop (the align-corners step both ways), BGR, grayscale, RGBA, lists of mixed sizes."""
    rng = np.random.default_rng(3)
    for _ in range(40):
        crop = int(rng.integers(4, 40))
        resize = None if rng.random() < 0.3 else int(rng.integers(crop, 60))
        pre = dict(PRE, resize=resize, crop=crop,
                   resize_mode=str(rng.choice(["shorter_side", "stretch"])),
                   channel_order=str(rng.choice(["RGB", "BGR"])))
        res = int(rng.integers(1, 48))
        imgs = [_img(*(int(v) for v in rng.integers(5, 90, 2)), seed=int(rng.integers(1 << 30)))
                for _ in range(int(rng.integers(1, 4)))]
        if rng.random() < 0.3:
            imgs[0] = imgs[0][:, :, 0]
        elif rng.random() < 0.3:
            imgs[0] = np.concatenate([imgs[0], imgs[0][:, :, :1]], axis=2)
        np.testing.assert_allclose(preprocess_images(imgs, pre, res),
                                   preprocess_reference(imgs, pre, res),
                                   atol=2e-5, rtol=0,
                                   err_msg=str(([i.shape for i in imgs], pre, res)))


GEOMETRIES = [(224, 256, 16, 224, 128), (224, 128, 0, 128, 128), (300, 256, 0, 256, 224),
              (7, 16, 0, 16, 3), (50, 24, 0, 20, 1), (90, 31, 0, 31, 47)]


def test_banded_windows_hold_every_tap() -> None:
    """The regular windows (over the zero-padded axis) hold each block's weights exactly."""
    for n_in, n_res, start, crop, res in GEOMETRIES:
        m = preprocess._axis_matrix(n_in, n_res, start, crop, res)
        band = preprocess._Band(m, 8)
        before, after = band.pad
        assert band.first + band.step * (band.blocks - 1) + band.span <= before + n_in + after
        dense = np.zeros((band.blocks * 8, before + n_in + after))
        for b in range(band.blocks):
            first = band.first + band.step * b
            dense[b * 8:(b + 1) * 8, first:first + band.span] = band.weights[b]
        np.testing.assert_array_equal(dense[:res, before:before + n_in], m)
        assert not dense[:, :before].any() and not dense[:, before + n_in:].any()
    # a 224 -> 128 stretch: 8 outputs advance 14 inputs; windows of 17 (29 without padding)
    assert preprocess._Band(preprocess._axis_matrix(224, 128, 0, 128, 128), 8).span <= 18


def test_row_windows_hold_every_tap_inside_the_image() -> None:
    """The exact row windows (one run of rows per block, never past the image) hold each
    block's weights exactly, the rows a crop drops are never read."""
    for n_in, n_res, start, crop, res in GEOMETRIES:
        m = preprocess._axis_matrix(n_in, n_res, start, crop, res)
        rows = preprocess._Rows(m, 4)
        index = rows.index.reshape(rows.blocks, rows.span)
        assert index.min() >= 0 and index.max() < n_in
        dense = np.zeros((rows.blocks * 4, n_in))
        for b in range(rows.blocks):
            dense[b * 4:(b + 1) * 4, index[b]] = rows.weights[b]
        np.testing.assert_allclose(dense[:res], m, atol=1e-7, rtol=0)
    # resize 256, crop 224 of a 224 px image: 4 outputs read 8 rows, rows 0-12 are dropped
    rows = preprocess._Rows(preprocess._axis_matrix(224, 256, 16, 224, 128), 4)
    assert rows.span <= 8 and rows.index.min() >= 12


def test_columns_the_crop_drops_are_not_read() -> None:
    """A 224 x 300 image, resize 256, crop 224: only columns 51-248 reach the output."""
    rh, rw, top, left = preprocess._crop_geometry(224, 300, 256, 224)
    cols = preprocess._axis_matrix(300, rw, left, 224, 128)
    g = preprocess._Gemm(preprocess._axis_matrix(224, rh, top, 224, 128), cols)
    assert 50 <= g.c0 and g.c1 <= 250
    assert not cols[:, :g.c0].any() and not cols[:, g.c1:].any()


@pytest.mark.parametrize("shape, pre, res", [
    ((224, 224), dict(PRE, resize=256, crop=224), 128),
    ((224, 224), dict(PRE, resize=128, crop=128, resize_mode="stretch"), 128),
    ((31, 45), dict(PRE, resize=20, crop=17), 13),       # odd sizes, 13 not a multiple of 8
    ((20, 20), dict(PRE, resize=None, crop=20), 29),     # align-corners upscale
])
def test_batches_equal_the_reference_image_by_image(shape, pre, res) -> None:
    """An NHWC batch of 3 through the fast path: within the parity tolerance of the
    reference, and each image equal to itself alone."""
    batch = np.stack([_img(*shape, seed=s) for s in (4, 5, 6)])
    out = preprocess_images(batch, pre, res)
    np.testing.assert_allclose(out, preprocess_reference(batch, pre, res), atol=2e-5, rtol=0)
    for i in range(3):
        np.testing.assert_array_equal(out[i], preprocess_images(batch[i], pre, res)[0])


C_CASES = [
    ((224, 224), dict(PRE, resize=256, crop=224), 128, 1),                        # crop
    ((224, 224), dict(PRE, resize=128, crop=128, resize_mode="stretch"), 128, 1),  # stretch
    ((31, 45), dict(PRE, resize=20, crop=17), 13, 1),                             # odd sizes
    ((20, 20), dict(PRE, resize=None, crop=20), 29, 1),                           # upscale
    ((300, 211), dict(PRE, resize=256, crop=224, channel_order="BGR"), 224, 1),   # BGR
    ((57, 40), dict(PRE, resize=32, crop=30, resize_mode="stretch"), 24, 3),      # batch 3
]


@needs_kernel
@pytest.mark.parametrize("shape, pre, res, n", C_CASES,
                         ids=["crop", "stretch", "odd", "upscale", "bgr", "batch3"])
def test_the_c_kernel_equals_the_reference(shape, pre, res, n, monkeypatch) -> None:
    """The kernel runs (the numpy + BLAS path is not called) and is within the parity
    tolerance of the numpy reference, on packed images and on views (crops, RGBA)."""
    monkeypatch.setattr(preprocess, "_fast_one", _never)
    batch = np.stack([_img(*shape, seed=s) for s in range(n)])
    np.testing.assert_allclose(preprocess_images(batch, pre, res),
                               preprocess_reference(batch, pre, res), atol=2e-5, rtol=0)
    big = _img(shape[0] + 3, shape[1] + 5)
    rgba = np.concatenate([big, big[:, :, :1]], axis=2)
    view = rgba[2:2 + shape[0], 1:1 + shape[1]]
    np.testing.assert_allclose(preprocess_images(view, pre, res),
                               preprocess_reference(view, pre, res), atol=2e-5, rtol=0)


def _never(*args, **kwargs) -> None:
    raise AssertionError("the numpy + BLAS path ran instead of the C kernel")


@needs_kernel
def test_layouts_the_kernel_does_not_read_take_the_numpy_path() -> None:
    """Float, channel-reversed and column-major images go to the numpy + BLAS path; results
    agree either way."""
    img = _img(40, 33)
    for other in (img.astype(np.float32), img[:, :, ::-1], np.asfortranarray(img)):
        assert preprocess._kernel_input(other) is None
        np.testing.assert_allclose(preprocess_images(other, PRE, 12),
                                   preprocess_reference(other, PRE, 12), atol=2e-5, rtol=0)


def test_the_numpy_path_runs_when_asked_or_when_the_kernel_is_missing(monkeypatch) -> None:
    """MUTUALNET_PREPROCESS=numpy, or no loadable library: the numpy + BLAS path, the same
    result within tolerance."""
    img, pre = _img(64, 48), dict(PRE, resize=40, crop=32)
    ref = preprocess_reference(img, pre, 24)
    monkeypatch.setattr(preprocess, "_c_one", _never)
    monkeypatch.setenv(BACKEND_ENV, "numpy")
    assert fast_backend() == "numpy"
    np.testing.assert_allclose(preprocess_images(img, pre, 24), ref, atol=2e-5, rtol=0)
    monkeypatch.delenv(BACKEND_ENV)
    monkeypatch.setattr(preprocess, "_kernel", lambda: None)
    assert fast_backend() == "numpy"
    np.testing.assert_allclose(preprocess_images(img, pre, 24), ref, atol=2e-5, rtol=0)


def test_an_unloadable_library_is_no_kernel(monkeypatch, tmp_path: Path) -> None:
    """A file that is no shared library where the extension should be: no kernel, no error."""
    import importlib.machinery
    import importlib.util

    bad = tmp_path / "_resample.so"
    bad.write_bytes(b"not a library")
    spec = importlib.machinery.ModuleSpec("export._resample", None, origin=str(bad))
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: spec)
    assert preprocess._kernel.__wrapped__() is None
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    assert preprocess._kernel.__wrapped__() is None


def test_the_cache_is_bounded_by_bytes() -> None:
    """Many image sizes keep at most the cache's byte budget; the newest stay."""
    cache = preprocess._BoundedCache(200_000)
    for n in range(40, 140):
        g = cache.get(("gemm", n), lambda n=n: preprocess._Gemm(
            preprocess._axis_matrix(n, 256, 16, 224, 128),
            preprocess._axis_matrix(n, 256, 16, 224, 128)))
        assert cache.nbytes <= 200_000
    assert cache.get(("gemm", 139), lambda: None) is g            # the newest is kept
    assert cache.get(("gemm", 40), lambda: "rebuilt") == "rebuilt"    # the oldest is gone
    huge = np.zeros(300_000, np.uint8)
    assert cache.get("huge", lambda: huge) is huge and cache.nbytes <= 200_000
    before = preprocess._CACHE.nbytes
    preprocess_images([_img(n, n + 1) for n in range(60, 64)], PRE, 12)
    assert preprocess._CACHE.nbytes <= preprocess.CACHE_BYTES and \
        preprocess._CACHE.nbytes >= min(before, 1)


@pytest.mark.parametrize("impl", IMPLS, ids=IDS)
def test_grayscale_rgba_bgr_and_float_inputs(impl) -> None:
    rgb = _img(21, 27)
    gray = rgb[:, :, 1]
    pre = dict(PRE, resize=18, crop=16)
    np.testing.assert_array_equal(impl(gray, pre, 12), impl(np.repeat(gray[:, :, None], 3, 2),
                                                            pre, 12))
    rgba = np.concatenate([rgb, np.full((21, 27, 1), 7, np.uint8)], axis=2)
    np.testing.assert_array_equal(impl(rgba, pre, 12), impl(rgb, pre, 12))
    bgr = impl(rgb[:, :, ::-1], dict(pre, channel_order="BGR"), 12)
    np.testing.assert_allclose(bgr, impl(rgb, pre, 12), atol=1e-6)
    np.testing.assert_allclose(impl(rgb.astype(np.float32), pre, 12), impl(rgb, pre, 12),
                               atol=1e-6)


@pytest.mark.parametrize("impl", IMPLS, ids=IDS)
def test_a_list_of_sizes_is_each_image_alone(impl) -> None:
    imgs = [_img(20, 20), _img(33, 17, 2), _img(8, 8, 3)[:, :, 0], _img(64, 40, 4)]
    out = impl(imgs, PRE, 12)
    assert out.shape == (4, 3, 12, 12)
    for i, img in enumerate(imgs):
        np.testing.assert_array_equal(out[i], impl([img], PRE, 12)[0])


@pytest.mark.parametrize("impl", IMPLS, ids=IDS)
def test_bad_inputs_are_usage_errors(impl) -> None:
    with pytest.raises(ExportUsageError, match="expected H x W x 3"):
        impl([np.zeros((4, 4, 5), np.uint8)], PRE, 12)
    with pytest.raises(ExportUsageError, match="expected H x W x 3"):
        impl([np.zeros((0, 4, 3), np.uint8)], PRE, 12)
    with pytest.raises(ExportUsageError, match="no images"):
        impl([], PRE, 12)
    with pytest.raises(ExportUsageError, match="unknown preprocessing resize_mode 'fit'"):
        impl(_img(8, 8), dict(PRE, resize_mode="fit"), 12)


# ------------------------------------------------------------------ decoding

def _save(path: Path, img: Image.Image, **kw) -> Path:
    img.save(path, **kw)
    return path


def test_read_image_converts_every_mode_to_uint8_rgb(tmp_path: Path) -> None:
    rgb = _photo(20, 24)
    base = Image.fromarray(rgb)
    files = {
        "rgb.png": base, "gray.png": base.convert("L"), "bw.png": base.convert("1"),
        "palette.png": base.convert("P"), "la.png": base.convert("LA"),
        "rgba.png": base.convert("RGBA"), "cmyk.jpg": base.convert("CMYK"),
        "rgb.bmp": base, "rgb.tif": base,
    }
    for name, im in files.items():
        a = read_image(_save(tmp_path / name, im))
        assert a.dtype == np.uint8 and a.shape == (20, 24, 3), name
    np.testing.assert_array_equal(read_image(tmp_path / "rgb.png"), rgb)
    np.testing.assert_array_equal(read_image(tmp_path / "rgba.png"), rgb)
    gray = np.asarray(base.convert("L"))
    np.testing.assert_array_equal(read_image(tmp_path / "gray.png"), np.stack([gray] * 3, 2))


def test_high_bit_depth_images_equal_their_8_bit_versions(tmp_path: Path) -> None:
    rgb = _photo(20, 24)
    gray = np.asarray(Image.fromarray(rgb).convert("L"))
    gray3 = np.stack([gray] * 3, axis=2)
    g16 = tmp_path / "g16.png"
    Image.fromarray(gray.astype(np.uint16) * 257).save(g16)       # Pillow writes I;16
    assert Image.open(g16).mode == "I;16"
    np.testing.assert_array_equal(read_image(g16), gray3)
    rgb16 = write_png16(tmp_path / "rgb16.png", rgb.astype(np.uint16) * 257)
    np.testing.assert_array_equal(read_image(rgb16), rgb)
    ftif = tmp_path / "f.tif"
    Image.fromarray(gray.astype(np.float32) / 255.0).save(ftif)
    assert Image.open(ftif).mode == "F"
    np.testing.assert_array_equal(read_image(ftif), gray3)
    i32 = tmp_path / "i32.tif"
    Image.fromarray(gray.astype(np.int32) * 8421504).save(i32)   # signed: 255 * 8421504 ~ 2^31
    np.testing.assert_array_equal(read_image(i32), gray3)


def test_float_images_outside_0_1_are_refused(tmp_path: Path) -> None:
    f = tmp_path / "f255.tif"
    Image.fromarray(np.full((4, 4), 200.0, np.float32)).save(f)
    with pytest.raises(ExportUsageError, match=r"outside 0\.\.1"):
        read_image(f)
    nan = tmp_path / "nan.tif"
    Image.fromarray(np.full((4, 4), np.nan, np.float32)).save(nan)
    with pytest.raises(ExportUsageError, match="NaN"):
        read_image(nan)


def test_pixel_cap_is_checked_from_the_header_before_decoding(tmp_path: Path) -> None:
    huge = write_huge_png(tmp_path / "huge.png")
    assert huge.stat().st_size < 200_000
    read_image(_save(tmp_path / "small.png", Image.fromarray(_img(4, 4))))  # warm Pillow up
    t0 = time.perf_counter()
    with pytest.raises(ExportUsageError, match="144,000,000 pixels, over the limit of 50,000,000"):
        read_image(huge)
    assert time.perf_counter() - t0 < 0.5        # decoding it takes seconds and 432 MB
    with pytest.raises(ExportUsageError, match="over the limit of 15"):
        read_image(tmp_path / "small.png", max_pixels=15)
    assert read_image(tmp_path / "small.png", max_pixels=16).shape == (4, 4, 3)
    with pytest.raises(ExportUsageError, match="positive integer"):
        read_image(tmp_path / "small.png", max_pixels=0)


def _truncated_jpeg(tmp_path: Path) -> Path:
    full = _save(tmp_path / "full.jpg", Image.fromarray(_photo(64, 64)), quality=90)
    bad = tmp_path / "truncated.jpg"
    bad.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    return bad


def test_bad_files_are_one_line_usage_errors(tmp_path: Path) -> None:
    (tmp_path / "notes.jpg").write_text("not an image\n")
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "folder.png").mkdir()
    png = _save(tmp_path / "ok.png", Image.fromarray(_photo(32, 32))).read_bytes()
    (tmp_path / "corrupt.png").write_bytes(png[:60] + bytes(64) + png[124:])
    cases = {
        _truncated_jpeg(tmp_path): "truncated or corrupt",
        tmp_path / "corrupt.png": "truncated or corrupt",
        tmp_path / "notes.jpg": "not an image file",
        tmp_path / "empty.png": "empty file",
        tmp_path / "folder.png": "is a directory",
        tmp_path / "missing.png": "does not exist",
    }
    for path, message in cases.items():
        with pytest.raises(ExportUsageError, match=message) as info:
            read_image(path)
        assert "\n" not in str(info.value), path


def test_the_training_side_reader_follows_the_same_rules(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from mutualnet.data.readers import read_image_file
    from mutualnet.errors import UsageError

    rgb = _photo(20, 24)
    gray = np.asarray(Image.fromarray(rgb).convert("L"))
    g16 = tmp_path / "g16.png"
    Image.fromarray(gray.astype(np.uint16) * 257).save(g16)
    ftif = tmp_path / "f.tif"
    Image.fromarray(gray.astype(np.float32) / 255.0).save(ftif)
    p = _save(tmp_path / "p.png", Image.fromarray(rgb).convert("P"))
    for f in (g16, ftif, p, write_png16(tmp_path / "rgb16.png", rgb.astype(np.uint16) * 257)):
        np.testing.assert_array_equal(np.asarray(read_image_file(f)), read_image(f))
    with pytest.raises(UsageError, match="over the limit"):
        read_image_file(write_huge_png(tmp_path / "huge.png"))
    with pytest.raises(UsageError, match="cannot read image"):
        read_image_file(_truncated_jpeg(tmp_path))
