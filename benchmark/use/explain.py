"""Where a run's model looks: Grad-CAM for CNNs, attention rollout for ViTs; PNG overlays and a figure kind.

- CNNs (a model whose last block has convolutions: the ResNet family, Hugging Face CNNs such as resnet18_in1k):
  Grad-CAM (Selvaraju et al. 2017) from the `grad-cam` package on that block (`layer4`, the last stage), for a
  chosen class (default: the predicted one) — class-specific.
- Otherwise (Hugging Face ViTs): gradient-weighted attention rollout (Chefer, Gur & Wolf 2021, "Generic
  Attention-model Explainability"): each layer's attention map times its gradient with respect to the target
  class's logit, positive part, averaged over heads, rolled out from the identity layer by layer (R <- R + A R),
  read from the CLS token to the patches — class-specific, unlike plain rollout (Abnar & Zuidema 2020).

Maps are computed at the model's input size from the image in the dataset's stored format (exactly what
`predict` feeds), scaled to [0, 1], cut to the image's part of the input (a `resize: pad` run's margins hold
no image), and returned at the original image's size.
"""

from __future__ import annotations

import copy
import io
import itertools
import math
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from benchmark.data.images import open_image
from benchmark.errors import UserError
from benchmark.records import atomic_write_bytes, check_writable
from benchmark.report.figures.style import save_figure
from benchmark.use.loaded import DEFAULT_RESULTS, LoadedRun, load_run, require_extra


@dataclass
class Explanation:
    image: str
    label: str  # predicted class
    confidence: float
    target: str  # the class the map explains
    method: str
    heatmap: np.ndarray  # float32 (H, W) in [0, 1], the original image's size
    overlay: np.ndarray  # uint8 (H, W, 3)
    path: Path | None = None  # the written PNG overlay


def _normalise(maps: torch.Tensor) -> torch.Tensor:
    low = maps.flatten(1).min(1).values.view(-1, 1, 1)
    high = maps.flatten(1).max(1).values.view(-1, 1, 1)
    return (maps - low) / (high - low).clamp_min(1e-12)


def grad_cam(loaded: LoadedRun, pixels: torch.Tensor, targets: list[int]) -> torch.Tensor:
    require_extra("explain")
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    with GradCAM(model=loaded.model, target_layers=[loaded.model.get_submodule(loaded.built.blocks[-1])]) as cam:
        maps = cam(input_tensor=pixels, targets=[ClassifierOutputTarget(t) for t in targets])
    return torch.from_numpy(np.asarray(maps, dtype=np.float32))


def attention_rollout(loaded: LoadedRun, pixels: torch.Tensor, targets: list[int]) -> torch.Tensor:
    """Gradient-weighted attention rollout of each image for its target class, (N, size, size) in [0, 1]."""
    wrapper = loaded.model
    hf = copy.deepcopy(wrapper.model)  # eager attention returns the weights; the loaded model keeps SDPA
    hf.set_attn_implementation("eager")
    with torch.enable_grad():
        out = hf(pixel_values=pixels.detach().requires_grad_(True), output_attentions=True, **wrapper.forward_kwargs)
        if not getattr(out, "attentions", None):
            raise UserError(f"{loaded.run_id}: the model returns no attentions; rollout needs a ViT")
        target_logits = out.logits[torch.arange(len(pixels)), torch.as_tensor(targets)]
        gradients = torch.autograd.grad(target_logits.sum(), out.attentions)  # images are independent: per image
    tokens = out.attentions[0].shape[-1]
    rollout = torch.eye(tokens).expand(len(pixels), tokens, tokens)
    for attention, gradient in zip(out.attentions, gradients):
        weighted = (gradient * attention).detach().clamp_min(0).mean(1)
        rollout = rollout + weighted @ rollout
    side = math.isqrt(tokens - 1)
    if side * side != tokens - 1:
        raise UserError(f"{loaded.run_id}: {tokens - 1} patch tokens are not a square grid; rollout needs a plain ViT")
    grid = rollout[:, 0, 1:].reshape(-1, 1, side, side)
    size = pixels.shape[-1]
    return _normalise(F.interpolate(grid, size=(size, size), mode="bilinear", align_corners=False)[:, 0])


