"""What `metapl predict` reads: an image file, a folder of images, or a CSV of image paths or flattened inputs."""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

import numpy as np
import torch

from metapl.core.errors import ConfigError, DataError, first_line, shorten
from metapl.core.settings import check_path


def image_extensions() -> set[str]:
    """File suffixes (lower case, with the dot) of the formats Pillow can open."""
    from PIL import Image

    # registered_extensions() also lists save-only formats (PDF, ...); keep those Pillow can read.
    return {ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}


def load_image(path: Path, input_shape: tuple[int, ...], invert: bool = False, pipeline=None) -> torch.Tensor:
    """An image file as a (C, H, W) tensor in [0, 1] for a model of `input_shape`: grey or RGB, bilinear resize.

    A run trained on image files passes its `pipeline`, so that an image is cropped exactly as in evaluation.
    """
    from PIL import Image, ImageOps

    from metapl.parts.data.folders import decode, open_image

    if pipeline is not None:
        fix = "pass a PNG, JPEG or other image Pillow can open"
        image = pipeline.evaluate(decode(str(path), input_shape[0], fix)).float() / 255.0
        return 1.0 - image if invert else image
    channels, height, width = _image_shape(input_shape)
    try:
        with open_image(path) as opened:
            image = ImageOps.exif_transpose(opened)  # photos taken sideways carry their rotation in EXIF
            if "A" in image.getbands() or "transparency" in image.info:
                # Transparent pixels would turn black; drawings on a transparent canvas mean ink on white paper.
                rgba = image.convert("RGBA")
                image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
            image = image.convert("L" if channels == 1 else "RGB").resize((width, height), Image.Resampling.BILINEAR)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise DataError(
            f"cannot read image {path}: {first_line(err)}; pass a PNG, JPEG or other image Pillow can open"
        ) from None
    array = np.asarray(image, dtype=np.float32).reshape(height, width, channels) / 255.0
    tensor = torch.from_numpy(array).permute(2, 0, 1).contiguous()
    return 1.0 - tensor if invert else tensor


def _image_shape(input_shape: tuple[int, ...]) -> tuple[int, int, int]:
    size = math.prod(input_shape)
    if len(input_shape) != 3:
        raise DataError(
            f"the run's model takes inputs of shape {tuple(input_shape)}, not images; "
            f"pass a CSV of {size} numbers per row"
        )
    if input_shape[0] not in (1, 3):
        raise DataError(
            f"the run's model takes {input_shape[0]}-channel images, but image files give 1 (grey) "
            "or 3 (RGB) channels; "
            f"pass a CSV of {size} numbers per row"
        )
    return input_shape[0], input_shape[1], input_shape[2]


def load_inputs(
    source: Path, input_shape: tuple[int, ...], invert: bool = False, pipeline=None
) -> tuple[list[str], torch.Tensor]:
    """Names and a batch of inputs from an image file, a folder of images (searched recursively: a folder of class
    folders too; sorted by path) or a CSV. An image's name is its path: the folder as given, then its path in it."""
    source = Path(source)
    if not source.exists():
        raise DataError(f"no input at {source}; pass an image file, a folder of images or a CSV file")
    if source.is_dir():
        files = folder_images(source)
        if not files:
            raise DataError(
                f"no image files in {source} or its sub-folders; put PNG or JPEG files there, or pass a CSV file"
            )
        return [str(p) for p in files], torch.stack([load_image(p, input_shape, invert, pipeline) for p in files])
    if source.suffix.lower() == ".csv":
        return _load_csv(source, input_shape, invert, pipeline)
    return [str(source)], load_image(source, input_shape, invert, pipeline)[None]


def folder_images(folder: Path) -> list[Path]:
    """The image files under `folder`, in its sub-folders too, sorted by their path in it. Names starting with a
    dot (and everything in such folders) are editor, macOS or notebook metadata (._scan.png,
    .ipynb_checkpoints), never the user's images."""
    extensions = image_extensions()
    found = []
    for path in folder.rglob("*"):
        relative = path.relative_to(folder)
        if any(part.startswith(".") for part in relative.parts) or path.suffix.lower() not in extensions:
            continue
        if path.is_file():
            found.append((relative.parts, path))
    return [path for _, path in sorted(found)]


