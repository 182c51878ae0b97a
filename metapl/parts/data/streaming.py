"""Batches of image files: decoded and augmented one image at a time, in loader worker processes.

The main process draws every index and every image's random seed from the stream's own generator, so the
batches do not depend on how many workers there are or how they are scheduled, and a resumed run gets the
same batches. Workers only turn (paths, seeds) into tensors.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Generator, Iterator
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from metapl.core.batch import Batch, with_stored
from metapl.core.errors import ConfigError, DataError, MetaplError
from metapl.parts.data import randaugment
from metapl.parts.data.folders import ImageFiles, decode

CHUNK = 64  # images per worker task: a worker returns a piece of a batch, so memory in flight stays small


@dataclass(frozen=True)
class ImagePipeline:
    """What happens to one decoded image: `large` images get the ImageNet pipeline (docs/method.md#imagenet-pipeline: Inception crop,
    RandAugment M = 17 on the strong view, centre crop for evaluation); `small` ones are resized to size×size
    and get the CIFAR pipeline (docs/method.md#cifar-pipeline: flip and pad-crop, RandAugment M = 16 and Cutout on the strong view).
    `flip=False` drops the flips, `augment=False` every random change (all views are the evaluation view)."""

    size: int
    style: str = "large"
    magnitude: int = 17
    flip: bool = True
    augment: bool = True

    def _resized(self, image: torch.Tensor) -> torch.Tensor:
        if tuple(image.shape[-2:]) == (self.size, self.size):
            return image
        scaled = F.interpolate(image[None].float(), size=(self.size, self.size), mode="bilinear", antialias=True)
        return scaled.round().clamp(0, 255).to(torch.uint8)[0]

    def labeled(self, image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if not self.augment:
            return self.evaluate(image)
        if self.style == "small":
            return randaugment.cifar_weak(self._resized(image)[None], generator, flip=self.flip)[0]
        if self.flip:
            return randaugment.imagenet_labeled(image, generator, size=self.size)
        return randaugment.inception_crop(image, generator, size=self.size)

    def views(self, image: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.augment:
            plain = self.evaluate(image)
            return plain, plain
        if self.style == "small":
            weak, strong = randaugment.cifar_views(
                self._resized(image)[None], generator, magnitude=self.magnitude, flip=self.flip
            )
            return weak[0], strong[0]
        if self.flip:
            return randaugment.imagenet_views(image, generator, size=self.size, magnitude=self.magnitude)
        crop = randaugment.inception_crop(image, generator, size=self.size)
        strong = randaugment.rand_augment(crop, generator, self.magnitude, cutout_const=40, translate_const=100)
        return crop, strong

    def evaluate(self, image: torch.Tensor) -> torch.Tensor:
        if self.style == "large":
            return randaugment.center_crop_eval(image, size=self.size)
        return self._resized(image)


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


def _own_process_group(_: int) -> None:
    """A signal sent to the trainer's process group (Ctrl-C, a scheduler's SIGTERM) must not kill the workers
    under it: the trainer finishes its step, checkpoints and then shuts them down itself."""
    os.setpgrp()


class _Producer(torch.utils.data.Dataset):
    """Turns a task (a part of a batch: paths and seeds) into image tensors; a bad file or setting comes back
    as its one-line message, which the trainer raises."""

    def __init__(self, channels: int, pipeline: ImagePipeline):
        self.channels, self.pipeline = channels, pipeline

    def __len__(self) -> int:  # tasks come from the sampler; the length is never used for them
        return 0

    def __getitem__(self, task: dict):
        try:
            return {"task": task, **self.produce(task)}
        except MetaplError as err:
            return {"task": task, "error": f"{type(err).__name__}:{err}"}

    def produce(self, task: dict) -> dict:
        pipe, images = self.pipeline, [decode(p, self.channels) for p in task["paths"]]
        if task["part"] == "eval":
            return {"x": torch.stack([pipe.evaluate(image) for image in images])}
        if task["part"] == "labeled":
            return {"x": torch.stack([pipe.labeled(im, _generator(s)) for im, s in zip(images, task["seeds"])])}
        views = [pipe.views(im, _generator(s)) for im, s in zip(images, task["seeds"])]
        return {"weak": torch.stack([w for w, _ in views]), "strong": torch.stack([s for _, s in views])}


def _raise(message: str) -> None:
    kind, _, text = message.partition(":")
    raise {"ConfigError": ConfigError}.get(kind, DataError)(text)


def run_tasks(files: ImageFiles, tasks) -> Generator[dict, None, None]:
    """Outputs of `tasks` in order, made by `files.workers` processes (or here when 0); errors re-raised."""
    producer = _Producer(files.channels, files.pipeline)  # type: ignore[arg-type]  # ImageFiles keeps it untyped
    if files.workers == 0:
        outputs = (producer[task] for task in tasks)
    else:
        loader = torch.utils.data.DataLoader(
            producer,
            batch_size=None,
            sampler=_Tasks(tasks),
            num_workers=files.workers,
            prefetch_factor=2,
            worker_init_fn=_own_process_group,
            # its own generator: starting the workers draws their base seed from it, never from the global RNG
            # (dropout, sampling), which a resumed run would otherwise see one draw ahead (tests/test_shards.py)
            generator=torch.Generator(),
        )
        outputs = iter(loader)  # type: ignore[arg-type]  # batch_size=None: the producer's dicts as they are
    for out in outputs:
        if "error" in out:
            _raise(out["error"])
        yield out


def eval_batches(files: ImageFiles, batch_size: int) -> Iterator[torch.Tensor]:
    """The evaluation view (no randomness) of every image, in order, in batches of up to `batch_size`."""
    step = max(1, min(batch_size, CHUNK))
    tasks = ({"part": "eval", "paths": files.paths[i : i + step]} for i in range(0, len(files), step))
    for out in run_tasks(files, tasks):
        yield out["x"]


class _Tasks(torch.utils.data.Sampler):
    """An iterable of tasks for DataLoader's `sampler` argument."""

    def __init__(self, source):
        self.source = source

    def __iter__(self):
        return iter(self.source)


