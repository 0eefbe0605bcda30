"""``python -m data_prep.synth_phases``: the ``ctpipe prep synth-phases`` job (see ``ctpipe prep synth-phases --help``)."""

import sys

from ctpipe.cli import main

if __name__ == "__main__":
    main(["prep", "synth-phases", *sys.argv[1:]])
