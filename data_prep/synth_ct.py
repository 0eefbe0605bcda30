"""``python -m data_prep.synth_ct``: the ``ctpipe prep synth-ct`` job (see ``ctpipe prep synth-ct --help``)."""

import sys

from ctpipe.cli import main

if __name__ == "__main__":
    main(["prep", "synth-ct", *sys.argv[1:]])
