"""Data: readers on tiny generated data, the bundled subset, batches, augmentation, resize_to."""

from __future__ import annotations

import io
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from mutualnet.data import (
    BUNDLED_NPZ,
    DATASETS,
    DataSpec,
    LoaderImageData,
    TensorImageData,
    load_data,
    preprocessing,
    rank_rows,
    resize_to,
)
from mutualnet.data.readers import stratified_first
from mutualnet.data.spec import CIFAR10_JPEG_MEAN, CIFAR10_JPEG_STD, IMAGENET_MEAN, IMAGENET_STD
from mutualnet.errors import UsageError

REPO = Path(__file__).resolve().parent.parent
SHARED_NPZ = REPO.parent / "shared" / "data" / "cifar10_jpeg.npz"
CIFAR10_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                 "ship", "truck")


def collect(data, **kw) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*data.batches(**kw), strict=True)
    return torch.cat(xs), torch.cat(ys)


def rand_images(n: int, size: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def jpeg_bytes(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def write_npz(path: Path, n_train: int = 12, n_test: int = 6, classes: int = 3,
              **override: np.ndarray) -> Path:
    arrays: dict[str, np.ndarray] = {"classes": np.array([f"c{i}" for i in range(classes)])}
    for split, n, seed in (("train", n_train, 1), ("test", n_test, 2)):
        blobs = [jpeg_bytes(im) for im in rand_images(n, seed=seed)]
        off = np.zeros(n + 1, np.int64)
        off[1:] = np.cumsum([len(b) for b in blobs])
        arrays[f"{split}_jpeg"] = np.frombuffer(b"".join(blobs), np.uint8)
        arrays[f"{split}_offsets"] = off
        arrays[f"{split}_labels"] = np.arange(n, dtype=np.int64) % classes
    arrays.update(override)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    np.savez(path, **arrays)  # type: ignore[arg-type]
    return path


@pytest.fixture(scope="module")
def bundled_train() -> TensorImageData:
    data = load_data(DataSpec(), "train")
    assert isinstance(data, TensorImageData)
    return data


# --------------------------------------------------------------------------- bundled set


def test_bundled_counts_and_classes(bundled_train: TensorImageData) -> None:
    val = load_data(DataSpec(), "val")
    assert (len(bundled_train), len(val)) == (5000, 1000)
    assert bundled_train.class_counts() == [500] * 10 and val.class_counts() == [100] * 10
    assert bundled_train.classes == CIFAR10_NAMES == val.classes
    assert bundled_train.num_classes == 10
    assert bundled_train.pixels.shape == (5000, 32, 32, 3)
    assert (bundled_train.mean, bundled_train.std) == (CIFAR10_JPEG_MEAN, CIFAR10_JPEG_STD)


def test_bundled_is_packaged() -> None:
    """A non-editable install ships the npz: pyproject's package-data glob matches it."""
    tomllib = pytest.importorskip("tomllib")
    pkg = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    patterns = pkg["package-data"]["mutualnet"]
    rel = BUNDLED_NPZ.relative_to(REPO / "mutualnet")
    assert any(rel.match(p) for p in patterns), patterns
    assert 1_000_000 < BUNDLED_NPZ.stat().st_size < 10_000_000


@pytest.mark.skipif(not SHARED_NPZ.is_file(), reason=f"shared data not found at {SHARED_NPZ}")
def test_bundled_bytes_are_copied_from_shared_source() -> None:
    sub, src = np.load(BUNDLED_NPZ), np.load(SHARED_NPZ)
    assert sub.files == src.files
    for split, per_class in (("train", 500), ("test", 100)):
        sj, so, sl = src[f"{split}_jpeg"], src[f"{split}_offsets"], src[f"{split}_labels"]
        bj, bo, bl = sub[f"{split}_jpeg"], sub[f"{split}_offsets"], sub[f"{split}_labels"]
        for c in (0, 9):
            i_src = np.flatnonzero(sl == c)[[0, per_class - 1]]
            i_sub = np.flatnonzero(bl == c)[[0, per_class - 1]]
            for a, b in zip(i_src, i_sub, strict=True):
                assert sj[so[a]:so[a + 1]].tobytes() == bj[bo[b]:bo[b + 1]].tobytes()
        assert sub[f"{split}_jpeg"].dtype == sj.dtype and bo.dtype == so.dtype


@pytest.mark.skipif(not SHARED_NPZ.is_file(), reason=f"shared data not found at {SHARED_NPZ}")
def test_shared_npz_reads_stratified_prefix() -> None:
    data = load_data(DataSpec(dataset="npz", root=str(SHARED_NPZ), max_images=40), "val")
    assert len(data) == 40 and data.class_counts() == [4] * 10


# --------------------------------------------------------------------------- batches


def test_eval_batches_are_the_normalized_pixels(bundled_train: TensorImageData) -> None:
    x, y = collect(bundled_train, batch_size=300, augment=False, shuffle=False, limit=700)
    assert x.shape == (700, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    ref = bundled_train.pixels[:700].permute(0, 3, 1, 2).float() / 255
    mean = torch.tensor(CIFAR10_JPEG_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_JPEG_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(x, (ref - mean) / std, rtol=0, atol=1e-5)
    assert torch.equal(y, bundled_train.labels[:700])


def test_batches_deterministic_per_seed_and_epoch(bundled_train: TensorImageData) -> None:
    kw = dict(batch_size=128, augment=True, shuffle=True, limit=256)
    a = collect(bundled_train, seed=3, epoch=1, **kw)
    b = collect(bundled_train, seed=3, epoch=1, **kw)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    for other in (collect(bundled_train, seed=3, epoch=2, **kw),
                  collect(bundled_train, seed=4, epoch=1, **kw)):
        assert not torch.equal(a[1], other[1])
    # Same order with and without augmentation: only the pixels change.
    c = collect(bundled_train, seed=3, epoch=1, **{**kw, "augment": False})
    assert torch.equal(a[1], c[1]) and not torch.equal(a[0], c[0])


def test_epoch_covers_every_image_once(bundled_train: TensorImageData) -> None:
    batches = list(bundled_train.batches(1024, augment=False, shuffle=True, seed=0, epoch=5))
    assert [len(y) for _, y in batches] == [1024] * 4 + [904]
    y = torch.cat([y for _, y in batches])
    assert torch.equal(torch.bincount(y), torch.bincount(bundled_train.labels))
    dropped = list(bundled_train.batches(1024, augment=False, shuffle=True, drop_last=True))
    assert [len(y) for _, y in dropped] == [1024] * 4
    limited = list(bundled_train.batches(100, augment=True, shuffle=True, limit=250))
    assert [len(y) for _, y in limited] == [100, 100, 50]


def test_cifar_augmentation_is_pad_crop_flip(bundled_train: TensorImageData) -> None:
    """Every augmented image is a 32 px window of the zero-padded original, maybe mirrored."""
    x, y = next(bundled_train.batches(64, augment=True, shuffle=False, seed=1))
    assert x.shape == (64, 3, 32, 32)
    mean = torch.tensor(CIFAR10_JPEG_MEAN).view(3, 1, 1) * 255
    std = torch.tensor(CIFAR10_JPEG_STD).view(3, 1, 1) * 255
    raw = (x * std + mean).round().to(torch.uint8)
    flips = 0
    for i in range(16):
        padded = F.pad(bundled_train.pixels[i].permute(2, 0, 1), (4, 4, 4, 4))
        windows = []
        for oy in range(9):
            for ox in range(9):
                w = padded[:, oy:oy + 32, ox:ox + 32]
                windows += [(oy, ox, f) for f, v in ((False, w), (True, w.flip(-1)))
                            if torch.equal(raw[i], v)]
        assert windows, f"image {i} is not a padded crop"
        flips += windows[0][2]
    assert 0 < flips < 16


@pytest.mark.parametrize("augment", ["imagenet_mobile", "imagenet_basic"])
def test_in_memory_imagenet_augmentation(augment: str) -> None:
    data = load_data(DataSpec(augment=augment, image_size=24, resize=32, max_images=64), "train")
    x, _ = next(data.batches(64, augment=True, shuffle=True, seed=0))
    x2, _ = next(data.batches(64, augment=True, shuffle=True, seed=0))
    assert x.shape == (64, 3, 24, 24) and torch.isfinite(x).all() and torch.equal(x, x2)
    lo = (0 - torch.tensor(CIFAR10_JPEG_MEAN)) / torch.tensor(CIFAR10_JPEG_STD)
    assert (x >= lo.view(1, 3, 1, 1) - 1e-4).all()
    e, _ = next(data.batches(64, augment=False, shuffle=False))
    assert e.shape == (64, 3, 24, 24)


def test_loader_path_matches_in_memory_eval() -> None:
    mem = load_data(DataSpec(max_images=64), "val")
    per_image = load_data(DataSpec(max_images=64, in_memory=False, workers=0), "val")
    assert isinstance(per_image, LoaderImageData)
    a = collect(mem, batch_size=32, augment=False, shuffle=True, seed=2)
    b = collect(per_image, batch_size=32, augment=False, shuffle=True, seed=2)
    torch.testing.assert_close(a[0], b[0], rtol=0, atol=1e-5)
    assert torch.equal(a[1], b[1])
    aug = collect(per_image, batch_size=32, augment=True, shuffle=True, seed=2, epoch=1)
    assert aug[0].shape == (64, 3, 32, 32)
    assert torch.equal(aug[0], collect(per_image, batch_size=32, augment=True, shuffle=True,
                                       seed=2, epoch=1)[0])


def test_stratified_first() -> None:
    labels = np.array([0, 0, 0, 0, 1, 1, 2, 2, 2])
    assert stratified_first(labels, 5).tolist() == [0, 1, 4, 5, 6]
    assert stratified_first(labels, 100).tolist() == list(range(9))
    assert load_data(DataSpec(max_images=25), "train").class_counts() == [3] * 5 + [2] * 5


# --------------------------------------------------------------------------- resize_to


def test_resize_to_semantics() -> None:
    x = torch.rand(2, 3, 32, 32)
    assert resize_to(x, 32) is x
    y = resize_to(x, 20)
    assert y.shape == (2, 3, 20, 20) and y.device == x.device
    ref = F.interpolate(x, size=(20, 20), mode="bilinear", align_corners=True, antialias=False)
    torch.testing.assert_close(y, ref, rtol=0, atol=0)
    for r, c in ((0, 0), (0, -1), (-1, 0), (-1, -1)):  # align_corners keeps the corner pixels
        torch.testing.assert_close(y[..., r, c], x[..., r, c])
    ramp = torch.arange(32.0).view(1, 1, 1, 32).expand(1, 1, 32, 32)
    torch.testing.assert_close(resize_to(ramp, 5)[0, 0, 0], torch.tensor([0, 7.75, 15.5,
                                                                          23.25, 31.0]))
    assert resize_to(x[0], 24).shape == (3, 24, 24)
    with pytest.raises(UsageError):
        resize_to(x, 0)


# --------------------------------------------------------------------------- readers


def test_npz_reader(tmp_path: Path) -> None:
    path = write_npz(tmp_path / "d.npz")
    spec = DataSpec(dataset="npz", root=str(path))
    train, val = load_data(spec, "train"), load_data(spec, "val")
    assert (len(train), len(val), train.classes) == (12, 6, ("c0", "c1", "c2"))
    x, y = collect(val, batch_size=4, augment=False, shuffle=False)
    assert x.shape == (6, 3, 32, 32) and y.tolist() == [0, 1, 2, 0, 1, 2]
    assert preprocessing(spec)["mean"] == list(CIFAR10_JPEG_MEAN)


@pytest.mark.parametrize(("override", "needle"), [
    ({"test_labels": None}, "lacks arrays test_labels"),
    ({"train_offsets": np.array([0, 5, 9])}, "train_offsets has 3 entries"),
    ({"test_labels": np.array([0, 1, 2, 3, 0, 1])}, "labels must lie in 0..2"),
    ({"train_jpeg": np.zeros(10, np.float32)}, "train_jpeg must be 1-D uint8"),
])
def test_npz_mismatched_arrays(tmp_path: Path, override: dict, needle: str) -> None:
    path = write_npz(tmp_path / "bad.npz", **override)
    spec = DataSpec(dataset="npz", root=str(path))
    with pytest.raises(UsageError, match=needle) as e:
        load_data(spec, "train")
        load_data(spec, "val")
    assert e.value.exit_code == 2


def _write_cifar(root: Path, dataset: str, n: int = 4) -> np.ndarray:
    """A tiny pickle release; returns the train images (NHWC) as written."""
    imgs = rand_images(n * (5 if dataset == "cifar10" else 1), seed=7)
    flat = imgs.transpose(0, 3, 1, 2).reshape(len(imgs), -1)  # CIFAR rows: R plane, G, B
    if dataset == "cifar10":
        folder, key = root / "cifar-10-batches-py", b"labels"
        batches = {f"data_batch_{i + 1}": slice(i * n, (i + 1) * n) for i in range(5)}
        meta = ("batches.meta", {b"label_names": [f"k{i}".encode() for i in range(10)]})
        test_name = "test_batch"
    else:
        folder, key = root / "cifar-100-python", b"fine_labels"
        batches = {"train": slice(0, n)}
        meta = ("meta", {b"fine_label_names": [f"f{i}".encode() for i in range(100)]})
        test_name = "test"
    folder.mkdir(parents=True)
    for name, sl in batches.items():
        labels = [int(i) % 10 for i in range(sl.start, sl.stop)]
        (folder / name).write_bytes(pickle.dumps({b"data": flat[sl], key: labels}, protocol=2))
    (folder / test_name).write_bytes(pickle.dumps({b"data": flat[:3], key: [1, 2, 3]}))
    (folder / meta[0]).write_bytes(pickle.dumps(meta[1]))
    return imgs


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100"])
def test_cifar_pickle_reader(tmp_path: Path, dataset: str) -> None:
    imgs = _write_cifar(tmp_path, dataset)
    spec = DataSpec(dataset=dataset, root=str(tmp_path))
    train = load_data(spec, "train")
    assert isinstance(train, TensorImageData)
    assert torch.equal(train.pixels, torch.from_numpy(imgs))  # channel planes -> HWC
    assert train.num_classes == (10 if dataset == "cifar10" else 100)
    val = load_data(spec, "val")
    assert val.labels.tolist() == [1, 2, 3]
    x, _ = next(train.batches(3, augment=True, shuffle=True))
    assert x.shape == (3, 3, 32, 32)
    # The release folder itself works as root too.
    assert len(load_data(DataSpec(dataset=dataset, root=str(next(tmp_path.iterdir()))),
                         "val")) == 3


def test_cifar_pickle_refuses_arbitrary_objects(tmp_path: Path) -> None:
    _write_cifar(tmp_path, "cifar10")
    evil = {b"data": np.zeros((1, 3072), np.uint8), b"labels": [0], b"x": Path("boom")}
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps(evil))
    with pytest.raises(UsageError, match="refusing to load pathlib"):
        load_data(DataSpec(dataset="cifar10", root=str(tmp_path)), "val")


def _write_folder(root: Path, per_class: dict[str, int], split: str, size: tuple[int, int]
                  ) -> None:
    rng = np.random.default_rng(0)
    for c, n in per_class.items():
        (root / split / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
            Image.fromarray(img).save(root / split / c / f"{i}.png")


def test_imagefolder_reader(tmp_path: Path) -> None:
    _write_folder(tmp_path, {"cat": 3, "dog": 2}, "train", (40, 30))
    _write_folder(tmp_path, {"cat": 1, "dog": 2}, "val", (50, 36))
    (tmp_path / "train" / "cat" / "notes.txt").write_text("not an image")
    spec = DataSpec(dataset="imagefolder", root=str(tmp_path), image_size=16, resize=18,
                    augment="imagenet_basic", workers=0)
    train, val = load_data(spec, "train"), load_data(spec, "val")
    assert isinstance(train, LoaderImageData)
    assert (len(train), train.classes, train.labels.tolist()) == (5, ("cat", "dog"),
                                                                  [0, 0, 0, 1, 1])
    assert train.mean == IMAGENET_MEAN
    x, y = collect(train, batch_size=2, augment=True, shuffle=True, seed=1)
    assert x.shape == (5, 3, 16, 16) and sorted(y.tolist()) == [0, 0, 0, 1, 1]
    assert torch.equal(x, collect(train, batch_size=4, augment=True, shuffle=True, seed=1)[0])
    assert not torch.equal(x, collect(train, batch_size=2, augment=True, shuffle=True,
                                      seed=1, epoch=1)[0])
    e, _ = collect(val, batch_size=8, augment=False, shuffle=False)
    assert e.shape == (3, 3, 16, 16)
    # Eval = resize shorter side to 18 then center crop 16, like torchvision.
    from torchvision import transforms as T

    img = Image.open(tmp_path / "val" / "cat" / "0.png").convert("RGB")
    ref = T.Compose([T.Resize(18), T.CenterCrop(16), T.ToTensor(),
                     T.Normalize(IMAGENET_MEAN, (0.229, 0.224, 0.225))])(img)
    torch.testing.assert_close(e[0], ref)


@pytest.mark.skipif(sys.platform != "linux", reason="worker start-up cost is only small on Linux")
def test_imagefolder_workers_do_not_change_batches(tmp_path: Path) -> None:
    _write_folder(tmp_path, {"a": 3, "b": 3}, "train", (24, 24))
    kw = dict(batch_size=4, augment=True, shuffle=True, seed=5, epoch=2)
    one = collect(load_data(DataSpec("imagefolder", str(tmp_path), image_size=16, workers=0,
                                     augment="imagenet_mobile"), "train"), **kw)
    two = collect(load_data(DataSpec("imagefolder", str(tmp_path), image_size=16, workers=2,
                                     augment="imagenet_mobile"), "train"), **kw)
    assert torch.equal(one[0], two[0]) and torch.equal(one[1], two[1])


# --------------------------------------------------------------------------- data parallel

RANK_SOURCES = {
    "memory-cifar": dict(max_images=64),
    "memory-imagenet": dict(max_images=64, augment="imagenet_mobile", image_size=24, resize=32),
    "loader-cifar": dict(max_images=64, in_memory=False, workers=0),
    "loader-imagenet": dict(max_images=64, in_memory=False, workers=0, augment="imagenet_basic",
                            image_size=24, resize=32),
}


@pytest.mark.parametrize("source", sorted(RANK_SOURCES))
@pytest.mark.parametrize("augment", [True, False])
def test_rank_parts_concatenate_to_the_single_process_batch(source: str, augment: bool) -> None:
    """Every rank's part of every global batch, in rank order, is exactly the world_size=1
    batch (same order, same crops/flips/jitter), including uneven and empty parts."""
    data = load_data(DataSpec(**RANK_SOURCES[source]), "train")  # type: ignore[arg-type]
    assert isinstance(data, LoaderImageData if source.startswith("loader") else TensorImageData)
    kw = dict(batch_size=20, augment=augment, shuffle=True, seed=4, epoch=1, limit=42)
    whole = list(data.batches(**kw))  # type: ignore[arg-type]
    assert [len(y) for _, y in whole] == [20, 20, 2]
    for world in (2, 3):
        parts = [list(data.batches(**kw, rank=r, world_size=world))  # type: ignore[arg-type]
                 for r in range(world)]
        assert all(len(p) == len(whole) for p in parts)  # ranks stay in lockstep
        for b, (x, y) in enumerate(whole):
            assert [len(p[b][1]) for p in parts] == [len(range(20)[rank_rows(len(y), r, world)])
                                                     for r in range(world)]
            assert torch.equal(torch.cat([p[b][0] for p in parts]), x), (world, b)
            assert torch.equal(torch.cat([p[b][1] for p in parts]), y), (world, b)
    assert [len(y) for _, y in data.batches(**kw, rank=0, world_size=3)] == [6, 6, 0]


def test_ranks_load_and_augment_only_their_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    import mutualnet.data.datasets as ds

    per_image = load_data(DataSpec(max_images=64, in_memory=False, workers=0), "train")
    assert isinstance(per_image, LoaderImageData)
    loaded: list[int] = []
    real_load = per_image._load
    monkeypatch.setattr(per_image, "_load", lambda i: (loaded.append(i), real_load(i))[1])
    kw = dict(batch_size=16, augment=True, shuffle=True, seed=1, drop_last=True)
    sizes = [len(y) for _, y in per_image.batches(**kw, rank=1, world_size=4)]  # type: ignore[arg-type]
    order = torch.randperm(64, generator=torch.Generator().manual_seed(ds.epoch_seed(1, 0, 1)))
    mine = torch.cat([order[b * 16 + 4:b * 16 + 8] for b in range(4)])
    assert sizes == [4] * 4 and sorted(loaded) == sorted(mine.tolist())  # 16 of 64 decoded

    mem = load_data(DataSpec(max_images=64), "train")
    seen: list[int] = []
    real_crop = ds.pad_crop_flip
    monkeypatch.setattr(ds, "pad_crop_flip", lambda x, *a, **k: (seen.append(len(x)),
                                                                 real_crop(x, *a, **k))[1])
    assert [len(y) for _, y in mem.batches(**kw, rank=3, world_size=4)] == [4] * 4  # type: ignore[arg-type]
    assert seen == [4] * 4


@pytest.mark.parametrize("kw, needle", [
    (dict(rank=2, world_size=2), r"rank must be an integer in \[0, 1\]"),
    (dict(rank=-1, world_size=2), "rank must be"),
    (dict(rank=0, world_size=0), "world_size must be a positive integer"),
])
def test_bad_rank_arguments_are_usage_errors(bundled_train: TensorImageData, kw: dict,
                                             needle: str) -> None:
    with pytest.raises(UsageError, match=needle):
        next(bundled_train.batches(8, augment=False, shuffle=False, **kw))


# --------------------------------------------------------------------------- errors


def test_unknown_dataset_lists_known_ones() -> None:
    with pytest.raises(UsageError) as e:
        DataSpec(dataset="imagenet")
    assert e.value.exit_code == 2 and all(name in str(e.value) for name in DATASETS)
    with pytest.raises(UsageError, match="unknown augment"):
        DataSpec(augment="autoaugment")
    with pytest.raises(UsageError, match="unknown split"):
        load_data(DataSpec(), "test")  # type: ignore[arg-type]


@pytest.mark.parametrize(("spec", "needle"), [
    (DataSpec("npz", "/nonexistent/x.npz"), "npz file not found.*train_jpeg"),
    (DataSpec("cifar10", "/nonexistent"), "cifar10 folder not found.*data_batch_1"),
    (DataSpec("imagefolder", "/nonexistent"), "image folder not found.*train/<class>"),
])
def test_missing_paths_say_expected_layout(spec: DataSpec, needle: str) -> None:
    with pytest.raises(UsageError, match=needle):
        load_data(spec, "train")


def test_layout_errors(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="needs a root"):
        DataSpec(dataset="cifar100")
    with pytest.raises(UsageError, match="no cifar100 data in"):
        load_data(DataSpec("cifar100", str(tmp_path)), "train")
    (tmp_path / "train" / "a").mkdir(parents=True)
    with pytest.raises(UsageError, match="has no images"):
        load_data(DataSpec("imagefolder", str(tmp_path)), "train")
    with pytest.raises(UsageError, match="has no val/ folder"):
        load_data(DataSpec("imagefolder", str(tmp_path)), "val")
    _write_folder(tmp_path, {"a": 1}, "train", (8, 8))
    _write_folder(tmp_path, {"a": 1, "b": 1}, "val", (8, 8))
    with pytest.raises(UsageError, match="different class folders"):
        load_data(DataSpec("imagefolder", str(tmp_path)), "val")
    path = write_npz(tmp_path / "empty.npz", n_test=0)
    with pytest.raises(UsageError, match="val split .* has no images"):
        load_data(DataSpec("npz", str(path)), "val")
    with pytest.raises(UsageError, match="in_memory is not supported"):
        load_data(DataSpec("imagefolder", str(tmp_path), in_memory=True), "train")


def test_preprocessing_for_the_manifest() -> None:
    p = preprocessing(DataSpec())
    assert p == {"resize": None, "resize_mode": "shorter_side", "crop": 32, "mean": list(CIFAR10_JPEG_MEAN),
                 "std": list(CIFAR10_JPEG_STD), "channel_order": "RGB", "input_scale": 255.0,
                 "interpolation": "bilinear", "layout": "NCHW"}
    q = preprocessing(DataSpec("imagefolder", "/x", image_size=224, resize=256,
                               augment="imagenet_mobile"))
    assert (q["resize"], q["crop"], q["mean"]) == (256, 224, list(IMAGENET_MEAN))


@pytest.mark.gpu
def test_gpu_batches_equal_cpu_batches(bundled_train: TensorImageData) -> None:
    kw = dict(batch_size=256, augment=True, shuffle=True, seed=9, epoch=3, limit=512)
    cpu = collect(bundled_train, **kw)
    gpu = collect(bundled_train, device="cuda", **kw)
    assert gpu[0].is_cuda and gpu[1].is_cuda
    torch.testing.assert_close(gpu[0].cpu(), cpu[0], rtol=0, atol=1e-5)
    assert torch.equal(gpu[1].cpu(), cpu[1])
    assert resize_to(gpu[0], 24).is_cuda


@pytest.mark.parametrize("workers", [0, 2])
def test_unreadable_image_is_one_line_usage_error(tmp_path: Path, workers: int) -> None:
    _write_folder(tmp_path, {"a": 2}, "train", (8, 8))
    (tmp_path / "train" / "a" / "broken.jpg").write_bytes(b"not a jpeg")
    data = load_data(DataSpec("imagefolder", str(tmp_path), image_size=8, workers=workers),
                     "train")
    with pytest.raises(UsageError, match=r"^cannot read image .*broken\.jpg") as e:
        collect(data, batch_size=3, augment=False, shuffle=False)
    assert "\n" not in str(e.value)


def test_corrupt_npz_and_jpeg(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not an npz")
    with pytest.raises(UsageError, match="cannot read .* as an npz archive"):
        load_data(DataSpec("npz", str(garbage)), "train")
    good = write_npz(tmp_path / "good.npz")
    with np.load(good) as z:
        arrays = {k: z[k].copy() for k in z.files}
    arrays["test_jpeg"][20:60] = 0  # damage the first image's header and data
    bad = tmp_path / "bad.npz"
    np.savez(bad, **arrays)  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="image 0 of the npz is not a readable JPEG"):
        load_data(DataSpec("npz", str(bad)), "val")


def test_crop_resize_boxes() -> None:
    from mutualnet.data.transforms import crop_resize, random_resized_boxes

    x = torch.rand(3, 3, 16, 20)
    whole = torch.tensor([[0.0, 0.0, 16.0, 20.0]]).repeat(3, 1)
    torch.testing.assert_close(F.interpolate(x, size=(16, 16), mode="bilinear",
                                             align_corners=False),
                               crop_resize(x, whole, 16))
    square = torch.tensor([[2.0, 3.0, 12.0, 12.0]]).repeat(3, 1)
    flip = torch.tensor([False, True, False])
    out = crop_resize(x, square, 12, flip)
    torch.testing.assert_close(out[0], x[0, :, 2:14, 3:15])
    torch.testing.assert_close(out[1], x[1, :, 2:14, 3:15].flip(-1))
    half = crop_resize(x, square, 6)  # 2x down: samples stay inside the box
    ref = F.interpolate(x[:, :, 2:14, 3:15], size=(6, 6), mode="bilinear", align_corners=False)
    torch.testing.assert_close(half, ref)
    boxes = random_resized_boxes(500, 16, 20, (0.25, 1.0), torch.Generator().manual_seed(0))
    top, left, bh, bw = boxes.unbind(1)
    assert (top >= 0).all() and (left >= 0).all()
    assert (top + bh <= 16).all() and (left + bw <= 20).all()
    area = bh * bw / (16 * 20)
    assert area.min() >= 0.2 and area.max() <= 1.0 and area.std() > 0.1


# --------------------------------------------------------------------------- custom normalization

TF_HALF = (128 / 255,) * 3


def test_custom_mean_std_normalize_batches_and_manifest(bundled_train: TensorImageData) -> None:
    spec = DataSpec(max_images=64, input_mean=TF_HALF, input_std=[0.5, 0.5, 0.5])  # list ok
    assert spec.input_std == (0.5, 0.5, 0.5) and hash(spec)  # stored as a tuple
    assert (spec.mean, spec.std) == (TF_HALF, (0.5, 0.5, 0.5))
    data = load_data(spec, "val")
    assert data.mean == TF_HALF
    x, _ = collect(data, batch_size=64, augment=False, shuffle=False)
    base, _ = collect(load_data(DataSpec(max_images=64), "val"), batch_size=64, augment=False,
                      shuffle=False)
    pixels = base * torch.tensor(CIFAR10_JPEG_STD).view(1, 3, 1, 1) + torch.tensor(
        CIFAR10_JPEG_MEAN).view(1, 3, 1, 1)  # undo the data set's normalization
    torch.testing.assert_close(x, (pixels - 128 / 255) / 0.5, rtol=0, atol=1e-4)
    loader = load_data(DataSpec(max_images=64, in_memory=False, workers=0, input_mean=TF_HALF,
                                input_std=[0.5, 0.5, 0.5]), "val")
    torch.testing.assert_close(collect(loader, batch_size=64, augment=False,
                                       shuffle=False)[0], x, rtol=0, atol=1e-5)
    p = preprocessing(spec)
    assert (p["mean"], p["std"]) == (list(TF_HALF), [0.5, 0.5, 0.5])
    only_mean = preprocessing(DataSpec(input_mean=TF_HALF))
    assert only_mean["std"] == list(CIFAR10_JPEG_STD)  # the other keeps the data set's


def test_resize_to_the_model_size(tmp_path: Path) -> None:
    """resize == image_size: the shorter side goes to the model size (TFLite imports)."""
    _write_folder(tmp_path, {"cat": 1}, "val", (40, 40))
    spec = DataSpec("imagefolder", str(tmp_path), image_size=16, resize=16,
                    augment="imagenet_mobile", workers=0, input_mean=TF_HALF, input_std=TF_HALF)
    assert preprocessing(spec)["resize"] == 16 and preprocessing(spec)["crop"] == 16
    x, _ = collect(load_data(spec, "val"), batch_size=1, augment=False, shuffle=False)
    from torchvision import transforms as T

    img = Image.open(tmp_path / "val" / "cat" / "0.png").convert("RGB")
    ref = T.Compose([T.Resize(16), T.ToTensor(), T.Normalize(TF_HALF, TF_HALF)])(img)
    torch.testing.assert_close(x[0], ref)
    assert x.min() >= -1.0 - 1e-6 and x.max() <= 1.0 - 1 / 128 + 1e-6  # TF's (p - 128) / 128


@pytest.mark.parametrize("kw, needle", [
    ({"input_mean": (0.5, 0.5)}, "input_mean must be 3 numbers"),
    ({"input_mean": (128.0, 128.0, 128.0)}, "divide 0-255 values by 255"),
    ({"input_mean": "0.5"}, "input_mean must be 3 numbers"),
    ({"input_std": (0.5, 0.0, 0.5)}, r"input_std must be 3 numbers in \(0, 1\]"),
    ({"input_std": (0.5, -0.2, 0.5)}, "input_std must be"),
    ({"input_std": (0.5, float("nan"), 0.5)}, "input_std must be"),
    ({"input_std": (True, 0.5, 0.5)}, "input_std must be"),
])
def test_bad_mean_std_are_usage_errors(kw: dict, needle: str) -> None:
    with pytest.raises(UsageError, match=needle):
        DataSpec(**kw)


def test_stretch_resizes_the_whole_image(tmp_path: Path) -> None:
    """resize_mode "stretch": the ImageFolder eval transform squashes the whole image to
    image_size x image_size (PIL bilinear, as TFLite users feed the interpreter), no crop."""
    from torchvision import transforms as T

    _write_folder(tmp_path, {"cat": 1}, "val", (40, 24))
    spec = DataSpec("imagefolder", str(tmp_path), image_size=16, augment="imagenet_mobile",
                    workers=0, input_mean=TF_HALF, input_std=TF_HALF, resize_mode="stretch")
    p = preprocessing(spec)
    assert (p["resize"], p["resize_mode"], p["crop"]) == (16, "stretch", 16)
    x, _ = collect(load_data(spec, "val"), batch_size=1, augment=False, shuffle=False)
    img = Image.open(tmp_path / "val" / "cat" / "0.png").convert("RGB")
    squashed = img.resize((16, 16), Image.Resampling.BILINEAR)
    torch.testing.assert_close(x[0], T.Compose([T.ToTensor(), T.Normalize(TF_HALF, TF_HALF)])(
        squashed), rtol=0, atol=1e-6)
    shorter = DataSpec("imagefolder", str(tmp_path), image_size=16, resize=16, workers=0,
                       augment="imagenet_mobile", input_mean=TF_HALF, input_std=TF_HALF)
    y, _ = collect(load_data(shorter, "val"), batch_size=1, augment=False, shuffle=False)
    assert (x - y).abs().mean() > 0.05  # the default mode crops the sides away
    # resize > image_size: stretch to resize x resize, then the center crop
    spec20 = DataSpec("imagefolder", str(tmp_path), image_size=16, resize=20, workers=0,
                      augment="imagenet_mobile", resize_mode="stretch")
    z, _ = collect(load_data(spec20, "val"), batch_size=1, augment=False, shuffle=False)
    ref = T.Compose([T.CenterCrop(16), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])(
        img.resize((20, 20), Image.Resampling.BILINEAR))
    torch.testing.assert_close(z[0], ref, rtol=0, atol=1e-6)


def test_stretch_in_memory_matches_the_loader_path() -> None:
    """The in-memory eval path resizes with torch (antialiased bilinear): the same as PIL's
    resize of the whole image up to rounding to uint8."""
    kw = dict(max_images=16, image_size=24, resize_mode="stretch")
    mem = load_data(DataSpec(**kw), "val")  # type: ignore[arg-type]
    per_image = load_data(DataSpec(**kw, in_memory=False, workers=0), "val")  # type: ignore[arg-type]
    a, _ = collect(mem, batch_size=16, augment=False, shuffle=False)
    b, _ = collect(per_image, batch_size=16, augment=False, shuffle=False)
    assert a.shape == b.shape == (16, 3, 24, 24)
    one_level = 1 / 255 / min(CIFAR10_JPEG_STD)
    assert (a - b).abs().max() <= 1.01 * one_level
    cropped, _ = collect(load_data(DataSpec(max_images=16, image_size=24), "val"),
                         batch_size=16, augment=False, shuffle=False)
    assert (a - cropped).abs().mean() > 10 * one_level  # shorter_side center-crops 32 -> 24


def test_unknown_resize_mode_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="unknown resize_mode 'squash'; known: shorter_side, "
                                         "stretch"):
        DataSpec(resize_mode="squash")
