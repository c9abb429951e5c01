"""Test-session setup: 8 fake CPU devices for the multi-device tests.

This must run before any JAX backend initialises, which is why it lives here.
"""

import jax

jax.config.update("jax_num_cpu_devices", 8)