def csv_image_paths(path: Path) -> list[Path]:
    """The image files a predict CSV names (rows of one cell that is a path to a file), for the check that the
    output does not overwrite one; an unreadable CSV gives [] here and its error when it is loaded."""
    found = []
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            for row in csv.reader(handle):
                cells = [cell.strip() for cell in row]
                if len(cells) == 1 and cells[0] and _number(cells[0]) is None:
                    file = Path(cells[0]) if Path(cells[0]).is_absolute() else path.parent / cells[0]
                    if file.is_file():
                        found.append(file)
    except (OSError, UnicodeDecodeError, csv.Error, ValueError):
        return []
    return found


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _load_csv(path: Path, input_shape: tuple[int, ...], invert: bool, pipeline=None) -> tuple[list[str], torch.Tensor]:
    size = math.prod(input_shape)
    expected = f"write one image path or {size} numbers (the input of shape {tuple(input_shape)}, flattened) per row"
    names: list[str] = []
    inputs: list[torch.Tensor] = []
    images = 0  # rows naming an image file
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:  # -sig: drop the BOM spreadsheet programs write
            reader = csv.reader(handle)
            first = True
            for row in reader:
                cells = [cell.strip() for cell in row]
                if not any(cells):
                    continue
                line = reader.line_num
                numbers = [_number(cell) for cell in cells]
                if first and _is_header(cells, numbers, path.parent):
                    first = False
                    continue
                first = False
                where = f"row {line} of {path}"
                if len(cells) == 1 and numbers[0] is None:
                    image_path = Path(cells[0]) if Path(cells[0]).is_absolute() else path.parent / cells[0]
                    check_path(image_path, where)
                    if not image_path.is_file():
                        raise DataError(
                            f"{where}: no image file at {image_path}; {expected} (paths relative to the CSV)"
                        )
                    try:
                        inputs.append(load_image(image_path, input_shape, invert, pipeline))
                    except DataError as err:
                        raise DataError(f"{where}: {err}") from None
                    names.append(cells[0])
                    images += 1
                    continue
                bad = next((c for c, n in zip(cells, numbers) if n is None or not math.isfinite(n)), None)
                if bad is not None:
                    raise DataError(f"{where}: {bad!r} is not a finite number; {expected}")
                if len(numbers) != size:
                    raise DataError(f"{where} has {len(numbers)} values where the model takes {size}; {expected}")
                inputs.append(torch.tensor(numbers, dtype=torch.float32).reshape(input_shape))
                names.append(f"{path.name}:{line}")
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        reason = f"{err.strerror}: {shorten(err.filename)}" if isinstance(err, OSError) and err.filename else err
        raise DataError(f"cannot read CSV {path}: {reason}; pass a UTF-8 CSV file") from None
    if not inputs:
        raise DataError(f"{path} has no rows; {expected}")
    if invert and images == 0:
        raise ConfigError(f"--invert maps image pixels, but every row of {path} holds numbers; drop --invert")
    return names, torch.stack(inputs)


def _is_header(cells: list[str], numbers: list[float | None], folder: Path) -> bool:
    if all(n is not None for n in numbers):
        return False
    if len(cells) > 1:
        return True  # a row of values with a word in it can only be column names
    # One word: a header ("path") unless it names an image file.
    return not os.path.isfile(Path(cells[0]) if Path(cells[0]).is_absolute() else folder / cells[0])


def preprocessing(input_shape: tuple[int, ...], pipeline=None, model=None) -> dict[str, str]:
    """What metapl does to an image file before the model sees it (load_image), in words a reader can repeat
    with PIL and NumPy: the metadata of an ONNX export and docs/cli.md#preprocessing. Strings only."""
    shape = tuple(int(n) for n in input_shape)
    out = {"input_dtype": "float32"}
    mean, std = getattr(model, "mean", None), getattr(model, "std", None)  # models.normalize.Standardized
    if mean is not None and std is not None:
        out["normalization"] = "inside the model: (x - mean) / std per channel; feed x in [0, 1], not standardised"
        out["mean"] = json.dumps([round(float(v), 6) for v in mean.flatten()])
        out["std"] = json.dumps([round(float(v), 6) for v in std.flatten()])
    else:
        out["normalization"] = "none: the model takes x as it is"
    if len(shape) != 3 or shape[0] not in (1, 3):
        out["input_layout"] = f"(N, {', '.join(map(str, shape))}): the data set's own values, not an image"
        return out
    channels, height, width = shape
    mode = "L" if channels == 1 else "RGB"
    out.update(
        input_layout=f"NCHW: (N, {channels}, {height}, {width})",
        input_range="[0, 1]: 8-bit pixel value / 255",
        color=f"{'grey' if channels == 1 else 'RGB'}: PIL Image.convert('{mode}')",
        orientation="PIL ImageOps.exif_transpose (photos taken sideways carry their rotation in EXIF)",
    )
    if pipeline is None:
        out["alpha"] = "images with transparency are composited onto opaque white (PIL alpha_composite) first"
        out["resize"] = (
            f"the whole image, no crop, aspect ratio not kept: PIL Image.resize(({width}, {height}), "
            "Image.Resampling.BILINEAR) of the 8-bit image"
        )
    elif pipeline.style == "large":
        size = pipeline.size
        out["alpha"] = "dropped: PIL Image.convert"
        out["resize"] = (
            f"central square crop of side max(1, int({size} / {size + 32} * min(H, W))) at top (H - side + 1) // 2, "
            f"left (W - side + 1) // 2, resized to {size}x{size} by antialiased bicubic interpolation "
            "(torchvision.transforms.functional.resized_crop, BICUBIC, antialias=True) of the 8-bit image, "
            "rounded back to 8 bits"
        )
    else:
        size = pipeline.size
        out["alpha"] = "dropped: PIL Image.convert"
        out["resize"] = (
            f"the whole image, no crop, aspect ratio not kept, to {size}x{size} by antialiased bilinear "
            "interpolation of the 8-bit values (torch.nn.functional.interpolate(mode='bilinear', antialias=True, "
            f"align_corners=False): a triangle filter whose support grows with the shrink factor), rounded to "
            f"integers in [0, 255]; an image of {size}x{size} is not resized"
        )
    return out
