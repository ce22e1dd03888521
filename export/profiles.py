"""Deploy profiles: named device targets in ``deploy_profiles/*.yml``, validated on load.

A profile says which runtime runs the subnets on a device (TensorRT or ONNX Runtime with
an ordered provider list), the TensorRT major version the engines are built with, the
precision, the batch range of the engines' optimization profile, the builder workspace,
the DLA core (Jetson AGX / NX only), the compute budgets the runtime switches between, and
the parity gates an export or engine must pass.

Precisions: ``device_precisions`` are what the device can run (a DLA: fp16 and int8 only);
``precisions`` the artifacts ``mutualnet export`` writes by default (fp32 always comes too,
as the reference); ``precision`` the one TensorRT engines are built in. fp32 is gated on
logits (``fp32_max_abs_diff``); fp16 and int8 on top-1 agreement with the fp32 ONNX and
accuracy drop (``fp16_*`` / ``int8_*`` keys); ``min_top1_agreement`` and
``max_accuracy_drop_pt`` gate the rest (TF32 inside ORT's TensorRT provider).

``budgets_mflops`` are in millions of multiply-accumulates, the unit the MutualNet paper
calls "MFLOPs" and the manifest records per subnet as ``macs``.

Every key is checked: an unknown key or an impossible value raises :class:`ProfileError`
naming the file and the key. Torch-free: this module runs on the device.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from importlib import resources
from pathlib import Path
from typing import Any

from .errors import ProfileError

DEFAULT_PROFILE = "cpu"
RUNTIMES = ("tensorrt", "onnxruntime")
PRECISIONS = ("fp32", "fp16", "int8")
TENSORRT_MAJORS = (10, 11)
KNOWN_PROVIDERS = (
    "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider",
    "OpenVINOExecutionProvider", "DmlExecutionProvider", "CoreMLExecutionProvider",
    "ROCMExecutionProvider", "MIGraphXExecutionProvider", "QNNExecutionProvider",
    "XnnpackExecutionProvider", "NnapiExecutionProvider", "ACLExecutionProvider",
    "ArmNNExecutionProvider", "WebGpuExecutionProvider", "NvTensorRTRTXExecutionProvider",
)

__all__ = ["DEFAULT_PROFILE", "GATE_KEYS", "DeployProfile", "list_profiles", "load_profile",
           "override_gates", "profile_from_dict", "profiles_dir", "with_engine_precision"]

#: the parity-gate keys ``export --gate KEY=VALUE`` may override
GATE_KEYS = ("fp32_max_abs_diff", "min_top1_agreement", "max_accuracy_drop_pt",
             "fp16_min_top1_agreement", "fp16_max_accuracy_drop_pt",
             "int8_min_top1_agreement", "int8_max_accuracy_drop_pt")


@dataclass(frozen=True)
class DeployProfile:
    """One device target. Build with :func:`load_profile` or :func:`profile_from_dict`."""

    name: str
    runtime: str = "onnxruntime"
    ort_providers: tuple[str, ...] = ("CPUExecutionProvider",)
    tensorrt_major: int | None = None
    precision: str = "fp32"
    min_batch: int = 1
    opt_batch: int = 1
    max_batch: int = 1
    workspace_mb: int = 1024
    dla_core: int | None = None
    budgets_mflops: tuple[float, ...] = ()
    budgets_latency_ms: tuple[float, ...] = ()
    fp32_max_abs_diff: float = 1e-4
    min_top1_agreement: float = 0.99
    max_accuracy_drop_pt: float = 0.5
    precisions: tuple[str, ...] = ("fp32",)
    device_precisions: tuple[str, ...] = PRECISIONS
    fp16_min_top1_agreement: float = 0.99
    fp16_max_accuracy_drop_pt: float = 0.3
    int8_min_top1_agreement: float = 0.95
    int8_max_accuracy_drop_pt: float = 1.0
    description: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (tuples become lists); round-trips through profile_from_dict."""
        d = asdict(self)
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = list(v)
        return d

    @property
    def batch_sizes(self) -> tuple[int, ...]:
        """The distinct batch sizes of the range (min, opt, max), ascending."""
        return tuple(sorted({self.min_batch, self.opt_batch, self.max_batch}))


