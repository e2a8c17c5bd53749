"""Keep a copy of every epoch's checkpoint files as they stood, to resume from any epoch in a test."""

from __future__ import annotations

from benchmark import train


def keep_checkpoints(monkeypatch) -> dict[int, dict[str, bytes]]:
    """Epoch -> the checkpoint files as they stood right after that epoch's last.pt was written."""
    saved: dict[int, dict[str, bytes]] = {}
    real_save = train.atomic_torch_save

    def save_and_keep(obj, path):
        real_save(obj, path)
        if path.name == "last.pt":
            saved[obj["loop"]["epoch"]] = {p.name: p.read_bytes() for p in path.parent.glob("*.pt")}

    monkeypatch.setattr(train, "atomic_torch_save", save_and_keep)
    return saved
