"""TFLite MobileNet v1 import: same top-1 as the TFLite interpreter on the shipped photos.

Reads ../shared/data/mobilenet_v1_tflite (skipped where absent). Needs the ``tflite``
parser (``pip install tflite``); the interpreter comparisons need ``ai-edge-litert``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from mutualnet.cli import cli
from mutualnet.errors import UsageError
from mutualnet.models import create_model
from mutualnet.weights import import_weights, load_pretrained

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mobilenet_v1_tflite"
PHOTOS = ("cat.bmp", "bird.bmp", "grace_hopper.bmp", "dragonfly.bmp", "parrot.jpg", "owl.jpg",
          "hot_dog.jpg", "pets.jpg")
MODELS = (("mobilenet_v1_0.25_128_quant.tflite", 0.25, 128),
          ("mobilenet_v1_0.5_160_quant.tflite", 0.5, 160),
          ("mobilenet_v1_0.75_192_quant.tflite", 0.75, 192))

pytestmark = [
    pytest.mark.skipif(not DATA.is_dir(), reason=f"shared TFLite data not found at {DATA} "
                       "(the tests look for <repo>/../shared)"),
    pytest.mark.skipif(importlib.util.find_spec("tflite") is None,
                       reason="needs the tflite parser: pip install tflite"),
]
needs_litert = pytest.mark.skipif(importlib.util.find_spec("ai_edge_litert") is None,
                                  reason="needs the TFLite interpreter: pip install ai-edge-litert")


def photos(resolution: int) -> np.ndarray:
    """The eight photos as uint8 [8, r, r, 3], resized bilinearly as the data README says."""
    from PIL import Image

    out = []
    for name in PHOTOS:
        with Image.open(DATA / name) as im:
            out.append(np.asarray(im.convert("RGB").resize((resolution, resolution),
                                                           Image.Resampling.BILINEAR)))
    return np.stack(out)


def to_input(images: np.ndarray) -> torch.Tensor:
    """uint8 NHWC -> float NCHW with TF's (pixel - 128) / 128."""
    return (torch.from_numpy(images).permute(0, 3, 1, 2).float() - 128.0) / 128.0


def tflite_top1(path: Path, images: np.ndarray) -> list[int]:
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path))
    interp.allocate_tensors()
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    top = []
    for image in images:
        interp.set_tensor(inp["index"], image[None])
        interp.invoke()
        top.append(int(interp.get_tensor(out["index"])[0].argmax()))
    return top


def torch_top1(model: torch.nn.Module, width: float, images: np.ndarray) -> list[int]:
    with torch.no_grad(), model.subnet(width):  # type: ignore[operator]
        return model.eval()(to_input(images)).argmax(1).tolist()


@pytest.fixture(scope="module")
def reference() -> dict[str, tuple[np.ndarray, list[int]]]:
    if importlib.util.find_spec("ai_edge_litert") is None:
        pytest.skip("needs the TFLite interpreter: pip install ai-edge-litert")
    out = {}
    for name, _, r in MODELS:
        images = photos(r)
        out[name] = (images, tflite_top1(DATA / name, images))
    return out


@needs_litert
@pytest.mark.parametrize("name, width, resolution", MODELS)
def test_tf_same_import_matches_the_tflite_interpreter(
        name: str, width: float, resolution: int,
        reference: dict[str, tuple[np.ndarray, list[int]]]) -> None:
    model, report = import_weights(DATA / name, "mobilenet_v1")
    assert report.width == width and report.resolution == resolution
    assert report.complete and report.num_classes == 1001
    assert report.model_kwargs == {"padding": "tf_same"}
    images, expected = reference[name]
    assert torch_top1(model, width, images) == expected


@needs_litert
def test_symmetric_padding_drifts(reference: dict[str, tuple[np.ndarray, list[int]]]) -> None:
    """The same weights with PyTorch's symmetric padding agree less (README: 14 of 24)."""
    agree = total = 0
    for name, width, _ in MODELS:
        model = create_model("mobilenet_v1", num_classes=1001, padding="symmetric")
        report = load_pretrained(model, DATA / name)
        assert any("pads symmetrically" in n for n in report.notes)
        images, expected = reference[name]
        got = torch_top1(model, width, images)
        agree += sum(a == b for a, b in zip(got, expected, strict=True))
        total += len(expected)
    assert agree < total, "symmetric padding should change some predictions"


@needs_litert
def test_exported_onnx_agrees_with_the_interpreter(
        tmp_path: Path, reference: dict[str, tuple[np.ndarray, list[int]]]) -> None:
    try:
        import onnxruntime as ort

        from export.onnx_export import export_onnx
        from export.slicing import slice_subnet
    except ImportError as e:
        pytest.skip(f"export not available: {e}")
    for name, width, resolution in MODELS:
        model, report = import_weights(DATA / name, "mobilenet_v1")
        sliced = slice_subnet(model, width, resolution, model_kwargs=report.model_kwargs)
        info = export_onnx(sliced.module, resolution, tmp_path / f"{width}.onnx")
        session = ort.InferenceSession(str(info.path), providers=["CPUExecutionProvider"])
        images, expected = reference[name]
        logits = session.run(None, {"input": to_input(images).numpy()})[0]
        assert logits.argmax(1).tolist() == expected, name


