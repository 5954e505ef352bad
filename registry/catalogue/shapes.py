"""The module shapes of a base model: recorded by its first adapters, checked against every later one."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from quiver_hub.registry.db import upsert
from quiver_hub.registry.errors import InvalidAdapter
from quiver_hub.registry.intake.safetensors_header import read_header
from quiver_hub.registry.intake.validation import factor_shapes
from quiver_hub.registry.lora import algebra
from quiver_hub.registry.models import BaseModelModule, Version
from quiver_hub.registry.storage.blobs import BlobStore


def check_module_shapes(session: Session, base_model: str, shapes: dict[str, tuple[int, int]], record: bool) -> None:
    """Check an adapter's module shapes against those its base model's public adapters agree on, and with
    `record` (a public adapter) record its new ones. Only public adapters' shapes are recorded, so the
    check tells nobody anything about a private adapter; a private one is checked again when made public."""
    known = {
        row.module: (row.in_features, row.out_features)
        for row in session.scalars(
            select(BaseModelModule).where(
                BaseModelModule.base_model == base_model, BaseModelModule.module.in_(sorted(shapes))
            )
        )
    }
    for module, shape in sorted(shapes.items()):
        if module in known and known[module] != shape:
            (i, o), (ki, ko) = shape, known[module]
            raise InvalidAdapter(
                f"{module} is {i} -> {o} in this adapter, but {ki} -> {ko} in the public adapters of {base_model}: "
                "is the base model right? (set it with the base_model field or the card's base_model:)"
            )
    new = [
        {"base_model": base_model, "module": m, "in_features": s[0], "out_features": s[1]}
        for m, s in shapes.items()
        if m not in known
    ]
    if new and record:
        session.execute(upsert(session)(BaseModelModule).values(new).on_conflict_do_nothing())


def stored_shapes(store: BlobStore, version: Version) -> dict[str, tuple[int, int]]:
    """(in_features, out_features) per module of a stored version, from its weights' header."""
    weights = store.local_path(version.file(algebra.WEIGHTS_FILE).sha256)
    with weights.open("rb") as f:
        tensors, _ = read_header(f, weights.stat().st_size, algebra.WEIGHTS_FILE)
    return factor_shapes(tensors, version.adapter_config)