_FIELDS = {f.name for f in fields(DeployProfile)}


def profiles_dir() -> Path:
    """The folder holding the shipped ``*.yml`` profiles (the ``deploy_profiles`` package)."""
    try:
        return Path(str(resources.files("deploy_profiles")))
    except ModuleNotFoundError:  # pragma: no cover - broken install
        return Path(__file__).resolve().parent.parent / "deploy_profiles"


def list_profiles() -> list[str]:
    """Names of the shipped profiles, sorted."""
    return sorted(p.stem for p in profiles_dir().glob("*.yml"))


# ----------------------------------------------------------------------------- validation

def _fail(source: str, key: str, msg: str) -> ProfileError:
    return ProfileError(f"{source}: key '{key}': {msg}")


def _int(source: str, key: str, v: Any, *, lo: int, hi: int | None = None,
         optional: bool = False) -> int | None:
    if v is None and optional:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise _fail(source, key, f"expected an integer, got {v!r}")
    if v < lo or (hi is not None and v > hi):
        rng = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise _fail(source, key, f"must be {rng}, got {v}")
    return v


def _float(source: str, key: str, v: Any, *, lo: float, hi: float | None = None,
           lo_open: bool = False) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(float(v)):
        raise _fail(source, key, f"expected a finite number, got {v!r}")
    x = float(v)
    if x < lo or (lo_open and x == lo) or (hi is not None and x > hi):
        lo_s = f"> {lo}" if lo_open else f">= {lo}"
        rng = lo_s if hi is None else f"{lo_s} and <= {hi}"
        raise _fail(source, key, f"must be {rng}, got {v}")
    return x


def _choice(source: str, key: str, v: Any, choices: tuple[str, ...]) -> str:
    if v not in choices:
        raise _fail(source, key, f"must be one of {', '.join(choices)}; got {v!r}")
    return str(v)


def _budgets(source: str, key: str, v: Any) -> tuple[float, ...]:
    if v is None:
        return ()
    if not isinstance(v, list | tuple):
        raise _fail(source, key, f"expected a list of positive numbers, got {v!r}")
    out = tuple(_float(source, f"{key}[{i}]", x, lo=0.0, lo_open=True) for i, x in enumerate(v))
    if list(out) != sorted(set(out)):
        raise _fail(source, key, "budgets must be distinct and ascending")
    return out


def _providers(source: str, v: Any) -> tuple[str, ...]:
    key = "ort_providers"
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list | tuple) or not v:
        raise _fail(source, key, f"expected a non-empty list of ONNX Runtime providers, got {v!r}")
    for p in v:
        if p not in KNOWN_PROVIDERS:
            raise _fail(source, key, f"unknown ONNX Runtime provider {p!r}; known: "
                        f"{', '.join(KNOWN_PROVIDERS[:3])}, ...")
    if len(set(v)) != len(v):
        raise _fail(source, key, "a provider is listed twice")
    return tuple(v)