def test_width_that_is_not_the_files_is_an_error() -> None:
    with pytest.raises(UsageError, match="holds a width-0.5 MobileNet v1.*not width 0.75"):
        import_weights(DATA / "mobilenet_v1_0.5_160_quant.tflite", "mobilenet_v1", width=0.75)


def test_truncated_tflite_is_a_clear_error(tmp_path: Path) -> None:
    data = (DATA / "mobilenet_v1_0.25_128_quant.tflite").read_bytes()
    (tmp_path / "cut.tflite").write_bytes(data[: len(data) // 2])
    with pytest.raises(UsageError, match="not a readable TFLite model"):
        import_weights(tmp_path / "cut.tflite", "mobilenet_v1")


def test_tflite_needs_mobilenet_v1() -> None:
    with pytest.raises(UsageError, match="supports mobilenet_v1 only"):
        import_weights(DATA / "mobilenet_v1_0.5_160_quant.tflite", "mobilenet_v2")


def test_weights_go_to_the_leading_channels_and_bn_is_identity_plus_bias() -> None:
    model, report = import_weights(DATA / "mobilenet_v1_0.25_128_quant.tflite", "mobilenet_v1")
    fresh = create_model("mobilenet_v1", num_classes=1001, padding="tf_same")
    assert model.max_width == 1.0
    conv = model.features[13][1][0]  # last pointwise: 256 of 1024 outputs from the file
    assert conv.weight.shape == (1024, 1024, 1, 1)
    assert conv.weight[:256, :256].abs().sum() > 0
    bn = model.features[13][1][1]
    eps = bn.eps
    assert torch.all(bn.running_var[:256] == 1 - eps) and torch.all(bn.running_mean[:256] == 0)
    assert torch.all(bn.weight[:256] == 1)
    x = torch.randn(1, 256, 2, 2)
    with torch.no_grad():
        y = torch.nn.functional.batch_norm(x, bn.running_mean[:256], bn.running_var[:256],
                                           bn.weight[:256], bn.bias[:256], False, 0.0, eps)
    assert torch.allclose(y, x + bn.bias[:256].view(1, -1, 1, 1), atol=1e-6)
    # beyond width 0.25 the supernet keeps its initialization (default BN statistics)
    assert torch.equal(bn.running_var[256:], fresh.features[13][1][1].running_var[256:])
    assert model.classifier.weight.shape == (1001, 1024)


def test_classes_1000_drops_the_background_row() -> None:
    path = DATA / "mobilenet_v1_0.25_128_quant.tflite"
    full, _ = import_weights(path, "mobilenet_v1")
    dropped, report = import_weights(path, "mobilenet_v1", num_classes=1000)
    assert any("background" in n for n in report.notes) and report.num_classes == 1000
    x = to_input(photos(128)[:2])
    with torch.no_grad(), full.subnet(0.25), dropped.subnet(0.25):
        assert torch.allclose(full.eval()(x)[:, 1:], dropped.eval()(x), atol=1e-5)


def test_embedding_extractor_has_no_classifier() -> None:
    path = DATA / "mobilenet_v1_1.0_224_quant_embedding_extractor.tflite"
    with pytest.raises(UsageError, match="classifier.weight.*embedding extractor"):
        import_weights(path, "mobilenet_v1")
    _, report = import_weights(path, "mobilenet_v1", allow_missing=True)
    assert report.width == 1.0 and report.missing == ("classifier.weight", "classifier.bias")


def test_pretrained_into_a_config_built_supernet_for_other_classes() -> None:
    """What a config's ``pretrained:`` does: a 10-class supernet keeps its own classifier."""
    model = create_model("mobilenet_v1", num_classes=10, padding="tf_same")
    with pytest.raises(UsageError, match="1001 classes, the model 10"):
        load_pretrained(model, DATA / "mobilenet_v1_0.5_160_quant.tflite")
    report = load_pretrained(model, DATA / "mobilenet_v1_0.5_160_quant.tflite",
                             allow_missing=True)
    assert report.missing == ("classifier.weight", "classifier.bias")


def test_cli_import_records_padding_preprocessing_and_labels(tmp_path: Path) -> None:
    from mutualnet.checkpoint import load_checkpoint

    out = tmp_path / "imported"
    result = CliRunner().invoke(cli, [
        "import-weights", str(DATA / "mobilenet_v1_0.5_160_quant.tflite"), "--model",
        "mobilenet_v1", "--classes", "1000", "--labels", str(DATA / "imagenet_labels.txt"),
        "--out", str(out)])
    assert result.exit_code == 0, result.output
    ckpt = load_checkpoint(out)
    assert ckpt.config.model_kwargs == {"padding": "tf_same"}
    assert getattr(ckpt.model, "padding", None) == "tf_same"
    assert ckpt.config.num_classes == 1000 and ckpt.classes is not None
    assert ckpt.classes[0].startswith("tench")
    pre = ckpt.extra["imported"]["preprocessing"]
    assert pre["mean"] == [128 / 255] * 3 and pre["std"] == [128 / 255] * 3


def test_imported_tflite_config_normalizes_like_tf(tmp_path: Path) -> None:
    """mean = std = 128/255 and "resize to the model size" in the checkpoint's config, and so
    in the manifest's preprocessing and in the data the checkpoint is evaluated on."""
    from mutualnet.checkpoint import load_checkpoint
    from mutualnet.data import load_data, preprocessing

    out = tmp_path / "imported"
    result = CliRunner().invoke(cli, [
        "import-weights", str(DATA / "mobilenet_v1_0.5_160_quant.tflite"), "--model",
        "mobilenet_v1", "--classes", "1000", "--dataset-dir", str(tmp_path / "imagenet"),
        "--out", str(out)])
    assert result.exit_code == 0, result.output
    config = load_checkpoint(out).config
    assert config.input_mean == (128 / 255,) * 3 and config.input_std == (128 / 255,) * 3
    assert (config.image_size, config.image_resize) == (160, 160)
    assert config.image_resize_mode == "stretch"
    pre = preprocessing(config.data_spec())
    assert pre["mean"] == [128 / 255] * 3 and pre["std"] == [128 / 255] * 3
    assert (pre["resize"], pre["resize_mode"], pre["crop"]) == (160, "stretch", 160)
    from PIL import Image

    folder = tmp_path / "imagenet" / "val" / "n01440764"
    folder.mkdir(parents=True)
    with Image.open(DATA / "cat.bmp") as im:
        im.convert("RGB").resize((160, 160), Image.Resampling.BILINEAR).save(folder / "cat.png")
    x, _ = next(load_data(config.data_spec("val"), "val").batches(
        1, augment=False, shuffle=False))
    torch.testing.assert_close(x, to_input(photos(160)[:1]), rtol=0, atol=1e-5)


@needs_litert
def test_import_export_run_matches_the_interpreter_end_to_end(
        tmp_path: Path, reference: dict[str, tuple[np.ndarray, list[int]]]) -> None:
    """import-weights -> export (0.5, 160) -> SubnetRuntime / `mutualnet run` on the original
    photos (any size): top-1 equals the interpreter's on whole images resized to 160 x 160,
    because the manifest says ``resize_mode: stretch`` (a center crop changes 2 of 8)."""
    import shutil

    from PIL import Image

    from export.runtime import SubnetRuntime

    name = "mobilenet_v1_0.5_160_quant.tflite"
    photos_dir = tmp_path / "photos"
    for split in ("train", "val"):  # a tiny ImageFolder: one class folder per photo
        for photo in PHOTOS:
            (photos_dir / split / Path(photo).stem).mkdir(parents=True)
            shutil.copy(DATA / photo, photos_dir / split / Path(photo).stem / photo)
    run_dir, runner = tmp_path / "run", CliRunner()
    for args in (["import-weights", str(DATA / name), "--model", "mobilenet_v1", "--classes",
                  "1000", "--labels", str(DATA / "imagenet_labels.txt"), "--dataset-dir",
                  str(photos_dir), "--out", str(run_dir)],
                 ["export", str(run_dir), "--pairs", "0.5@160", "--calib-images", "0",
                  "--eval-images", "8", "--no-progress"]):
        result = runner.invoke(cli, args)
        assert result.exit_code == 0, result.output
    export = run_dir / "export"
    expected = reference[name][1]  # 1001-class indices; the checkpoint dropped background
    labels = [line.strip() for line in (DATA / "imagenet_labels.txt").read_text().splitlines()
              if line.strip()]
    originals = []
    for photo in PHOTOS:
        with Image.open(DATA / photo) as im:
            originals.append(np.asarray(im.convert("RGB")))
    assert len({a.shape for a in originals}) > 1  # not square, not resized beforehand
    with SubnetRuntime.load(export, backend="onnxruntime", threads=1) as runtime:
        assert runtime.manifest.preprocessing.resize_mode == "stretch"
        assert (runtime.infer(originals).top1 + 1).tolist() == expected
    result = runner.invoke(cli, ["run", str(export), *(str(DATA / p) for p in PHOTOS)])
    assert result.exit_code == 0, result.output
    printed = {line.split(": ", 1)[0]: line.split(": ", 1)[1].rsplit(" (", 1)[0]
               for line in result.stdout.splitlines() if ": " in line}
    assert [printed[str(DATA / p)] for p in PHOTOS] == [labels[i] for i in expected]


def test_cli_width_mismatch_is_one_line_exit_2(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, [
        "import-weights", str(DATA / "mobilenet_v1_0.75_192_quant.tflite"), "--model",
        "mobilenet_v1", "--width", "0.5", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert "holds a width-0.75 MobileNet v1" in result.output
    assert len(result.output.strip().splitlines()) == 1
