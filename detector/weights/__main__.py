"""python -m detector.weights list | download NAME | verify FILE [--name NAME] | convert IN OUT --preset P [--half]

list: the catalogue of published checkpoints (detection models, and the ImageNet classifiers whose trunks
``detector.train --backbone-weights`` starts from); download: fetch one into the cache, verify its SHA-256 and
record all of it beside the file; verify: check a file against the catalogue, found by the file's
SHA-256 or name (or --name); convert: a torchvision .pth into our safetensors (loads
never unpickle anything after that), which names its model: predict, eval and the service need no preset.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from detector.weights.catalogue import cache_dir, claimed_entries, download, load_catalogue, sha256_of, verify


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m detector.weights", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="the published checkpoints")
    d = sub.add_parser("download", help="download one into the cache and verify it")
    d.add_argument("name")
    d.add_argument("--dir", type=Path, help=f"cache folder (default {cache_dir()})")
    v = sub.add_parser("verify", help="check a file's SHA-256 against the catalogue")
    v.add_argument("file", type=Path)
    v.add_argument("--name", help="catalogue entry (default: those the file's SHA-256 or name claims)")
    c = sub.add_parser("convert", help="a torchvision or torch checkpoint -> safetensors")
    c.add_argument("src", type=Path)
    c.add_argument("dst", type=Path)
    c.add_argument("--preset", required=True)
    c.add_argument("--half", action="store_true",
                   help="store floating tensors as float16: half the file, loaded back into float32")
    args = p.parse_args(argv)
    catalogue = load_catalogue()
    try:
        if args.command == "list":
            for e in catalogue.values():
                known = f"sha256 {e.sha256 or e.sha256_prefix + '...'}" if e.sha256 or e.sha256_prefix else f"md5 {e.md5_prefix}..."
                print(f"{e.name:28} {_what(e)}\n{'':28} {e.url}\n{'':28} {known}; {e.license}")
        elif args.command == "download":
            if args.name not in catalogue:
                raise ValueError(f"no catalogue entry {args.name!r}; see `python -m detector.weights list`")
            print(download(catalogue[args.name], args.dir))
        elif args.command == "verify":
            for entry in _entries_for(catalogue, args.file, args.name):
                print(f"{args.file}: OK ({verify(args.file, entry)}, {entry.name})")
        else:
            _convert(args.src, args.dst, args.preset, half=args.half)
            print(f"{args.src} -> {args.dst}")
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a file that cannot be read or written
        print(f"error: {e.filename}: {e.strerror or e}", file=sys.stderr)
        return 2
    return 0


def _what(entry) -> str:
    """A detection model's preset and COCO AP, or an ImageNet trunk's arch and accuracy (as published)."""
    if entry.trunk is not None:
        acc = ", ".join(f"{k} {v}" for k, v in entry.imagenet_1k.items())
        return f"trunk  {entry.trunk:22} ImageNet-1K: {acc} (--backbone-weights {entry.name})"
    ap = ", ".join(f"{k} {v}" for k, v in entry.coco_val2017.items())
    return f"preset {entry.preset:22} COCO val2017: {ap}"


def _entries_for(catalogue, path: Path, name: str | None) -> list:
    if name is not None:
        if name not in catalogue:
            raise ValueError(f"no catalogue entry {name!r}")
        return [catalogue[name]]
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    claimed = claimed_entries(path, sha256_of(path), catalogue)
    if not claimed:
        raise ValueError(f"{path}: neither its SHA-256 nor its name is in the catalogue; name an entry with --name")
    return claimed


def _convert(src: Path, dst: Path, preset: str, half: bool = False) -> None:
    """``src`` into safetensors with what rebuilds its model (``detector.weights.model_metadata``): the
    preset's classes for a file that does not name its own, the file's own for one that does."""
    from detector.modeling.rcnn import build_model
    from detector.weights.loading import frozen_bn_eps_of, load_weights, save_weights
    from detector.weights.model_metadata import MODEL_KEY, model_config_for, model_metadata

    preset, cfg = model_config_for(preset, src)
    model = build_model(cfg)
    load_weights(model, src)
    save_weights(model, dst, metadata={MODEL_KEY: model_metadata(preset, cfg), "source": src.name,
                                       "frozen_bn_eps": frozen_bn_eps_of(model)}, half=half)


if __name__ == "__main__":
    sys.exit(main())
