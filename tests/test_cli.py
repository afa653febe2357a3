import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(*args):
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_data_errors_are_one_line_with_exit_1(tmp_path):
    # Asking for more poisons than the class holds is only known once the data are loaded.
    p = _run("scripts/poison.py", "data.subset_per_class=5", "attack.rate=1.0", "attack.rate_of=dataset",
             "attack.name=htba", f"output_dir={tmp_path}")
    assert p.returncode == 1, p.stderr
    assert "Traceback" not in p.stderr
    lines = [line for line in p.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "eligible" in lines[0]


def test_missing_image_folder_names_the_folder(tmp_path):
    p = _run("scripts/poison.py", "data.name=imagefolder", f"data.root={tmp_path}", "attack.name=htba",
             f"output_dir={tmp_path / 'out'}")
    assert p.returncode in (1, 2) and "Traceback" not in p.stderr
    assert str(tmp_path) in p.stderr


def test_installed_command_works_from_any_directory(tmp_path):
    """`sslguard detect --help` from outside the checkout: configs ship with the package."""
    import shutil

    cmds = [[sys.executable, "-m", "sslguard.cli"]]
    exe = shutil.which("sslguard", path=str(Path(sys.executable).parent))
    if exe:  # the [project.scripts] entry point of an installed package
        cmds.append([exe])
    for cmd in cmds:
        p = subprocess.run([*cmd, "detect", "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stderr
        assert "quickstart" in p.stdout and "cluster.k" in p.stdout
    p = subprocess.run([*cmds[0], "detect", "--config", "nope"], cwd=tmp_path, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 2 and "shipped detect configs" in p.stderr and "Traceback" not in p.stderr
    p = subprocess.run([*cmds[0], "frobnicate"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "commands: detect, train, poison, benchmark" in p.stderr
