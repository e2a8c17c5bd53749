"""Keep a copy of every epoch's checkpoint files as they stood, to resume from any epoch in a test."""

from __future__ import annotations

from benchmark import checkpoint


def keep_checkpoints(monkeypatch) -> dict[int, dict[str, bytes]]:
    """Epoch -> the checkpoint files as they stood right after that epoch's last.pt was written (run with
    $BENCHMARK_CHECKPOINT_EVERY=0, as conftest sets it, for a checkpoint at every epoch end)."""
    saved: dict[int, dict[str, bytes]] = {}
    real_save = checkpoint.atomic_torch_save

    def save_and_keep(obj, path, fence=None):
        real_save(obj, path, fence)
        if path.name == "last.pt":
            saved[obj["loop"]["epoch"]] = {p.name: p.read_bytes() for p in path.parent.glob("*.pt")}

    monkeypatch.setattr(checkpoint, "atomic_torch_save", save_and_keep)
    return saved
