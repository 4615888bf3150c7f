"""Random data of the requested shape: training batches with box masks, evaluation cases (no dataset)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


def special_ids_for(vocab_size: int) -> dict[str, int]:
    """[PAD]/[CLS]/[MASK] ids: bert-base-uncased's for its vocabulary, the synthetic vocab's otherwise."""
    if vocab_size >= 30522:
        return {"pad": 0, "cls": 101, "mask": 103}
    return {"pad": 0, "cls": 2, "mask": 4}


def random_text(
    count: int, length: int, vocab_size: int, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """Token ids and masks of texts between half and all of ``length`` tokens ([CLS] first, padded)."""
    special = special_ids_for(vocab_size)
    first_word = 1000 if vocab_size >= 30522 else 5
    ids = torch.randint(first_word, vocab_size, (count, length), generator=generator)
    lengths = torch.randint(max(2, length // 2), length + 1, (count,), generator=generator)
    lengths[0] = length  # the batch is padded to its longest text, as a real batch is
    mask = (torch.arange(length)[None, :] < lengths[:, None]).long()
    ids[:, 0] = special["cls"]
    ids[mask == 0] = special["pad"]
    return ids, mask


def random_box_masks(count: int, size: int, generator: torch.Generator) -> Tensor:
    """One random box per sample as a 0/1 mask [count, size, size] (at least an eighth of the side)."""
    masks = torch.zeros(count, size, size)
    low = max(1, size // 8)
    for row in range(count):
        h, w = (int(torch.randint(low, size // 2 + 1, (1,), generator=generator)) for _ in range(2))
        y, x = (int(torch.randint(0, size - s + 1, (1,), generator=generator)) for s in (h, w))
        masks[row, y : y + h, x : x + w] = 1.0
    return masks


def make_train_batch(config, batch_size: int, text_len: int, seed: int, device: torch.device):
    from amc.objectives import TrainBatch

    generator = torch.Generator().manual_seed(seed)
    res = config.image_res
    image = torch.randn(batch_size, 3, res, res, generator=generator)
    ids, mask = random_text(batch_size, text_len, config.text.vocab_size, generator)
    box_mask = random_box_masks(
        batch_size, res, generator
    )  # the mask size is the image size (256 in the paper)
    return TrainBatch(
        image=image.to(device),
        input_ids=ids.to(device),
        attention_mask=mask.to(device),
        box_mask=box_mask.to(device),
    )


@dataclass
class EvalCases:
    """Cases of the evaluation benchmark: several phrases per image, image-major order."""

    images: Tensor  # [n_images, 3, R, R] on the device
    image_index: Tensor  # [n_cases] row of ``images`` of each case (on the device)
    input_ids: Tensor  # [n_cases, L] on the device
    attention_mask: Tensor  # [n_cases, L] on the device
    original_sizes: list[tuple[int, int]]  # (height, width) per case, for the pointing point
    phrases_per_image: int

    def __len__(self) -> int:
        return self.input_ids.shape[0]


def make_eval_cases(
    config, n_cases: int, phrases_per_image: int, text_len: int, seed: int, device: torch.device
) -> EvalCases:
    generator = torch.Generator().manual_seed(seed)
    res = config.image_res
    n_images = math.ceil(n_cases / phrases_per_image)
    images = torch.randn(n_images, 3, res, res, generator=generator)
    image_index = torch.arange(n_cases) // phrases_per_image
    ids, mask = random_text(n_cases, text_len, config.text.vocab_size, generator)
    sizes = torch.randint(res, 2 * res + 1, (n_cases, 2), generator=generator).tolist()
    return EvalCases(
        images=images.to(device),
        image_index=image_index.to(device),
        input_ids=ids.to(device),
        attention_mask=mask.to(device),
        original_sizes=[(int(h), int(w)) for h, w in sizes],
        phrases_per_image=phrases_per_image,
    )
