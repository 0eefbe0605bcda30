"""``python -m data_prep.drr``: the ``ctpipe prep drr`` job (see ``ctpipe prep drr --help``)."""

import sys

from ctpipe.cli import main

if __name__ == "__main__":
    main(["prep", "drr", *sys.argv[1:]])
