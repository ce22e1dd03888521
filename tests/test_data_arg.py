"""The one --data syntax (eval and export) and the one list of data sets and resize modes."""

from __future__ import annotations

from pathlib import Path

import pytest

from mutualnet.data import DATASETS
from mutualnet.errors import UsageError


def test_data_arg_names_paths_and_aliases(tmp_path: Path) -> None:
    from mutualnet.data import parse_data_arg

    assert parse_data_arg("cifar10_bundled") == ("cifar10_bundled", None)
    assert parse_data_arg("npz:/d/x.npz") == ("npz", "/d/x.npz")  # the name wins: not checked
    assert parse_data_arg("cifar100:/data/c100") == ("cifar100", "/data/c100")
    assert parse_data_arg("imagenet1k:/data/in") == ("imagefolder", "/data/in")  # original name
    assert parse_data_arg("npz:") == ("npz", None)  # DataSpec then asks for the root
    npz = tmp_path / "x.npz"
    npz.write_bytes(b"")
    assert parse_data_arg(str(npz)) == ("npz", str(npz))
    assert parse_data_arg(str(tmp_path)) == ("imagefolder", str(tmp_path))
    assert parse_data_arg(str(tmp_path), "cifar100") == ("cifar100", str(tmp_path))
    assert parse_data_arg(str(tmp_path), "npz") == ("imagefolder", str(tmp_path))
    weird = tmp_path / "a:b"
    weird.mkdir()
    assert parse_data_arg(str(weird)) == ("imagefolder", str(weird))  # "/...a" is no name


@pytest.mark.parametrize("text", ["cifar11", "nope:/x", "/no/such/file.npz", ""])
def test_data_arg_refuses_what_it_cannot_find(text: str) -> None:
    from mutualnet.data import parse_data_arg

    with pytest.raises(UsageError, match="not a data set name") as e:
        parse_data_arg(text)
    assert e.value.exit_code == 2 and all(name in str(e.value) for name in DATASETS)


def test_one_list_of_data_sets_and_resize_modes() -> None:
    import mutualnet.config as config
    import mutualnet.data.spec as spec

    assert spec.DATASETS is config.DATASETS and spec.RESIZE_MODES is config.RESIZE_MODES
    try:  # the torch-free runtime keeps its own copy (it may not import mutualnet)
        from export.preprocess import RESIZE_MODES as device_side
    except ImportError:
        from export.runtime import RESIZE_MODES as device_side
    assert tuple(device_side) == config.RESIZE_MODES


def test_eval_takes_the_export_data_syntax(tiny_checkpoint: Path) -> None:
    from click.testing import CliRunner

    from mutualnet.cli import cli

    out = CliRunner().invoke(cli, ["eval", str(tiny_checkpoint), "--data", "/no/such.npz",
                                   "--quiet"])
    assert out.exit_code == 2 and "not a data set name" in out.output
    assert "Traceback" not in out.output