def profile_from_dict(data: Any, *, source: str = "<profile>",
                      default_name: str | None = None) -> DeployProfile:
    """Validate a profile mapping; unknown keys / impossible values raise ProfileError."""
    if not isinstance(data, dict):
        raise ProfileError(f"{source}: a deploy profile must be a mapping of keys to values")
    for key in data:
        if key not in _FIELDS:
            raise _fail(str(source), str(key),
                        f"unknown key; allowed keys: {', '.join(sorted(_FIELDS))}")
    d = dict(data)
    name = d.get("name", default_name)
    if not isinstance(name, str) or not name:
        raise _fail(source, "name", "a profile needs a non-empty name")
    runtime = _choice(source, "runtime", d.get("runtime", "onnxruntime"), RUNTIMES)
    providers = _providers(source, d.get("ort_providers", ["CPUExecutionProvider"]))
    trt_major = _int(source, "tensorrt_major", d.get("tensorrt_major"), lo=0, optional=True)
    if trt_major is not None and trt_major not in TENSORRT_MAJORS:
        raise _fail(source, "tensorrt_major", f"supported TensorRT majors are "
                    f"{', '.join(map(str, TENSORRT_MAJORS))}; got {trt_major}")
    if runtime == "tensorrt" and trt_major is None:
        raise _fail(source, "tensorrt_major", "runtime 'tensorrt' needs the TensorRT major "
                    "version the engines are built with (10 on JetPack 6, 10 or 11 on servers)")
    precision = _choice(source, "precision", d.get("precision", "fp32"), PRECISIONS)
    min_b = _int(source, "min_batch", d.get("min_batch", 1), lo=1, hi=4096)
    opt_b = _int(source, "opt_batch", d.get("opt_batch", min_b), lo=1, hi=4096)
    max_b = _int(source, "max_batch", d.get("max_batch", opt_b), lo=1, hi=4096)
    assert min_b is not None and opt_b is not None and max_b is not None
    if not min_b <= opt_b <= max_b:
        bad = "opt_batch" if opt_b < min_b else "max_batch"
        raise _fail(source, bad, f"batch range must satisfy min_batch <= opt_batch <= max_batch; "
                    f"got {min_b} <= {opt_b} <= {max_b}")
    workspace = _int(source, "workspace_mb", d.get("workspace_mb", 1024), lo=1, hi=1 << 20)
    dla = _int(source, "dla_core", d.get("dla_core"), lo=0, hi=1, optional=True)
    if dla is not None:
        if runtime != "tensorrt":
            raise _fail(source, "dla_core", "a DLA core needs runtime 'tensorrt'")
        if precision == "fp32":
            raise _fail(source, "dla_core", "the DLA runs fp16 or int8 only; set precision: int8 "
                        "(from the Q/DQ ONNX) or fp16")
        if trt_major == 11:
            raise _fail(source, "dla_core", "TensorRT 11 does not support Jetson (JetPack stays "
                        "on TensorRT 10); use tensorrt_major: 10 with a DLA core")
        if not min_b == opt_b == max_b:
            bad = "opt_batch" if opt_b != min_b else "max_batch"
            raise _fail(source, bad, f"the DLA (dla_core: {dla}) runs static shapes only, so "
                        f"min_batch, opt_batch and max_batch must be equal; got {min_b}/{opt_b}/"
                        f"{max_b}: set all three to 1 (or one batch size), or set dla_core: null "
                        "for a dynamic-batch GPU engine")
    device_precs, precs = _precisions(source, d, precision, dla)
    description = d.get("description", "")
    if not isinstance(description, str):
        raise _fail(source, "description", "expected a string")
    return DeployProfile(
        name=name, runtime=runtime, ort_providers=providers, tensorrt_major=trt_major,
        precision=precision, min_batch=min_b, opt_batch=opt_b, max_batch=max_b,
        workspace_mb=int(workspace or 0), dla_core=dla,
        budgets_mflops=_budgets(source, "budgets_mflops", d.get("budgets_mflops")),
        budgets_latency_ms=_budgets(source, "budgets_latency_ms", d.get("budgets_latency_ms")),
        fp32_max_abs_diff=_float(source, "fp32_max_abs_diff", d.get("fp32_max_abs_diff", 1e-4),
                                 lo=0.0, lo_open=True),
        min_top1_agreement=_float(source, "min_top1_agreement",
                                  d.get("min_top1_agreement", 0.99), lo=0.0, hi=1.0),
        max_accuracy_drop_pt=_float(source, "max_accuracy_drop_pt",
                                    d.get("max_accuracy_drop_pt", 0.5), lo=0.0, hi=100.0),
        precisions=precs, device_precisions=device_precs,
        **_precision_gates(source, d),
        description=description,
    )


def _precision_list(source: str, key: str, v: Any) -> tuple[str, ...]:
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list | tuple) or not v:
        raise _fail(source, key, f"expected a non-empty list of {', '.join(PRECISIONS)}, "
                    f"got {v!r}")
    return tuple(dict.fromkeys(_choice(source, key, p, PRECISIONS) for p in v))


