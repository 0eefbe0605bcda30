"""``python -m data_prep.synth_lodopab``: the ``ctpipe prep synth-lodopab`` job (see ``ctpipe prep synth-lodopab --help``)."""

import sys

from ctpipe.cli import main

if __name__ == "__main__":
    main(["prep", "synth-lodopab", *sys.argv[1:]])
