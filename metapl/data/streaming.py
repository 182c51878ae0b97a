"""Batches of image files: decoded and augmented one image at a time, in loader worker processes.

The main process draws every index and every image's random seed from the stream's own generator, so the
batches do not depend on how many workers there are or how they are scheduled, and a resumed run gets the
same batches. Workers only turn (paths, seeds) into tensors.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from metapl.data import randaugment
from metapl.data.folders import ImageFiles, decode
from metapl.errors import DataError


@dataclass(frozen=True)
class ImagePipeline:
    """What happens to one decoded image: `large` images get the ImageNet pipeline (spec §8.3: Inception crop,
    RandAugment M = 17 on the strong view, centre crop for evaluation); `small` ones are resized to size×size
    and get the CIFAR pipeline (spec §8.2: flip and pad-crop, RandAugment M = 16 and Cutout on the strong view)."""

    size: int
    style: str = "large"
    magnitude: int = 17
    flip: bool = True

    def _resized(self, image: torch.Tensor) -> torch.Tensor:
        if tuple(image.shape[-2:]) == (self.size, self.size):
            return image
        scaled = F.interpolate(image[None].float(), size=(self.size, self.size), mode="bilinear", antialias=True)
        return scaled.round().clamp(0, 255).to(torch.uint8)[0]

    def labeled(self, image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if self.style == "large":
            return randaugment.imagenet_labeled(image, generator, size=self.size)
        return randaugment.cifar_weak(self._resized(image)[None], generator, flip=self.flip)[0]

    def views(self, image: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        if self.style == "large":
            return randaugment.imagenet_views(image, generator, size=self.size, magnitude=self.magnitude)
        weak, strong = randaugment.cifar_views(
            self._resized(image)[None], generator, magnitude=self.magnitude, flip=self.flip
        )
        return weak[0], strong[0]

    def evaluate(self, image: torch.Tensor) -> torch.Tensor:
        if self.style == "large":
            return randaugment.center_crop_eval(image, size=self.size)
        return self._resized(image)


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


class _Producer(torch.utils.data.Dataset):
    """Turns a task (paths and seeds) into image tensors; a bad file comes back as its DataError."""

    def __init__(self, channels: int, pipeline: ImagePipeline):
        self.channels, self.pipeline = channels, pipeline

    def __len__(self) -> int:  # tasks come from the sampler; the length is never used for them
        return 0

    def __getitem__(self, task: dict):
        try:
            return {"task": task, **self.produce(task)}
        except DataError as err:
            return {"task": task, "error": str(err)}

    def produce(self, task: dict) -> dict:
        pipe, out = self.pipeline, {}
        if "eval" in task:
            out["x"] = torch.stack([pipe.evaluate(decode(p, self.channels)) for p in task["eval"]])
            return out
        out["x_l"] = torch.stack(
            [pipe.labeled(decode(p, self.channels), _generator(s)) for p, s in zip(task["paths_l"], task["seeds_l"])]
        )
        if "paths_u" in task:
            views = [
                pipe.views(decode(p, self.channels), _generator(s)) for p, s in zip(task["paths_u"], task["seeds_u"])
            ]
            out["x_u_weak"] = torch.stack([w for w, _ in views])
            out["x_u_strong"] = torch.stack([s for _, s in views])
        return out


def run_tasks(files: ImageFiles, tasks, on_taken=None) -> Iterator[dict]:
    """Outputs of `tasks` in order, made by `files.workers` processes (or here when 0); DataErrors re-raised."""
    producer = _Producer(files.channels, files.pipeline)
    if files.workers == 0:
        outputs = (producer[task] for task in tasks)
    else:
        outputs = iter(
            torch.utils.data.DataLoader(
                producer, batch_size=None, sampler=tasks, num_workers=files.workers, prefetch_factor=2
            )
        )
    for out in outputs:
        if "error" in out:
            raise DataError(out["error"])
        if on_taken is not None:
            on_taken()
        yield out


def eval_batches(files: ImageFiles, batch_size: int) -> Iterator[torch.Tensor]:
    """The evaluation view (no randomness) of every image, in order, `batch_size` at a time."""
    tasks = ({"eval": files.paths[i : i + batch_size]} for i in range(0, len(files), batch_size))
    for out in run_tasks(files, _Tasks(tasks)):
        yield out["x"]


class _Tasks(torch.utils.data.Sampler):
    """An iterable of tasks for DataLoader's `sampler` argument."""

    def __init__(self, source):
        self.source = source

    def __iter__(self):
        return iter(self.source)


class FileBatchPlanner:
    """Keeps, for each task handed to the workers, the stream state right after it was drawn, so that the
    state of the last batch the trainer *received* can be saved while the workers prefetch ahead."""

    def __init__(self, draw, snapshot):
        self.draw, self.snapshot = draw, snapshot
        self.pending: deque = deque()

    def __iter__(self):
        while True:
            task = self.draw()
            self.pending.append(self.snapshot())
            yield task

    def taken(self):
        return self.pending.popleft()
