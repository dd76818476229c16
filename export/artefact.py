"""One record of what an export has made, handed from step to step and written once.

Each export step (the ONNX export, FP16 typing, INT8 with its budget, the OpenVINO IR, the
TensorRT-ready ONNX and the engine) takes the record of its source and returns the record of what
it wrote: the artefact's path and its facts (precision, output kind, encoder, licence,
calibration, accuracy budget, source and hashes, versions), under the keys of its sidecar
``<artefact>.json``. A step never reads back a file an earlier step of the same run wrote: the
record travels in memory, and ``write`` puts it in the sidecar once, atomically, when the
artefact is final. Only a file given from outside the run (``--onnx``) is read, once, by
``Artefact.read``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from runtime.metadata import artefact_digest, read_sidecar, write_sidecar
from runtime.metric import OutputKind
from runtime.reference import Reference, find_reference, load_reference

# Keys the sidecar writer adds itself: never carried from one artefact's record to another's.
WRITER_KEYS = ("schema_version", "artefact")


@dataclass(frozen=True)
class Artefact:
    """``path`` and its sidecar's facts; ``reference`` where its reference was written, and
    ``reference_data`` that reference as its writer holds it (or as read beside a given file), so
    a later step of the same run never reads it back."""

    path: Path
    facts: Mapping[str, Any] = field(default_factory=dict)
    reference: Path | None = None
    reference_data: Reference | None = field(default=None, compare=False, repr=False)

    @classmethod
    def read(cls, path: str | Path) -> Artefact:
        """The record of a file made by an earlier run (or elsewhere: then its facts are empty),
        with the file's SHA-256 as it is now (taken here, once: a step made from it never hashes
        it again, and a sidecar whose file was changed since cannot lend it a stale hash)."""
        path = Path(path)
        facts = {k: v for k, v in (read_sidecar(path) or {}).items() if k not in WRITER_KEYS}
        if path.is_file():
            facts["sha256"] = artefact_digest(path)
        reference = find_reference(path)
        return cls(path, facts, reference, load_reference(reference) if reference is not None else None)

    @classmethod
    def of(cls, source: str | Path | Artefact) -> Artefact:
        """A record as given, or read for a path given from outside the run."""
        return source if isinstance(source, Artefact) else cls.read(source)

    def get(self, key: str, default: Any = None) -> Any:
        return self.facts.get(key, default)

    def __getitem__(self, key: str) -> Any:
        return self.facts[key]

    def output_kind(self) -> OutputKind:
        """What the artefact outputs: from its record, else (a file from elsewhere) its ONNX metadata."""
        kind = OutputKind.from_metadata(self.facts, f"{self.path.name} record")
        if kind is None and self.path.suffix == ".onnx" and self.path.is_file():
            from .graph import onnx_output_kind

            kind = onnx_output_kind(self.path)
        return kind or OutputKind()

    @property
    def precision(self) -> str:
        return self.facts.get("precision", "fp32")

    @property
    def licence(self) -> str:
        return self.facts.get("licence", "unknown")

    @property
    def encoder(self) -> str | None:
        return self.facts.get("encoder")

    def identity(self) -> dict[str, str]:
        """The model's family and variant, carried by every artefact made from this one (a file
        from before families were recorded: Depth Anything V2 when it names an encoder)."""
        encoder = self.encoder
        return {
            "family": self.facts.get("family", "depth-anything-v2" if encoder else "unknown"),
            "variant": self.facts.get("variant", encoder or "unknown"),
        }

    @property
    def calibration(self) -> dict | None:
        return self.facts.get("calibration")

    @property
    def accuracy(self) -> dict | None:
        """The INT8 accuracy budget's summary, where the artefact was held to one."""
        return self.facts.get("accuracy")

    def made(self, path: str | Path, facts: Mapping[str, Any]) -> Artefact:
        """The record of ``path``, made from this artefact: ``facts`` are the new file's own (its
        reference, where its step writes one, comes with ``with_reference``)."""
        return Artefact(Path(path), dict(facts))

    def with_reference(self, made: Reference | None) -> Artefact:
        """This record with the reference its step wrote (``made.path`` where it lies now)."""
        return replace(self, reference=made.path if made is not None else None, reference_data=made)

    def updated(self, **facts: Any) -> Artefact:
        return replace(self, facts={**self.facts, **facts})

    def without(self, *keys: str) -> Artefact:
        return replace(self, facts={k: v for k, v in self.facts.items() if k not in keys})

    @property
    def sha256(self) -> str:
        """The file's SHA-256: recorded by the step that wrote it, or taken when it was read."""
        if "sha256" not in self.facts:
            raise ValueError(f"the record of {self.path} has no SHA-256: read it with Artefact.read")
        return self.facts["sha256"]

    def source_facts(self) -> dict[str, str]:
        """What a file made from this one records about it."""
        return {"source_onnx": str(self.path), "source_sha256": self.sha256}

    def write(self) -> Artefact:
        """The sidecar, written once and atomically."""
        write_sidecar(self.path, dict(self.facts))
        return self
