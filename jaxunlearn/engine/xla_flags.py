"""The command line's default XLA flags, merged under the user's own XLA_FLAGS.

XLA reads XLA_FLAGS once, when JAX initialises its first backend, so the defaults must be in the environment
before any JAX computation or device query: `jaxunlearn.cli.main` applies them first thing. A flag the user
set in XLA_FLAGS is never overridden: defaults are added only for flags the user did not name, and before
the user's text, where XLA would let the user's win anyway (it applies flags in order, the last one winning:
"--xla_force_host_platform_device_count=2 --xla_force_host_platform_device_count=3" gives 3 devices).

DEFAULT_XLA_FLAGS is what scripts/xla_cpu_flags.py found; BENCHMARKS.md has the measurements.
"""

from collections.abc import MutableMapping, Sequence

DEFAULT_XLA_FLAGS: tuple[str, ...] = ()
"""None: in the sweeps so far no XLA:CPU flag made the CU and train steps faster beyond the machine's noise
(BENCHMARKS.md); a winner of the quiet-machine sweep that is numerically equal goes here."""


def flag_name(flag: str) -> str:
    """"--xla_cpu_use_onednn=true" → "xla_cpu_use_onednn"."""
    return flag.lstrip("-").split("=", 1)[0]


def merge_xla_flags(user_flags: str, defaults: Sequence[str]) -> str:
    """The XLA_FLAGS text to run with: each default whose flag `user_flags` does not name, then
    `user_flags` unchanged."""
    named = {flag_name(flag) for flag in user_flags.split()}
    added = [flag for flag in defaults if flag_name(flag) not in named]
    return " ".join([*added, user_flags]).strip()


def apply_default_xla_flags(environ: MutableMapping[str, str],
                            defaults: Sequence[str] = DEFAULT_XLA_FLAGS) -> None:
    """Merge `defaults` into environ["XLA_FLAGS"] (see `merge_xla_flags`); call before JAX starts a backend."""
    merged = merge_xla_flags(environ.get("XLA_FLAGS", ""), defaults)
    if merged:
        environ["XLA_FLAGS"] = merged