METHODS = {"grad-cam": grad_cam, "attention-rollout": attention_rollout}


def method(loaded: LoadedRun) -> str:
    """Grad-CAM where the model's last block has convolutions (CNNs), else attention rollout (ViTs)."""
    blocks = loaded.built.blocks
    last = loaded.model.get_submodule(blocks[-1]) if blocks else torch.nn.Identity()
    return "grad-cam" if any(isinstance(m, torch.nn.Conv2d) for m in last.modules()) else "attention-rollout"


def saliency(loaded: LoadedRun, images: np.ndarray, targets: list[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Maps in [0, 1] over the part of the input that holds the image and probabilities (N, n_classes) for
    stored-format images: (N, input_size, input_size), less a `resize: pad` run's zero margins.
    `targets`: the class index per image to explain (None: the predicted class)."""
    probs = loaded.probabilities(images)
    targets = [int(p.argmax()) for p in probs] if targets is None else list(targets)
    pixels = loaded.pixels(images)
    maps = METHODS[method(loaded)](loaded, pixels, targets)
    if loaded.padding:
        before, after = loaded.padding
        size = loaded.transform.input_size
        maps = maps[:, before:size - after, before:size - after]
    return maps.numpy(), probs


def overlay(image, heatmap: np.ndarray) -> np.ndarray:
    """The image (PIL, any mode) in RGB with the heatmap (same size, [0, 1]) blended over it as a jet colour map."""
    from pytorch_grad_cam.utils.image import show_cam_on_image

    from benchmark.data.images import eight_bit

    rgb = np.asarray(eight_bit(image).convert("RGB"), dtype=np.float32) / 255
    return show_cam_on_image(rgb, heatmap, use_rgb=True, image_weight=0.55)


def resize_map(heatmap: np.ndarray, height: int, width: int) -> np.ndarray:
    resized = F.interpolate(torch.from_numpy(heatmap)[None, None], size=(height, width), mode="bilinear",
                            align_corners=False)[0, 0]
    return resized.clamp_(0, 1).numpy()


def _target_index(loaded: LoadedRun, target: str | int | None) -> int | None:
    if target is None:
        return None
    names = loaded.class_names
    if str(target) in names:
        return names.index(str(target))
    if str(target).isdigit() and int(target) < len(names):
        return int(target)
    choices = ", ".join(f"{index} '{name}'" for index, name in enumerate(names))
    raise UserError(f"unknown target class {target!r}; use a class name or index ({choices})")


def overlay_tag(index: int, name: str) -> str:
    """The explained class in an overlay's file name: its index and its name with anything but letters, digits,
    `-` and `_` replaced (`1-normal_benign`), so each target of an image gets its own file."""
    return f"{index}-" + re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_")


def overlay_stems(paths: list[Path]) -> list[str]:
    """Each image's overlay file stem: its own, or `<stem>-<n>` (numbered in input order) where images share a stem
    (in any letter case: case-insensitive file systems), so that no image's overlay overwrites another's."""
    counts = Counter(path.stem.casefold() for path in paths)
    taken, stems = set(counts), []
    for path in paths:
        stem = path.stem
        if counts[stem.casefold()] > 1:
            stem = next(f"{path.stem}-{n}" for n in itertools.count(1) if f"{path.stem}-{n}".casefold() not in taken)
        taken.add(stem.casefold())
        stems.append(stem)
    return stems


def write_png(picture: np.ndarray, path: Path) -> None:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())


def explain(run: str | Path | LoadedRun, images: list[str | Path], results: str | Path = DEFAULT_RESULTS,
            output: str | Path | None = None, target: str | int | None = None) -> tuple[list[Explanation], list[str]]:
    """Explanations of image files (PNG overlays written to `output`, default `<results>/explanations/<run_id>/`)
    and one error line per file that could not be read."""
    require_extra("explain")
    loaded = run if isinstance(run, LoadedRun) else load_run(run, results)
    folder = Path(output) if output else loaded.record_path.parents[2] / "explanations" / loaded.run_id
    index = _target_index(loaded, target)
    check_writable(folder)
    opened, pixels, errors = [], [], []
    for item in map(Path, images):
        try:
            image = open_image(item)
            pixels.append(loaded.stored(image, str(item)))
            opened.append((item, image))
        except UserError as err:
            errors.append(str(err))
    if not opened:
        return [], errors
    stored = np.stack(pixels)
    maps, probs = saliency(loaded, stored, None if index is None else [index] * len(stored))
    name, names = method(loaded), loaded.class_names
    explanations = []
    stems = overlay_stems([path for path, _ in opened])
    for (path, image), stem, heat, row in zip(opened, stems, maps, probs):
        heatmap = resize_map(heat, image.height, image.width)
        picture = overlay(image, heatmap)
        predicted = int(row.argmax())
        explained = predicted if index is None else index
        out = folder / f"{stem}.{name}.{overlay_tag(explained, names[explained])}.png"
        write_png(picture, out)
        explanations.append(Explanation(str(path), names[predicted], float(row[predicted]), names[explained], name,
                                        heatmap, picture, out))
    return explanations, errors


def explanation_figure(loaded: LoadedRun, per_group: int = 4):
    """A figure: the record's test images with their maps, correctly and incorrectly predicted side by side."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from PIL import Image

    images, labels = loaded.sample_images()
    maps, probs = saliency(loaded, images)
    predicted = probs.argmax(1)
    groups = {"correct": np.flatnonzero(predicted == labels)[:per_group],
              "incorrect": np.flatnonzero(predicted != labels)[:per_group]}
    rows = max(1, *(len(g) for g in groups.values()))
    fig = Figure(figsize=(6.8, 1.7 * rows + 0.4), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, 4, squeeze=False)
    names = loaded.class_names
    for column, (group, chosen) in enumerate(groups.items()):
        axes[0, 2 * column].set_title(f"{group} ({len(chosen)})", loc="left", fontsize=9)
        for row in range(rows):
            image_ax, map_ax = axes[row, 2 * column], axes[row, 2 * column + 1]
            image_ax.axis("off"), map_ax.axis("off")
            if row >= len(chosen):
                continue
            i = chosen[row]
            picture = Image.fromarray(images[i][..., 0] if images.shape[-1] == 1 else images[i])
            image_ax.imshow(picture, cmap="gray" if images.shape[-1] == 1 else None)
            image_ax.text(0, -0.04, f"true {names[labels[i]]}\npred {names[predicted[i]]} ({probs[i].max():.2f})",
                          transform=image_ax.transAxes, fontsize=6, va="top")
            map_ax.imshow(overlay(picture, resize_map(maps[i], picture.height, picture.width)))
    fig.suptitle(f"{method(loaded)}: {loaded.run_id}", fontsize=8)
    return fig


def write_explanation_figure(run: str | Path, out_dir: str | Path, results: str | Path = DEFAULT_RESULTS,
                             formats=("png",), dpi: int = 200) -> list[Path]:
    """The `figures --explain RUN` kind: `<out_dir>/<suite>/runs/<run_id>_explain.<fmt>`, beside the run's other
    figures."""
    require_extra("explain")
    loaded = load_run(run, results)
    fig = explanation_figure(loaded)
    out_dir = Path(out_dir) / loaded.record["suite"] / "runs"
    out_dir.mkdir(parents=True, exist_ok=True)
    return save_figure(fig, out_dir, f"{loaded.run_id}_explain", formats, dpi)
