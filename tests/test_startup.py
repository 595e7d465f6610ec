"""What a command that reads no dataset imports: not torchvision (about a second at start)."""

from __future__ import annotations

import subprocess
import sys


def test_report_and_export_modules_do_not_import_torchvision() -> None:
    code = (
        "import sys\n"
        "import study.cli, study.analysis.collect, study.analysis.report, study.data\n"
        "print('torchvision' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stderr


def test_reading_a_dataset_still_uses_torchvision_readers(tmp_path) -> None:
    # The deferred import is taken where files are read: an image folder loads through
    # torchvision's ImageFolder (made on first use), hidden folders still skipped.
    from PIL import Image

    from study.data.sources import SourceRequest, load_imagefolder

    for split in ("train", "test"):
        for label, colour in (("a", 0), ("b", 255)):
            folder = tmp_path / split / label
            folder.mkdir(parents=True)
            Image.new("RGB", (8, 8), (colour, colour, colour)).save(folder / "x.png")
        (tmp_path / split / ".ipynb_checkpoints").mkdir()
    data = load_imagefolder(SourceRequest(root=tmp_path, download=False, image_size=8))
    assert data.classes == ("a", "b")
    assert data.train_x.shape == (2, 3, 8, 8)
    assert sorted(data.train_y.tolist()) == [0, 1]
    assert "torchvision" in sys.modules
