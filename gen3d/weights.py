"""Weights on disk: safetensors only, loaded with a full report of what did not fit.

Every network of gen3d saves and loads through here, so the rules live in one place:

* ``read_safetensors`` turns a missing, truncated or corrupt file (or a pickle renamed
  ``.safetensors``) into a ``WeightsError`` that names the file and the problem.
* ``load_state_dict_checked`` copies tensors into a module by exact name and shape and returns a
  ``LoadReport`` (missing, unexpected, mismatched, ignored); ``strict=True`` raises on any problem.
* ``PretrainedMixin`` gives a model ``save_pretrained(dir)`` / ``from_pretrained(dir)`` with a
  ``config.json`` + ``model.safetensors`` pair (the diffusers contract).
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Iterable, Mapping

import torch
from torch import nn

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"

# Prefixes a released file may carry that are not part of the inference network: the reconstructor
# checkpoint can hold its frozen LPIPS-VGG loss net (spec section 1).
LPIPS_PREFIX = "lpips_loss."


class WeightsError(RuntimeError):
    """A weights file or folder that cannot be used, with the reason in the message."""


@dataclass
class LoadReport:
    """What happened when a state dict was copied into a module."""

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # in the model, not in the file
    unexpected: list[str] = field(default_factory=list)  # in the file, not in the model
    mismatched: list[tuple[str, tuple, tuple]] = field(default_factory=list)  # (key, file, model)
    ignored: list[str] = field(default_factory=list)  # known extras skipped on purpose

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def summary(self, limit: int = 8) -> str:
        def head(keys: list) -> str:
            shown = ", ".join(str(k) for k in keys[:limit])
            return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")

        parts = [f"{len(self.loaded)} tensors loaded"]
        if self.missing:
            parts.append(f"{len(self.missing)} missing: {head(self.missing)}")
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} unexpected: {head(self.unexpected)}")
        if self.mismatched:
            shown = [f"{k} file {tuple(a)} vs model {tuple(b)}" for k, a, b in self.mismatched]
            parts.append(f"{len(self.mismatched)} with mismatched shapes: {head(shown)}")
        if self.ignored:
            parts.append(f"{len(self.ignored)} ignored (e.g. {self.ignored[0]})")
        return "; ".join(parts)


_PICKLE_MAGIC = (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05", b"PK\x03\x04")


def read_safetensors(path: str | os.PathLike, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Read every tensor of a safetensors file, or raise ``WeightsError`` saying why it cannot be."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
    if size < 8:
        raise WeightsError(f"{path} is not a safetensors file: only {size} bytes (truncated or empty)")
    if head.startswith(_PICKLE_MAGIC):
        raise WeightsError(
            f"{path} looks like a pickle/zip (torch.save) file; gen3d loads safetensors only and never "
            "unpickles. Convert it with safetensors.torch.save_file in a trusted environment."
        )
    header_len = int.from_bytes(head, "little")
    if header_len <= 0 or 8 + header_len > size:
        raise WeightsError(
            f"{path} is not a valid safetensors file (header length {header_len} for a file of {size} "
            "bytes): it is truncated or corrupt"
        )
    try:
        return load_file(str(path), device=str(device))
    except (SafetensorError, ValueError, OSError, RuntimeError) as err:
        raise WeightsError(f"{path} could not be read as safetensors (truncated or corrupt?): {err}") from err


def load_state_dict_checked(
    module: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    strict: bool = True,
    ignore_prefixes: Iterable[str] = (LPIPS_PREFIX,),
    source: str = "state dict",
) -> LoadReport:
    """Copy tensors into ``module`` by exact name and shape; cast to each parameter's dtype.

    Keys starting with ``ignore_prefixes`` are skipped and listed as ignored. With ``strict`` any
    missing, unexpected or mismatched key raises ``WeightsError`` and the module is left unchanged.
    """
    ignore_prefixes = tuple(ignore_prefixes)
    own = module.state_dict()
    report = LoadReport()
    to_copy: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if ignore_prefixes and key.startswith(ignore_prefixes):
            report.ignored.append(key)
        elif key not in own:
            report.unexpected.append(key)
        elif tuple(value.shape) != tuple(own[key].shape):
            report.mismatched.append((key, tuple(value.shape), tuple(own[key].shape)))
        else:
            to_copy[key] = value
    report.missing = [k for k in own if k not in state_dict]
    if strict and not report.ok:
        raise WeightsError(f"{source} does not fit {type(module).__name__}: {report.summary()}")
    if any(t.is_meta for t in own.values()):
        module.load_state_dict(to_copy, strict=False, assign=True)
    else:
        with torch.no_grad():
            for key, value in to_copy.items():
                own[key].copy_(value.to(own[key].dtype))
    report.loaded = sorted(to_copy)
    return report


def config_to_json(config: Any) -> str:
    data = dataclasses.asdict(config)
    data["_class_name"] = type(config).__name__
    return json.dumps(data, indent=2, sort_keys=True)


def config_from_json(config_cls: type, text: str, source: str = "config") -> Any:
    data = json.loads(text)
    data.pop("_class_name", None)
    names = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise WeightsError(f"{source}: unknown {config_cls.__name__} fields {unknown}")
    for f in dataclasses.fields(config_cls):  # JSON turns tuples into lists
        if f.name in data and isinstance(data[f.name], list):
            data[f.name] = tuple(data[f.name])
    return config_cls(**data)


class PretrainedMixin:
    """``save_pretrained`` / ``from_pretrained`` for an ``nn.Module`` built from ``self.config``.

    Subclasses set ``config_class`` and take the config as their only constructor argument.
    """

    config_class: ClassVar[type]
    config: Any

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / CONFIG_NAME).write_text(config_to_json(self.config))
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(state, str(directory / WEIGHTS_NAME), metadata={"format": "pt"})
        return directory

    @classmethod
    def from_pretrained(
        cls,
        directory: str | os.PathLike,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        strict: bool = True,
    ):
        directory = Path(directory)
        config_path = directory / CONFIG_NAME
        if not config_path.is_file():
            raise WeightsError(f"no {CONFIG_NAME} in {directory}")
        config = config_from_json(cls.config_class, config_path.read_text(), source=str(config_path))
        model = cls(config)
        state = read_safetensors(directory / WEIGHTS_NAME)
        report = load_state_dict_checked(model, state, strict=strict, source=str(directory / WEIGHTS_NAME))
        model.load_report = report
        return model.to(device=device, dtype=dtype).eval()
