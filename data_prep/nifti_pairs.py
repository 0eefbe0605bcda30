"""``python -m data_prep.nifti_pairs``: the ``ctpipe prep nifti-pairs`` job (see ``ctpipe prep nifti-pairs --help``)."""

import sys

from ctpipe.cli import main

if __name__ == "__main__":
    main(["prep", "nifti-pairs", *sys.argv[1:]])
