"""Loading an encoder on the runtime the spec asks for, without importing torch where none is needed.

``runtime="auto"`` picks OpenVINO on a CPU-only machine and torch wherever a GPU may be. The
OpenVINO path looks for the model's export in the user cache first; a query that finds it
never imports torch. The first run of a model exports it (once, with torch, saying so in one
line on the ``models`` logger, which the CLI prints); a model that cannot be exported is
remembered as such and runs on torch.
"""

from __future__ import annotations

import logging
from pathlib import Path

from models import hardware
from models.encoder import Encoder
from models.errors import ModelError
from models.exported import (
    Export,
    OpenVinoEncoder,
    export_folder,
    find_export,
    openvino_version,
    read_unsupported,
)
from models.spec import EncoderSpec

log = logging.getLogger("models")


def resolve_runtime(spec: EncoderSpec) -> str:
    """torch or openvino: what runs this spec here."""
    if spec.runtime != "auto":
        return spec.runtime
    if not openvino_version():
        return "torch"
    if spec.device == "cpu" or (spec.device == "auto" and not hardware.gpu_may_exist()):
        return "openvino"
    return "torch"


def load_encoder(spec: EncoderSpec) -> Encoder:
    """Load the model the spec names on its runtime; raise a ModelError with the fix when it cannot."""
    if resolve_runtime(spec) == "torch":
        from models.openclip import load_encoder as load_torch  # noqa: PLC0415 - torch loads here

        return load_torch(spec)
    return load_openvino(spec)


def load_openvino(spec: EncoderSpec) -> Encoder:
    """The model on OpenVINO, exported first if this machine has no export of it yet."""
    explicit = spec.runtime == "openvino"
    if explicit and not openvino_version():
        raise ModelError("--runtime openvino: OpenVINO is not installed; pip install openvino, or use --runtime torch")
    if spec.device not in ("auto", "cpu"):
        raise ModelError(f"--runtime openvino runs on the CPU, not --device {spec.device}; use --runtime torch")
    precision = hardware.cpu_precision(spec.precision)
    weights = "fp16"
    folder = export_folder(spec, weights)
    export = find_export(folder)
    if export is None:
        reason = read_unsupported(folder)
        if reason is None:
            export, reason = _export(spec, folder, precision)
        if export is None:
            if explicit:
                raise ModelError(
                    f"--runtime openvino: {spec.label} cannot run on OpenVINO: {reason}; use --runtime torch"
                )
            from models.openclip import load_encoder as load_torch  # noqa: PLC0415

            return load_torch(spec.with_(runtime="torch"))

    def rebuild() -> Export:
        rebuilt, why = _export(spec, folder, precision)
        if rebuilt is None:
            raise ModelError(f"{spec.label}: the OpenVINO export was damaged and cannot be rebuilt: {why}")
        return rebuilt

    return OpenVinoEncoder(export, precision, spec.batch_size, rebuild)


def _export(spec: EncoderSpec, folder: Path, precision: str) -> tuple[Export | None, str]:
    """Export the model with torch; (None, reason) when it cannot run on OpenVINO."""
    from models import export as exporter  # noqa: PLC0415 - torch and open_clip load here
    from models.openclip import load_encoder as load_torch  # noqa: PLC0415

    reference = load_torch(spec.with_(device="cpu", precision="fp32", runtime="torch"))
    log.info(f"exporting {spec.label} to OpenVINO, once for this machine (into {folder})")
    try:
        return exporter.export_openvino(reference, folder, precision), ""
    except exporter.Unsupported as exc:
        exporter.record_unsupported(folder, str(exc))
        log.info(f"{spec.label} stays on torch: {exc}")
        return None, str(exc)
    except (OSError, RuntimeError) as exc:  # a cache folder that cannot be written, OpenVINO failing
        # Nothing is recorded: the next run tries again (the disk may have room by then).
        reason = (
            f"cannot export it into {folder.parent} ({type(exc).__name__}: {exc}); "
            "set CLIPDEX_CACHE to a writable folder"
        )
        log.info(f"{spec.label} runs on torch this time: {reason}")
        return None, reason
