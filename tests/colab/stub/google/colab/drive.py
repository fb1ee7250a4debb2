"""`drive.mount(mountpoint)`: makes `mountpoint` a link to the folder in COLAB_STUB_DRIVE, with
the `MyDrive` folder Colab shows, so files written "to Drive" land in the test's folder."""

import os
from pathlib import Path


def mount(mountpoint: str, force_remount: bool = False) -> None:
    target = Path(os.environ["COLAB_STUB_DRIVE"])
    (target / "MyDrive").mkdir(parents=True, exist_ok=True)
    point = Path(mountpoint)
    if point.is_symlink() and point.resolve() != target.resolve():
        point.unlink()
    if not point.exists():
        point.parent.mkdir(parents=True, exist_ok=True)
        point.symlink_to(target, target_is_directory=True)
    print(f"Mounted at {mountpoint}")
