"""A wheel installed outside the checkout finds the shipped recipes, device profiles and demo checkpoint
(vla_compress/resources.py), writes what the profiler measures to the user folder, never into
site-packages, and carries every file of the package. About 10 s here: build, venv, install, 6 CLI runs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from vla_compress import resources

ROOT = Path(__file__).resolve().parents[1]
SHIPPED_LINKS = {"profiles": "profiles", "hardware": "hardware",
                 "checkpoints/reference-small-chunk": "checkpoints/reference-small-chunk"}


def _run(cmd: list, cwd: Path, env: dict, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} exited {r.returncode}:\n{r.stdout}\n{r.stderr}")
    return r


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel, built from a copy of the sources: setuptools writes build/ and *.egg-info beside the sources
    (a shared checkout), and a stale build/lib would leak deleted modules into the wheel."""
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    skip = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(ROOT / "vla_compress", src / "vla_compress", symlinks=True, ignore=skip)
    for rel in ("profiles", "hardware", "checkpoints/reference-small-chunk"):
        shutil.copytree(ROOT / rel, src / rel, ignore=shutil.ignore_patterns("local-host.yaml", "calibration"))
    # what the profiler writes in a checkout must not ship
    (src / "hardware" / "local-host.yaml").write_text("measured: here\n")
    (src / "hardware" / "calibration").mkdir()
    (src / "hardware" / "calibration" / "x86-desktop-cpu.yaml").write_text("measured: here\n")
    dist = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
          "-w", dist, src], cwd=src, env=os.environ.copy())
    (whl,) = dist.glob("vla_compress-*.whl")
    return whl


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> tuple[Path, dict, Path]:
    """A venv that sees the system site-packages (torch & co.) but has vla_compress from the wheel.
    Why the editable install does not shadow it: its finder is appended to sys.meta_path, after the
    path finder, which finds the wheel's copy first in the venv's site-packages (checked below)."""
    tmp = tmp_path_factory.mktemp("venv")
    env_dir = tmp / "env"
    _run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", env_dir], cwd=tmp,
         env=os.environ.copy())
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VLA_COMPRESS_HARDWARE_DIR", "VIRTUAL_ENV")}
    env.update(XDG_CACHE_HOME=str(tmp / "cache"), COLUMNS="250", PATH=f"{env_dir / 'bin'}{os.pathsep}{env['PATH']}")
    # pip from the system site-packages, run by the venv's python, installs into the venv (and never
    # uninstalls the editable install outside it: pip leaves distributions outside the environment alone)
    _run([env_dir / "bin" / "python", "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--force-reinstall",
          "--disable-pip-version-check", wheel], cwd=tmp, env=env)
    work = tmp / "elsewhere"  # a cwd outside the checkout
    work.mkdir()
    return env_dir, env, work


def _py(venv, code: str) -> str:
    env_dir, env, work = venv
    return _run([env_dir / "bin" / "python", "-c", code], cwd=work, env=env).stdout.strip()


def test_checkout_finds_its_own_folders_and_the_links_point_at_them():
    assert resources.in_checkout()
    for name in ("profiles", "hardware", "checkpoints"):
        assert resources.shipped(name) == ROOT / name
    for link, target in SHIPPED_LINKS.items():  # what the wheel packages is what the checkout has
        assert (ROOT / "vla_compress" / "_shipped" / link).resolve() == (ROOT / target).resolve()
    assert resources.search_path("hardware") == [ROOT / "hardware"]
    assert resources.writable(ROOT / "hardware", "hardware") == ROOT / "hardware"


def test_wheel_carries_every_package_file_and_no_host_measurements(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    tracked = subprocess.run(["git", "ls-files", "vla_compress"], cwd=ROOT, capture_output=True, text=True)
    files = ([ROOT / f for f in tracked.stdout.splitlines()] if tracked.returncode == 0 and tracked.stdout else
             [p for p in (ROOT / "vla_compress").rglob("*") if "__pycache__" not in p.parts])
    expected = {p.relative_to(ROOT).as_posix() for p in files
                if p.is_file() and p.suffix != ".pyc" and "_shipped" not in p.parts}
    assert not expected - names, f"the wheel lacks {sorted(expected - names)} (package-data in pyproject.toml?)"
    shipped = {n for n in names if n.startswith("vla_compress/_shipped/")}
    want = {f"vla_compress/_shipped/{d}/{p.name}" for d in ("profiles", "hardware") for p in (ROOT / d).glob("*.yaml")
            if p.name != "local-host.yaml"}
    want |= {f"vla_compress/_shipped/checkpoints/reference-small-chunk/{p.name}"
             for p in (ROOT / "checkpoints" / "reference-small-chunk").iterdir()}
    assert shipped == want


def test_installed_wheel_lists_the_shipped_recipes_and_hardware(venv):
    env_dir, env, work = venv
    where = _py(venv, "import vla_compress, vla_compress.resources as r; print(vla_compress.__file__, r.in_checkout())")
    assert where.startswith(str(env_dir)) and where.endswith("False"), where
    recipes = _run(["vla-compress", "recipes"], cwd=work, env=env).stdout
    assert "cpu-onnx-int8" in recipes and "demo-cpu-onnx-int8" in recipes and "jetson-orin-nano-gguf-q4km" in recipes
    hw = _run(["vla-compress", "hardware", "list"], cwd=work, env=env).stdout
    assert "x86-desktop-cpu" in hw and "jetson-orin-nano-8gb" in hw and "local-host" not in hw
    demo = _py(venv, "from vla_compress.cli.pipeline_cmd import DEMO_CHECKPOINT as d; print(d)")
    assert demo.startswith(str(env_dir))
    assert (Path(demo) / "model.safetensors").stat().st_size == \
        (ROOT / "checkpoints" / "reference-small-chunk" / "model.safetensors").stat().st_size


def test_installed_wheel_writes_measurements_to_the_user_folder(venv):
    env_dir, env, work = venv
    user = Path(env["XDG_CACHE_HOME"]) / "vla-compress" / "hardware"
    code = ("from vla_compress.hardware import hardware_dir, load_hardware, save_calibration\n"
            "p = load_hardware('x86-desktop-cpu')\n"
            "print(save_calibration(p, {'eta_memory.default': 0.5}, 'test'))\n"
            "q = load_hardware('x86-desktop-cpu')\n"
            "print(q.efficiency().memory(), q.calibration_path, hardware_dir())")
    saved, loaded = _py(venv, code).splitlines()
    assert saved == str(user / "calibration" / "x86-desktop-cpu.yaml")
    assert loaded.split() == ["0.5", saved, str(user)]
    site = Path(_py(venv, "import vla_compress; print(vla_compress.__file__)")).parent
    assert not (site / "_shipped" / "hardware" / "calibration").exists()
    # a profile in the user folder extends the shipped set
    text = (ROOT / "hardware" / "l4.yaml").read_text().replace("name: l4\n", "name: my-board\n", 1)
    (user / "my-board.yaml").write_text(text)
    hw = _run(["vla-compress", "hardware", "list"], cwd=work, env=env).stdout
    assert "my-board" in hw and "x86-desktop-cpu" in hw


def test_demo_without_its_checkpoint_is_a_one_line_error(venv):
    env_dir, env, work = venv
    site = Path(_py(venv, "import vla_compress; print(vla_compress.__file__)")).parent
    shutil.rmtree(site / "_shipped" / "checkpoints")  # a wheel built without it (last test: mutates the venv)
    r = _run(["vla-compress", "demo", "--out", work / "demo"], cwd=work, env=env, check=False)
    assert r.returncode == 2 and "demo checkpoint is not installed" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
