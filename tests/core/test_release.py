"""The release users install: the sdist and the wheel built from it (offline, as `python -m build --no-isolation`)
carry the right metadata, the npe2 manifest, the shipped models and the samples, and the installed wheel is a
valid napari plugin whose manifest name is its distribution name."""

from __future__ import annotations

import email
import os
import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

import napari_unet
from napari_unet._widgets.launch import PLUGIN

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPTS_DIR = Path(sys.executable).parent
DISTRIBUTION = "napari-unet-loop"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> dict[str, Path]:
    """{"sdist": ..., "wheel": ...}: the sdist, then the wheel built from the sdist (so the sdist is complete)."""
    if not (REPO_ROOT / "pyproject.toml").exists():
        pytest.skip("not a source checkout")
    out = tmp_path_factory.mktemp("dist")
    result = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(REPO_ROOT)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (sdist,), (wheel,) = list(out.glob("*.tar.gz")), list(out.glob("*.whl"))
    return {"sdist": sdist, "wheel": wheel}


def test_wheel_metadata_names_the_distribution_its_version_and_requirements(dist):
    with zipfile.ZipFile(dist["wheel"]) as wheel:
        (metadata_name,) = [name for name in wheel.namelist() if name.endswith(".dist-info/METADATA")]
        metadata = email.message_from_bytes(wheel.read(metadata_name))
        entry_points = wheel.read(metadata_name.replace("METADATA", "entry_points.txt")).decode()
    assert metadata["Name"] == DISTRIBUTION == PLUGIN
    assert metadata["Version"] == napari_unet.__version__
    requirements = metadata.get_all("Requires-Dist")
    for needed in ("keras", "tensorflow-cpu", "scikit-image", "napari", "bioimageio-core"):
        assert any(requirement.startswith(needed) for requirement in requirements), (needed, requirements)
    assert {"gui", "bioimageio"} <= set(metadata.get_all("Provides-Extra"))
    assert "Framework :: napari" in metadata.get_all("Classifier")
    assert metadata.get_all("Project-URL"), "the napari hub shows [project.urls]"
    assert f"{DISTRIBUTION} = napari_unet:napari.yaml" in entry_points  # npe2: manifest name = distribution name
    assert "napari-unet = napari_unet.cli:main" in entry_points


def test_wheel_carries_the_manifest_the_shipped_models_and_the_samples(dist):
    with zipfile.ZipFile(dist["wheel"]) as wheel:
        names = set(wheel.namelist())
        manifest = wheel.read("napari_unet/napari.yaml").decode()
    assert manifest == (REPO_ROOT / "napari.yaml").read_text()  # the real file, not the editable install's symlink
    shipped = sorted(path.name for path in (REPO_ROOT / "napari_unet" / "models").iterdir()
                     if path.suffix in (".keras", ".json", ".onnx"))  # .onnx: the quick-start twins
    assert shipped and {f"napari_unet/models/{name}" for name in shipped} <= names
    samples = sorted(path.name for path in (REPO_ROOT / "sample_data").iterdir() if path.is_file())
    assert samples and {f"napari_unet/sample_data/{name}" for name in samples} <= names
    assert not [name for name in names if name.startswith(("tests/", ".venv", "benchmarks/"))]


def test_sdist_carries_what_the_wheel_is_built_from(dist):
    with tarfile.open(dist["sdist"]) as sdist:
        names = {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}
    assert {"pyproject.toml", "README.md", "napari.yaml", "napari_unet/models/membranes.keras",
            "sample_data/em_membranes.tif", "mkdocs.yml", "docs/index.md", "docs/screenshot.png"} <= names


def test_readme_is_a_front_page_whose_links_resolve():
    """README.md: the two quick-start commands word for word, at most 300 lines, and every relative link
    (the documentation pages under docs/, the screenshot) names a file that exists. The pages' own links are
    checked by `mkdocs build --strict` in scripts/test.sh."""
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 300
    for command in ("bash scripts/quickstart.sh   # install everything, then open napari with the plugin docked",
                    "bash scripts/test.sh         # install everything, then run the whole test suite headless"):
        assert command in readme, command
    targets = re.findall(r"\]\((?!https?://)([^)#\s]+)(?:#[^)]*)?\)", readme)
    assert "docs/screenshot.png" in targets and "docs/models.md" in targets
    assert not [target for target in targets if not (REPO_ROOT / target).is_file()]


def test_installed_wheel_is_a_valid_napari_plugin(dist, tmp_path):
    """Installed alone (no dependencies: they are this venv's) into a folder put first on PYTHONPATH."""
    target = tmp_path / "site"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
                              "--target", str(target), str(dist["wheel"])], capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr
    env = {**os.environ, "PYTHONPATH": str(target)}
    where = subprocess.run([sys.executable, "-c", "import napari_unet, importlib.metadata as m; "
                            f"print(napari_unet.__file__); print(m.distribution('{DISTRIBUTION}').locate_file(''))"],
                           capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)  # not the checkout
    assert where.returncode == 0, where.stderr
    assert all(line.startswith(str(target)) for line in where.stdout.split()), where.stdout  # the wheel, not the checkout
    validate = subprocess.run([str(SCRIPTS_DIR / "npe2"), "validate", DISTRIBUTION, "--imports"],
                              capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert validate.returncode == 0, validate.stdout + validate.stderr
    assert "valid" in validate.stdout
