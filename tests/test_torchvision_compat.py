import subprocess
import sys


def test_piq_and_torchvision_import_and_work():
    code = (
        "from ctpipe._torchvision_compat import import_piq, import_torchvision, workaround_applied\n"
        "import torch\n"
        "tv = import_torchvision(); piq = import_piq()\n"
        "x = torch.rand(1, 1, 170, 170)\n"
        "assert abs(float(piq.multi_scale_ssim(x, x, data_range=1.0)) - 1.0) < 1e-6\n"
        "m = tv.models.vgg16(weights=None)\n"
        "assert sum(p.numel() for p in m.parameters()) == 138357544\n"
        "print('applied' if workaround_applied() else 'not-needed')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() in ("applied", "not-needed")


def test_workaround_only_when_needed():
    """In a process where the plain import works, the shim must not register anything."""
    code = (
        "import torch\n"
        "try:\n"
        "    import torchvision\n"
        "    plain_ok = True\n"
        "except RuntimeError:\n"
        "    plain_ok = False\n"
        "print(plain_ok)\n"
    )
    plain = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    code2 = ("from ctpipe._torchvision_compat import import_torchvision, workaround_applied\n"
             "import_torchvision(); print(workaround_applied())\n")
    shim = subprocess.run([sys.executable, "-c", code2], capture_output=True, text=True, timeout=300)
    assert shim.returncode == 0, shim.stderr
    plain_ok = plain.stdout.strip() == "True"
    assert shim.stdout.strip() == str(not plain_ok)
