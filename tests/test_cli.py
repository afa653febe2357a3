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
