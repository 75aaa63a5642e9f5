"""Run the suite on 8 simulated CPU devices so sharding is really exercised."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
