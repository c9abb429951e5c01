"""A regular (not editable) install holds the whole package: `import jaxunlearn` works from it alone."""

import os
import subprocess
import sys
from pathlib import Path

REPOSITORY = Path(__file__).parent.parent


def test_regular_install_imports_with_version(tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                    "--target", str(target), str(REPOSITORY)], check=True, capture_output=True, timeout=600,
                   cwd=tmp_path)
    probe = ("import jaxunlearn as ju, jaxunlearn.models.vit; "
             "print(ju.__version__, ju.__file__, len(ju.__all__), sorted(ju.models.MODELS))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300,
                            cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(target)})
    assert result.returncode == 0, result.stderr
    version, location, names, models = result.stdout.split(" ", 3)
    assert version == __import__("jaxunlearn").__version__
    assert Path(location).is_relative_to(target)  # the installed copy, not the source tree
    assert int(names) > 30 and "vit_small" in models
    assert (target / "jaxunlearn" / "models" / "vit.py").is_file()
    assert not (target / "tests").exists()
