"""``python -m data_prep.lodopab``: the ``ctpipe prep lodopab`` job (see ``ctpipe prep lodopab --help``)."""

import sys

from ctpipe.cli import main

if __name__ == "__main__":
    main(["prep", "lodopab", *sys.argv[1:]])
