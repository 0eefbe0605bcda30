"""ctpipe: CT reconstruction training pipeline (learned FBP, X-ray -> CT, pix2pix phases)."""

__version__ = "0.1.0"
