"""`metapl label`: a teacher's class distributions on every image of a data set's training pool, computed once and
stored (metapl/parts/data/label_store.py), so that Reduced MPL never holds the big teacher in memory again.

The teacher (SOURCE) is a finished metapl run (its config.yaml gives the data and the model, model.pt or
best_model.pt the weights) or a registered model name with a local weights file and a preset for the data. Every
image of the pool (labeled, validation and unlabeled images alike, since splits index into it) gets the softmax of
the teacher's logits on its evaluation view, in eval mode.

Work is cut into shards of consecutive pool indices, each written atomically: a killed run, started again with the
same command, skips the shards it finished. Under torchrun rank r labels the shards i with i % world == r; rank 0
writes the manifest after all ranks are done.

With data.unlabeled_shards (WebDataset tars, parts/data/shards.py) the shards' samples are labeled too, into the store's
shard part (label_store.py): one store file per input shard, keyed by each sample's key, written atomically when
the input shard is done and skipped by a rerun when present and intact. Rank r labels input shards i % world == r,
read and decoded by its loader workers (data.workers), each worker a whole input shard at a time, so no process
holds more than the shards in flight. A source the store cannot cover (shards with data that are not image files)
is refused before anything is written. `bias` injects a known systematic error for experiments
(docs/reduced-mpl.md#bias): on images whose argmax is class a, half of a's probability moved to class b (`half`), or
b's logit set δ nats above a's on a chosen fraction of them (`shift`, a bias of known margin).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from metapl import __version__
from metapl.core import distributed
from metapl.core.atomic import atomic_write_json, remove_leftovers
from metapl.core.checkpoint import load_state_file, load_weights, state_mismatch
from metapl.core.errors import CheckpointError, ConfigError, DataError, MetaplError
from metapl.core.settings import suggest
from metapl.parts.data import bundle_from_split
from metapl.parts.data.folders import ImageFiles
from metapl.parts.data.label_store import (
    FORMAT,
    MANIFEST,
    PLAN,
    PRECISIONS,
    keyed_name,
    load_keyed_shard,
    pool_hash,
    save_keyed_shard,
    save_shard,
    shard_name,
)
from metapl.parts.data.registry import DATASETS
from metapl.parts.data.splits import Split
from metapl.parts.models.registry import MODELS
from metapl.run.config import Config, build_config, load_config_file, set_value, validate
from metapl.run.outputs import check_output_folder, config_inputs
from metapl.run.threads import apply_threads
from metapl.run.values import parse_override

AUTO_FULL_CLASSES = 100  # top_k=None stores all K classes up to this many, else the top AUTO_TOP_K
AUTO_TOP_K = 16
RUN_WEIGHTS = {"final": "model.pt", "best": "best_model.pt"}


@dataclass
class LabelOptions:
    """How `metapl label` stores the distributions."""

    top_k: int | None = None  # 0: all K classes; k > 0: the k largest; None: all up to 100 classes, else 16
    shard_size: int = 10_000  # images per shard file
    precision: str = "fp16"  # fp16 or fp32
    bias: Bias | None = None  # a known systematic error injected into the stored distributions (parse_bias)
    batch_size: int | None = None  # images per forward (None: the config's train.eval_batch_size)
    device: str = "auto"  # auto, cpu or cuda (under torchrun, auto is the rank's GPU)


BIAS_KINDS = ("half", "shift")
BIAS_EXAMPLES = "--bias 3:8,4:9, --bias half:3>8,4>9 or --bias shift:3>8:delta=2:fraction=0.5"


@dataclass(frozen=True)
class Bias:
    """A known systematic error injected into stored distributions, for each pair (a, b) on the images whose argmax
    is a. `half`: half of a's probability moved to b (the wrong class ends a near-tie ahead: its margin depends on
    the image). `shift`: on a `fraction` of those images (chosen by a hash of each image's pool index or shard key,
    so the same images whatever the sharding), b's logit set `delta` nats above a's, the rest unchanged: b wins
    by exactly `delta`."""

    pairs: tuple[tuple[int, int], ...] = ()
    kind: str = "half"
    delta: float = 0.0  # shift: log p_b − log p_a after the shift
    fraction: float = 1.0  # shift: the share of the images assigned to a that are shifted

    def __bool__(self) -> bool:
        return bool(self.pairs)

    def record(self) -> list | dict:
        """What the plan and the manifest record: the pairs alone for half (as stores always recorded them)."""
        pairs = [list(pair) for pair in self.pairs]
        if self.kind == "half":
            return pairs
        return {"kind": self.kind, "pairs": pairs, "delta": self.delta, "fraction": self.fraction}


def parse_bias(text: str) -> Bias:
    """'3:8,4:9' or 'half:3>8,4>9' (half of a's probability to b), 'shift:3>8,4>9:delta=2[:fraction=0.5]' (b's
    logit δ nats above a's on that share of the images assigned to a); '' → no bias. One ConfigError line for
    anything else."""
    text = text.strip()
    if not text:
        return Bias()
    kind, sep, rest = text.partition(":")
    if sep and kind in BIAS_KINDS:
        fields = rest.split(":")
        pairs = _bias_pairs(text, fields[0], ">")
        options = dict(_bias_option(text, item) for item in fields[1:])
        allowed = {"half": set(), "shift": {"delta", "fraction"}}[kind]
        unknown = sorted(set(options) - allowed)
        if unknown:
            takes = f"takes only {' and '.join(sorted(allowed))}" if allowed else "takes no options"
            raise ConfigError(f"--bias {text!r}: {kind} {takes}, not {unknown[0]!r}; write e.g. {BIAS_EXAMPLES}")
        if kind == "half":
            return Bias(pairs)
        if "delta" not in options:
            raise ConfigError(f"--bias {text!r}: shift needs its margin, delta=D nats; write e.g. {BIAS_EXAMPLES}")
        delta, fraction = options["delta"], options.get("fraction", 1.0)
        if not (math.isfinite(delta) and delta > 0):
            raise ConfigError(
                f"--bias {text!r}: delta={delta:g} is impossible; use a margin above 0 nats, e.g. delta=2"
            )
        if not 0 < fraction <= 1:
            raise ConfigError(f"--bias {text!r}: fraction={fraction:g} is impossible; use a share in (0, 1]")
        targets = [a for a, _ in pairs]
        if len(set(targets)) < len(targets):
            raise ConfigError(f"--bias {text!r}: a shift moves each class A once; name every A in one pair only")
        return Bias(pairs, "shift", delta, fraction)
    return Bias(_bias_pairs(text, text, ":"))


def _bias_pairs(text: str, items: str, separator: str) -> tuple[tuple[int, int], ...]:
    pairs = []
    for item in filter(None, (part.strip() for part in items.split(","))):
        a, sep, b = item.partition(separator)
        try:
            if not sep:
                raise ValueError
            pairs.append((int(a), int(b)))
        except ValueError:
            raise ConfigError(
                f"--bias {text!r}: {item!r} is not A{separator}B (two class numbers); write e.g. {BIAS_EXAMPLES}"
            ) from None
    if not pairs:
        raise ConfigError(f"--bias {text!r} names no pair of classes; write e.g. {BIAS_EXAMPLES}")
    return tuple(pairs)


def _bias_option(text: str, item: str) -> tuple[str, float]:
    key, sep, value = item.partition("=")
    try:
        if not sep:
            raise ValueError
        return key.strip(), float(value)
    except ValueError:
        raise ConfigError(f"--bias {text!r}: {item!r} is not KEY=NUMBER; write e.g. {BIAS_EXAMPLES}") from None


@dataclass
class _Teacher:
    config: Config  # its data section says which pool to label
    model: nn.Module | None  # built once the pool is loaded
    weights: Path
    source: dict  # for the manifest


def label_pool(
    source: str | Path,
    out_dir: Path,
    *,
    weights: str | None = None,
    preset: str | None = None,
    overrides: Sequence[str] = (),
    options: LabelOptions | None = None,
    progress: bool = True,
    announce: Callable[[str], None] | None = None,
) -> dict:
    """Label every image of the pool of `source`'s data set into `out_dir`; returns the manifest.

    `source`: a run directory (then `weights` is final or best, and `overrides` may set data.* keys, e.g. a moved
    data.root) or a registered model name (then `weights` is a state-dict file and `preset` plus `overrides` give
    the data and the model's settings)."""
    options = options or LabelOptions()
    _check_options(options)
    out_dir = Path(out_dir)
    rank_device = distributed.setup_from_env()
    try:
        rank, world = distributed.rank(), distributed.world_size()
        teacher = _resolve_source(source, weights, preset, overrides)
        inputs = [*config_inputs(teacher.config), (f"the teacher's weights {str(teacher.weights)!r}", teacher.weights)]
        check_output_folder(out_dir, inputs)
        from metapl.run.build import resolve_device

        device = rank_device if rank_device is not None and options.device == "auto" else resolve_device(options.device)
        cfg = teacher.config
        loaded = DATASETS.get(cfg.data.name).load(cfg.data, cfg.train.seed)
        dataset = loaded.dataset
        num_classes, pool_size = dataset.num_classes, len(dataset.y_train)
        bias = options.bias or Bias()
        _check_bias(bias, num_classes)
        top_k = _top_k(options.top_k, num_classes)
        inputs_shards = _shard_inputs(cfg, dataset.x_train)  # before anything is written: one line if impossible
        plan = {
            "format": FORMAT,
            "source": teacher.source,
            "data": cfg.data.name,
            "fingerprint": pool_hash(dataset),
            "num_classes": num_classes,
            "pool_size": pool_size,
            "top_k": top_k,
            "precision": options.precision,
            "shard_size": options.shard_size,
            "bias": bias.record(),
        }
        if inputs_shards is not None:
            plan["unlabeled_shards"] = inputs_shards.plan()
        if (out_dir / MANIFEST).is_file() and _same_plan(out_dir, plan):
            if announce is not None and distributed.is_main():
                announce(f"{out_dir} already holds these labels; nothing to do")
            return _read_json(out_dir / MANIFEST)
        model = _build_teacher(teacher, loaded, device)  # before anything is written: weights that do not fit
        apply_threads(cfg.train.threads, [model], device, tuple(dataset.x_train.shape[1:]))
        _start(out_dir, plan)
        x = dataset.x_train
        batch_size = options.batch_size or cfg.train.eval_batch_size
        count = math.ceil(pool_size / options.shard_size)
        mine = [n for n in range(count) if n % world == rank]
        sizes = {n: min(options.shard_size, pool_size - n * options.shard_size) for n in mine}
        done = [n for n in mine if (out_dir / shard_name(n)).is_file()]
        if done and announce is not None and distributed.is_main():
            announce(f"resuming: {len(done)} of {len(mine)} shards of {out_dir} are done and kept")
        shards_done: dict[int, int] = {}
        if inputs_shards is not None:
            shards_done = inputs_shards.done(out_dir, rank, world, num_classes, top_k)
            if shards_done and announce is not None and distributed.is_main():
                whose = " (rank 0's; each rank keeps its own)" if world > 1 else ""
                announce(f"resuming: {len(shards_done)} input shards are labeled and kept{whose}")
        from tqdm import tqdm

        bar = tqdm(
            total=None if inputs_shards is not None else sum(sizes.values()),  # the shards' samples are not counted
            initial=sum(sizes[n] for n in done) + sum(shards_done.values()),
            desc="label",
            unit="img",
            disable=None if progress and distributed.is_main() else True,
            dynamic_ncols=True,
        )
        with bar:
            for number in mine:
                if number in done:
                    continue
                start = number * options.shard_size
                probs = torch.cat(list(_predict(model, x[start : start + sizes[number]], batch_size, device, bar)))
                index = torch.arange(start, start + len(probs))
                values, classes = compress(inject_bias(probs, bias, index.tolist()), top_k, options.precision)
                save_shard(out_dir / shard_name(number), index, values, classes)
            if inputs_shards is not None:
                todo = [i for i in range(len(inputs_shards.paths)) if i % world == rank and i not in shards_done]
                _label_shards(
                    model,
                    dataset.x_train,
                    inputs_shards,
                    todo,
                    out_dir,
                    options,
                    (top_k, num_classes),
                    batch_size,
                    device,
                    bar,
                )
        if world > 1:
            torch.distributed.barrier()
        shards: list[dict[str, Any]] = [
            {
                "file": shard_name(n),
                "start": n * options.shard_size,
                "count": min(options.shard_size, pool_size - n * options.shard_size),
            }
            for n in range(count)
        ]
        manifest = {**plan, "metapl_version": __version__, "shards": shards}
        if distributed.is_main():
            written = [s["file"] for s in shards]
            if inputs_shards is not None:
                written += [keyed_name(i) for i in range(len(inputs_shards.paths))]
            missing = [name for name in written if not (out_dir / name).is_file()]
            if missing:
                raise CheckpointError(
                    f"{out_dir / missing[0]} was not written (a rank failed?); run the same metapl label command again"
                )
            if inputs_shards is not None:
                manifest["unlabeled_shards"] = inputs_shards.manifest(out_dir)
            atomic_write_json(manifest, out_dir / MANIFEST)
        return manifest
    finally:
        distributed.cleanup()


# ---------------------------------------------------------------------------------------------- the teacher
def _resolve_source(source: str | Path, weights: str | None, preset: str | None, overrides: Sequence[str]) -> _Teacher:
    path = Path(source)
    if path.is_dir():
        return _run_teacher(path, weights or "final", preset, overrides)
    name = str(source)
    if name in MODELS:  # a name of metapl's table, or of a family (timm/<architecture>)
        if name not in MODELS.names():
            MODELS.check(name, "SOURCE")  # an unknown timm architecture: one line with timm's closest name
        return _model_teacher(name, weights, preset, overrides)
    hint = suggest(name, MODELS.names())
    raise ConfigError(
        f"SOURCE {name!r} is neither a run directory nor a registered model{hint}; pass a directory written by "
        f"metapl train, or one of: {', '.join(MODELS.names())} (with --weights FILE --preset P)"
    )


def _run_teacher(run: Path, weights: str, preset: str | None, overrides: Sequence[str]) -> _Teacher:
    if preset is not None:
        raise ConfigError(f"--preset is for a registered model; the run directory {run} brings its own config")
    if weights not in RUN_WEIGHTS:
        raise ConfigError(
            f"--weights {weights!r}: a run directory's weights are final (model.pt) or best (best_model.pt)"
        )
    if not (run / "config.yaml").is_file():
        raise CheckpointError(
            f"{run} is not a run directory (no config.yaml); pass a directory written by metapl train"
        )
    cfg = load_config_file(run / "config.yaml")
    for key, value in (parse_override(item) for item in overrides):
        if not key.startswith("data."):
            raise ConfigError(
                f"--set {key}=...: with a run directory only data.* keys can be set (the model is the run's)"
            )
        set_value(cfg, key, value)
    # the teacher's method (often supervised) need not read unlabeled shards: `metapl label` does, whatever it is
    shards, cfg.data.unlabeled_shards = cfg.data.unlabeled_shards, ""
    validate(cfg)
    cfg.data.unlabeled_shards = shards
    path = run / RUN_WEIGHTS[weights]
    if not (run / RUN_WEIGHTS["final"]).is_file():
        raise CheckpointError(
            f"no {run / 'model.pt'}: the run has not finished; finish it with the same metapl train command"
        )
    if not path.is_file():
        raise CheckpointError(f"no {path}: the run kept no best-on-validation weights; use --weights final")
    source = {"kind": "run", "run": str(run.resolve()), "weights": weights, "model": cfg.model.name}
    return _Teacher(cfg, None, path, source)


def _model_teacher(name: str, weights: str | None, preset: str | None, overrides: Sequence[str]) -> _Teacher:
    if preset is None:
        raise ConfigError(f"SOURCE {name} is a model: give the data and its settings with --preset P [--set ...]")
    if weights is None or weights in RUN_WEIGHTS:
        raise ConfigError(f"SOURCE {name} is a model: give its pretrained weights with --weights FILE (a state dict)")
    path = Path(weights)
    if not path.is_file():
        raise CheckpointError(f"no weights file at {path}; pass the state dict of a trained {name}")
    cfg = build_config(preset, [f"model.name={name}", *overrides])
    source: dict[str, object] = {"kind": "model", "model": name, "weights": str(path.resolve()), "preset": preset}
    source["overrides"] = list(overrides)
    return _Teacher(cfg, None, path, source)


def _build_teacher(teacher: _Teacher, loaded, device: torch.device) -> nn.Module:
    """The source's network with its weights, in eval mode on `device`."""
    from metapl.commands.finished_run import load_state
    from metapl.parts.models.normalize import Standardized
    from metapl.run.build import build_model

    dataset = loaded.dataset
    first = [0] if len(dataset.y_train) else []
    shapes = bundle_from_split(dataset, Split(first, first, []), None, None, None)  # sizes only, for build_model
    shapes.normalization = loaded.normalization
    cfg = teacher.config
    model = build_model(cfg, shapes)
    if teacher.source["kind"] == "model":
        fix = f"pass the state dict of a trained {cfg.model.name} (a .pth/.pt or .safetensors file)"
        state = load_state_file(teacher.weights, fix=fix)
        target: nn.Module = model
        if isinstance(model, Standardized) and not any(k.startswith("net.") for k in state):
            target = model.net  # the bare network's keys go inside metapl's standardisation wrapper
        problem = state_mismatch(target, state)
        if problem is not None:
            raise CheckpointError(
                f"{teacher.weights} does not fit model.name={cfg.model.name} with {dataset.num_classes} classes: "
                f"{problem}; pass that model's state dict, made for this data set's classes"
            )
        target.load_state_dict(state)
    else:
        load_state(model, load_weights(teacher.weights, fix="pass intact weights"), teacher.weights, cfg, shapes)
    return model.to(device).eval()


# ---------------------------------------------------------------------------------------------- labeling
@torch.no_grad()
def _predict(model: nn.Module, x, batch_size: int, device: torch.device, bar) -> Iterator[torch.Tensor]:
    """Softmax probabilities (float32, on the CPU) of `model` on the evaluation views of `x`, in order."""
    if isinstance(x, ImageFiles):
        from metapl.parts.data.streaming import eval_batches

        batches = _regroup(eval_batches(x, batch_size), batch_size)  # the workers' pieces: whole batches again
    else:
        batches = (x[i : i + batch_size] for i in range(0, len(x), batch_size))
    for xb in batches:
        probs = torch.softmax(model(xb.to(device, non_blocking=True)).float(), dim=-1).cpu()
        bar.update(len(probs))
        yield probs


def _regroup(pieces: Iterator[torch.Tensor], size: int) -> Iterator[torch.Tensor]:
    """Consecutive pieces joined into batches of `size` (the last one shorter), in order. Loader workers hand over
    small pieces (streaming.CHUNK images) so that memory in flight stays small, but the teacher's forward pass is
    much faster per image on whole batches (on 2 CPU cores, the small CNN: 237 images/s at 64, 426 at 1,024;
    docs/scale.md#measured-scale); the batches are cut by position alone, so the outputs do not depend on workers."""
    held: list[torch.Tensor] = []
    count = 0
    for piece in pieces:
        held.append(piece)
        count += len(piece)
        while count >= size:
            joined = torch.cat(held)
            yield joined[:size]
            held, count = ([joined[size:]] if len(joined) > size else []), len(joined) - size
    if count:
        yield torch.cat(held)


# ---------------------------------------------------------------------------------------------- input shards
@dataclass
class _InputShards:
    """data.unlabeled_shards as `metapl label` reads it: the files, their names in the store and fingerprints."""

    spec: str
    paths: list[str]
    names: list[str]
    fingerprints: list[dict | None]

    def plan(self) -> dict:
        """What the plan records: a rerun resumes only over the same shards, unchanged (a short digest of them)."""
        import hashlib
        import json

        digest = hashlib.sha256(json.dumps([self.names, self.fingerprints]).encode()).hexdigest()[:32]
        return {"count": len(self.paths), "digest": digest}

    def done(self, out_dir: Path, rank: int, world: int, num_classes: int, top_k: int) -> dict[int, int]:
        """This rank's input shards whose store file is present and intact → their sample counts. A damaged one
        (which only a hand or a failing disk makes: files are written atomically) is labeled again."""
        found = {}
        for i in range(rank, len(self.paths), world):
            path = out_dir / keyed_name(i)
            if path.is_file():
                try:
                    found[i] = len(load_keyed_shard(out_dir, path, num_classes, top_k).keys)
                except DataError:
                    continue
        return found

    def manifest(self, out_dir: Path) -> dict:
        """The shard part of the manifest: every input shard's name, store file, sample count and fingerprint."""
        from safetensors import safe_open

        files = []
        for i, (name, fingerprint) in enumerate(zip(self.names, self.fingerprints)):
            with safe_open(str(out_dir / keyed_name(i)), framework="pt") as stored:
                count = stored.get_slice("key_ends").get_shape()[0]
            files.append({"input": name, "file": keyed_name(i), "count": count, "fingerprint": fingerprint})
        return {"spec": self.spec, "files": files}


def _shard_inputs(cfg: Config, images) -> _InputShards | None:
    """data.unlabeled_shards' files (None when unset), after checking that they can be labeled: every unlabeled
    source is labeled or refused, never skipped."""
    spec = cfg.data.unlabeled_shards
    if not spec:
        return None
    from metapl.core.fingerprint import file_fingerprint
    from metapl.parts.data.shards import check_shard_data, input_names, shard_files

    check_shard_data(images, cfg.data)
    paths = shard_files(spec)
    return _InputShards(spec, paths, input_names(paths), [file_fingerprint(p) for p in paths])


class _ShardEvalViews(torch.utils.data.IterableDataset):
    """What the loader workers run: each takes every W-th of the rank's input shards and yields, shard after shard,
    the evaluation views of its samples in batches, with their keys; the last item of a shard says so."""

    def __init__(self, shards: list[tuple[int, str]], channels: int, pipeline, batch_size: int):
        self.shards, self.channels, self.pipeline, self.batch_size = shards, channels, pipeline, batch_size

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        mine = self.shards if info is None else self.shards[info.id :: info.num_workers]
        try:
            for number, path in mine:
                yield from self._shard(number, path)
        except MetaplError as err:
            yield {"error": f"{type(err).__name__}:{err}"}

    def _shard(self, number: int, path: str) -> Iterator[dict]:
        from metapl.parts.data.shards import ShardReader, decode_bytes

        reader = ShardReader(path, 0)
        keys: list[str] = []
        images: list[torch.Tensor] = []
        seen: set[str] = set()
        try:
            while (sample := reader.next()) is not None:
                name, data, _ = sample
                key = name.rsplit(".", 1)[0]
                if key in seen:  # the store finds a sample by (shard, key)
                    raise DataError(
                        f"shard {path}: the key {key!r} names two samples; give every sample of a shard its own key "
                        "(metapl shard does)"
                    )
                seen.add(key)
                keys.append(key)
                images.append(self.pipeline.evaluate(decode_bytes(data, self.channels, f"{name} in shard {path}")))
                if len(keys) == self.batch_size:
                    yield {"shard": number, "keys": keys, "x": torch.stack(images), "last": False}
                    keys, images = [], []
        finally:
            reader.close()
        yield {"shard": number, "keys": keys, "x": torch.stack(images) if images else None, "last": True}


@torch.no_grad()
def _label_shards(
    model: nn.Module,
    images: ImageFiles,
    inputs: _InputShards,
    todo: list[int],
    out_dir: Path,
    options: LabelOptions,
    widths: tuple[int, int],
    batch_size: int,
    device: torch.device,
    bar,
) -> None:
    """Label the input shards `todo`, writing each one's store file when its last sample is labeled."""
    from metapl.parts.data.streaming import _own_process_group, _raise

    if not todo:
        return
    top_k, num_classes = widths
    from metapl.parts.data.streaming import CHUNK

    step = max(1, min(batch_size, CHUNK))  # as eval_batches cuts a folder: small pieces keep the workers streaming
    dataset = _ShardEvalViews([(i, inputs.paths[i]) for i in todo], images.channels, images.pipeline, step)
    workers = min(images.workers, len(todo))
    outputs: Iterator[dict]
    if workers == 0:
        outputs = iter(dataset)
    else:
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_size=None,
            num_workers=workers,
            prefetch_factor=2,
            worker_init_fn=_own_process_group,
            generator=torch.Generator(),
        )
        outputs = iter(loader)
    pending: dict[int, list[tuple[list[str], torch.Tensor, torch.Tensor | None]]] = {}
    held: dict[int, tuple[list[str], list[torch.Tensor]]] = {}  # per input shard: decoded, not yet forwarded
    for out in outputs:
        if "error" in out:
            _raise(out["error"])
        parts = pending.setdefault(out["shard"], [])
        keys, pieces = held.setdefault(out["shard"], ([], []))
        if out["x"] is not None:
            keys += out["keys"]
            pieces.append(out["x"])
        # whole batches from each shard's first sample, as _regroup cuts the pool: the workers' small pieces joined
        while len(keys) >= batch_size or (out["last"] and keys):
            x = torch.cat(pieces)
            take = min(batch_size, len(keys))
            probs = torch.softmax(model(x[:take].to(device, non_blocking=True)).float(), dim=-1).cpu()
            bar.update(len(probs))
            biased = inject_bias(probs, options.bias or Bias(), keys[:take])
            parts.append((keys[:take], *compress(biased, top_k, options.precision)))
            del keys[:take]
            pieces[:] = [x[take:]] if keys else []
        if out["last"]:
            del pending[out["shard"]], held[out["shard"]]
            keys = [key for part_keys, _, _ in parts for key in part_keys]
            if parts:
                values = torch.cat([v for _, v, _ in parts])
                classes = None if parts[0][2] is None else torch.cat([c for _, _, c in parts if c is not None])
            else:  # a shard without samples: an empty store file says it was read
                width = top_k or num_classes
                values = torch.empty(0, width, dtype=PRECISIONS[options.precision])
                classes = None if top_k == 0 else torch.empty(0, top_k, dtype=torch.int16)
            save_keyed_shard(out_dir / keyed_name(out["shard"]), keys, values, classes)


def inject_bias(
    probs: torch.Tensor, bias: Bias | Sequence[tuple[int, int]], ids: Sequence[object] | None = None
) -> torch.Tensor:
    """`probs` with `bias` injected (pairs alone mean a half bias); `ids` (pool indices or shard keys, one per row)
    choose a shift's fraction of the images, so each image's fate does not depend on the batch it came in."""
    if not isinstance(bias, Bias):
        bias = Bias(tuple(bias))
    if not bias:
        return probs
    assigned = probs.argmax(-1)
    out = probs.clone()
    if bias.kind == "half":
        for a, b in bias.pairs:
            rows = assigned == a
            moved = out[rows, a] / 2
            out[rows, a] -= moved
            out[rows, b] += moved
        return out
    chosen = shifted_rows(len(probs), bias.fraction, ids)
    logits = torch.log(probs.double().clamp_min(1e-30))
    for a, b in bias.pairs:
        rows = (assigned == a) & chosen
        logits[rows, b] = logits[rows, a] + bias.delta
    changed = torch.zeros(len(probs), dtype=torch.bool)
    for a, _ in bias.pairs:
        changed |= (assigned == a) & chosen
    out[changed] = torch.softmax(logits[changed], dim=-1).to(probs.dtype)
    return out


def shifted_rows(count: int, fraction: float, ids: Sequence[object] | None) -> torch.Tensor:
    """Which of `count` rows a shift of `fraction` touches: those whose id hashes (crc32 of its text) below the
    fraction; all rows at fraction 1. Needs `ids` below 1."""
    if fraction >= 1:
        return torch.ones(count, dtype=torch.bool)
    if ids is None or len(ids) != count:
        raise ValueError("a shift of a fraction of the images needs one id (pool index or shard key) per row")
    return torch.tensor([zlib.crc32(str(i).encode()) < fraction * 2**32 for i in ids], dtype=torch.bool)


def compress(probs: torch.Tensor, top_k: int, precision: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(values, classes): all K probabilities (classes None) or the k largest with their classes."""
    dtype = PRECISIONS[precision]
    if top_k == 0:
        return probs.to(dtype), None
    values, classes = probs.topk(top_k, dim=-1)
    index_dtype = torch.int16 if probs.shape[1] <= torch.iinfo(torch.int16).max else torch.int32
    return values.to(dtype), classes.to(index_dtype)


def _top_k(requested: int | None, num_classes: int) -> int:
    if requested is None:
        return 0 if num_classes <= AUTO_FULL_CLASSES else AUTO_TOP_K
    return 0 if requested >= num_classes else requested


def _check_options(options: LabelOptions) -> None:
    if options.top_k is not None and options.top_k < 0:
        raise ConfigError(f"--top-k {options.top_k} is impossible; use 0 (all classes) or a positive k")
    if options.shard_size < 1:
        raise ConfigError(f"--shard-size {options.shard_size} is impossible; use 1 or more images per shard")
    if options.precision not in PRECISIONS:
        raise ConfigError(f"--precision {options.precision!r} is not allowed; use one of: {', '.join(PRECISIONS)}")
    if options.batch_size is not None and options.batch_size < 1:
        raise ConfigError(f"--batch-size {options.batch_size} is impossible; use 1 or more")


def _check_bias(bias: Bias, num_classes: int) -> None:
    for a, b in bias.pairs:
        if not (0 <= a < num_classes and 0 <= b < num_classes) or a == b:
            raise ConfigError(
                f"--bias {a}:{b} is impossible; use two different classes in [0, {num_classes - 1}] per pair"
            )


# ---------------------------------------------------------------------------------------------- the directory
def _read_json(path: Path) -> dict:
    import json

    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"cannot read {path} ({err}); delete the directory and run metapl label again") from None


def _same_plan(out_dir: Path, plan: dict) -> bool:
    return (out_dir / PLAN).is_file() and _read_json(out_dir / PLAN) == _jsonable(plan)


def _jsonable(plan: dict) -> dict:
    import json

    return json.loads(json.dumps(plan))


def _start(out_dir: Path, plan: dict) -> None:
    """Rank 0 writes the plan into a new directory, or checks that an existing one was started with the same plan;
    the other ranks wait for it."""
    if distributed.is_main():
        _check_or_write_plan(out_dir, plan)
    if distributed.world_size() > 1:
        torch.distributed.barrier()  # the other ranks write their shards into the directory rank 0 checked


def _check_or_write_plan(out_dir: Path, plan: dict) -> None:
    if (out_dir / PLAN).is_file():
        old = _read_json(out_dir / PLAN)
        new = _jsonable(plan)
        if old != new:
            key = next(k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k))
            raise ConfigError(
                f"{out_dir} holds labels made with {key}={old.get(key)!r}, not {new.get(key)!r}; "
                f"pass a new --out, or delete {out_dir} to label again"
            )
        # a killed run may have left the temporary file of a store file it was writing (core/atomic.py)
        remove_leftovers(out_dir, lambda name: name == MANIFEST or name.endswith(".safetensors"))
        return
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ConfigError(f"{out_dir} exists and is not a label directory (no {PLAN}); pass a new or empty --out")
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(plan, out_dir / PLAN)


__all__ = ["Bias", "LabelOptions", "compress", "inject_bias", "label_pool", "parse_bias", "shifted_rows"]