def _precisions(source: str, d: dict[str, Any], precision: str,
                dla: int | None) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(device_precisions, precisions), checked against each other and the engine precision."""
    default_device = ("fp16", "int8") if dla is not None else PRECISIONS
    device = _precision_list(source, "device_precisions",
                             d.get("device_precisions", list(default_device)))
    if dla is not None and "fp32" in device:
        raise _fail(source, "device_precisions", "the DLA runs fp16 or int8 only; drop fp32")
    if precision not in device:
        raise _fail(source, "precision", f"{precision} is not among device_precisions "
                    f"({', '.join(device)})")
    precs = _precision_list(source, "precisions", d.get("precisions", ["fp32"]))
    for p in precs:
        if p not in device:
            raise _fail(source, "precisions", f"{p} is not among device_precisions "
                        f"({', '.join(device)}); this device cannot run it")
    return device, precs


def _precision_gates(source: str, d: dict[str, Any]) -> dict[str, float]:
    defaults = {"fp16_min_top1_agreement": 0.99, "fp16_max_accuracy_drop_pt": 0.3,
                "int8_min_top1_agreement": 0.95, "int8_max_accuracy_drop_pt": 1.0}
    return {k: _float(source, k, d.get(k, v), lo=0.0, hi=1.0 if "agreement" in k else 100.0)
            for k, v in defaults.items()}


def _read_yaml(path: Path) -> Any:
    import yaml

    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ProfileError(f"cannot read deploy profile {path}: {e.strerror or e}") from e
    except UnicodeDecodeError as e:
        raise ProfileError(f"{path} is not a text (UTF-8 YAML) deploy profile: byte "
                           f"{e.start} cannot be decoded; pass a .yml file") from e
    except yaml.YAMLError as e:
        raise ProfileError(f"{path}: not valid YAML: {str(e).splitlines()[0]}") from e


def load_profile(name_or_path: str | os.PathLike[str] | None) -> DeployProfile:
    """A shipped profile by name (``jetson-orin-nano``) or a YAML file; ``None`` => ``cpu``."""
    if name_or_path is None:
        name_or_path = DEFAULT_PROFILE
    s = str(name_or_path)
    p = Path(s)
    looks_like_path = s.endswith((".yml", ".yaml")) or os.sep in s or "/" in s
    if looks_like_path or (p.is_file() and not (profiles_dir() / f"{s}.yml").is_file()):
        if not p.is_file():
            raise ProfileError(f"deploy profile file {s} does not exist; pass a shipped name "
                               f"({', '.join(list_profiles())}) or a .yml path")
        path = p
    else:
        path = profiles_dir() / f"{s}.yml"
        if not path.is_file():
            raise ProfileError(f"unknown deploy profile {s!r}; shipped profiles: "
                               f"{', '.join(list_profiles())} (or pass a .yml path)")
    return profile_from_dict(_read_yaml(path), source=str(path), default_name=path.stem)


def override_gates(profile: DeployProfile, items: Sequence[str]) -> DeployProfile:
    """``profile`` with parity gates replaced by ``KEY=VALUE`` items (``--gate``), e.g.
    ``int8_min_top1_agreement=0.875`` for 7 of 8 images; values checked as in a file."""
    if not items:
        return profile
    data = profile.to_dict()
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or key not in GATE_KEYS:
            raise ProfileError(f"--gate {item!r}: give KEY=VALUE with KEY one of "
                               f"{', '.join(GATE_KEYS)}, e.g. int8_min_top1_agreement=0.875")
        try:
            data[key] = float(value)
        except ValueError:
            raise ProfileError(f"--gate {item!r}: {value!r} is not a number; e.g. "
                               f"{key}=0.9") from None
    return profile_from_dict(data, source=f"{profile.name} with --gate")


def with_engine_precision(profile: DeployProfile, precision: str | None) -> DeployProfile:
    """``profile`` building its TensorRT engines in ``precision`` (``build-engines
    --precision``, or what ``export --precision`` wrote); ``None`` keeps the profile's. A
    precision the profile's device cannot run is a usage error (exit 2)."""
    if precision is None or precision == profile.precision:
        return profile
    if precision not in profile.device_precisions:
        raise ProfileError(f"deploy profile {profile.name} cannot run {precision} engines: its "
                           f"device runs {', '.join(profile.device_precisions)}; pick one of "
                           "those or another --profile")
    data = profile.to_dict()
    data["precision"] = precision
    return profile_from_dict(data, source=f"{profile.name} with {precision} engines")
