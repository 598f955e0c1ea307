"""Small pieces shared by the training recipes."""

from __future__ import annotations

from typing import Any

import torch


class ListDataset(torch.utils.data.Dataset):
    """A list as a map-style dataset (records are loaded and collated by each recipe's collator)."""

    def __init__(self, items: list[Any]) -> None:
        self.items = list(items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Any:
        return self.items[i]
