"""Helpers shared by the model, checkpoint and GradCAM tests (not a test module)."""

from __future__ import annotations

from pathlib import Path

import torch

from amc.models import ALBEF, ModelConfig

REPO = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).resolve().parent / "golden"
TINY_YAML = REPO / "config" / "models" / "tiny.yaml"
BASE_YAML = REPO / "config" / "models" / "albef-base.yaml"


def tiny_config(**changes) -> ModelConfig:
    config = ModelConfig.from_file(TINY_YAML)
    return config.replace(**changes) if changes else config


def read_key_list(name: str) -> list[tuple[str, tuple[int, ...], str | None]]:
    """(name, shape, dtype or None) per line of a reference key list (tab separated)."""
    rows = []
    for line in (GOLDEN / name).read_text().splitlines():
        fields = line.split("\t")
        shape = tuple(int(x) for x in fields[1].split(",")) if fields[1] else ()
        rows.append((fields[0], shape, fields[2] if len(fields) > 2 else None))
    return rows


def meta_state_dict(rows) -> dict[str, torch.Tensor]:
    """A state_dict of meta tensors with the listed names, shapes and dtypes (no memory)."""
    dtypes = {"int64": torch.int64, "float32": torch.float32, None: torch.float32}
    return {name: torch.empty(shape, dtype=dtypes[dtype], device="meta") for name, shape, dtype in rows}


@torch.no_grad()
def deterministic_weights(model: ALBEF, seed: int = 0) -> ALBEF:
    """Overwrite every float tensor from a fixed generator, independent of the init code.

    Golden outputs then depend on the forward computation only, not on how timm or the
    model initialise (which may change between releases).
    """
    generator = torch.Generator().manual_seed(seed)
    for name, tensor in model.state_dict().items():
        if not tensor.is_floating_point() or name == "temp":
            continue
        noise = torch.randn(tensor.shape, generator=generator, dtype=torch.float64).to(tensor.dtype)
        if name.endswith(("LayerNorm.weight", "norm.weight", "norm1.weight", "norm2.weight")):
            tensor.copy_(1.0 + 0.1 * noise)
        elif name in ("image_queue", "text_queue"):
            tensor.copy_(torch.nn.functional.normalize(noise, dim=0))
        else:
            tensor.copy_(0.1 * noise)
    return model


def tiny_model(seed: int = 0, **changes) -> ALBEF:
    model = ALBEF(tiny_config(**changes))
    deterministic_weights(model, seed)
    model.copy_params()
    return model.eval()


def tiny_batch(model: ALBEF, batch: int = 3, seed: int = 1, lengths=(7, 4, 10)):
    """Images, ids and masks with different text lengths (so padding is exercised)."""
    generator = torch.Generator().manual_seed(seed)
    res = model.config.image_res
    images = torch.randn(batch, 3, res, res, generator=generator)
    length = max(lengths[:batch])
    # Ids from 5 on: the tiny vocabulary's specials are 0..4 ([CLS]=2 starts each text).
    ids = torch.randint(5, model.config.text.vocab_size, (batch, length), generator=generator)
    mask = torch.zeros(batch, length, dtype=torch.long)
    for row, n in enumerate(lengths[:batch]):
        mask[row, :n] = 1
    ids[:, 0] = 2
    ids[mask == 0] = 0
    return images, ids, mask