def _chunks(part: str, paths, seeds) -> list[dict]:
    return [
        {"part": part, "paths": paths[i : i + CHUNK], "seeds": seeds[i : i + CHUNK]}
        for i in range(0, len(paths), CHUNK)
    ]


class FileBatches:
    """Training batches of image files. `draw()` gives one batch's plan (paths, seeds, labels) and `snapshot()`
    the stream state right after it; workers make the batch in chunks, and the state of the last batch the
    trainer *received* is kept, so that it can be saved while the workers prefetch ahead."""

    def __init__(self, files: ImageFiles, draw, snapshot):
        self.draw, self.snapshot = draw, snapshot
        self.pending: deque = deque()  # (plan, state) of batches handed to the workers, oldest first
        self.received = None
        self.outputs = run_tasks(files, self._tasks())

    def _tasks(self):
        while True:
            plan = self.draw()
            self.pending.append((plan, self.snapshot()))
            yield from _chunks("labeled", plan["paths_l"], plan["seeds_l"])
            if "paths_u" in plan:
                yield from _chunks("unlabeled", plan["paths_u"], plan["seeds_u"])

    def __next__(self) -> Batch:
        plan, state = self.pending[0] if self.pending else (None, None)
        x_l: list[torch.Tensor] = []
        weak: list[torch.Tensor] = []
        strong: list[torch.Tensor] = []
        if plan is None:  # nothing drawn yet: the first chunk's request draws the plan
            first = next(self.outputs)
            plan, state = self.pending[0]
            x_l.append(first["x"])
        while sum(len(x) for x in x_l) < len(plan["paths_l"]):
            x_l.append(next(self.outputs)["x"])
        while sum(len(w) for w in weak) < len(plan.get("paths_u", ())):
            out = next(self.outputs)
            weak.append(out["weak"])
            strong.append(out["strong"])
        self.pending.popleft()
        self.received = state
        batch = Batch(
            torch.cat(x_l),
            plan["y_l"],
            torch.cat(weak) if weak else None,
            torch.cat(strong) if strong else None,
            plan.get("y_u"),
        )
        return with_stored(batch, plan.get("p_l"), plan.get("p_u"))

    def close(self) -> None:
        self.outputs.close()  # ends the DataLoader iterator, which shuts its workers down
