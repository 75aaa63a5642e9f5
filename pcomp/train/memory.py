"""A compiled program's device memory against the device's capacity, known before it runs.

`jax.jit(step).lower(abstract args).compile()` gives XLA's own accounting of one device's buffers
(`compiled.memory_analysis()`): the arguments (this device's shard of the train state and batch),
the outputs, the temporaries (one allocation holding every intermediate buffer, packed by liveness:
activations kept for the backward pass, gradients, workspace) and the outputs that reuse donated
argument buffers (aliased). `MemoryUse.peak_bytes`, their sum with donated outputs counted once, is
what the device must hold for the step (XLA's own `peak_memory_in_bytes` leaves temporaries out on
CPU, so it is not used); `check_fits` compares it with `device_memory_bytes()` (the allocator's limit; None on
backends that do not report one, e.g. CPU) and raises a one-line ConfigError when it cannot fit.
"""

from __future__ import annotations

import dataclasses

import jax

from pcomp.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class MemoryUse:
    """Bytes per device of one compiled program (`compiled.memory_analysis()`)."""

    argument_bytes: int
    output_bytes: int
    temp_bytes: int
    alias_bytes: int  # outputs written into donated argument buffers (counted once, in argument_bytes)

    @classmethod
    def of(cls, compiled) -> MemoryUse | None:
        """The memory analysis of a `jax.stages.Compiled`, or None when the backend gives none."""
        stats = compiled.memory_analysis()
        if stats is None:
            return None
        return cls(int(stats.argument_size_in_bytes), int(stats.output_size_in_bytes),
                   int(stats.temp_size_in_bytes), int(stats.alias_size_in_bytes))

    @property
    def peak_bytes(self) -> int:
        """Arguments + outputs + temporaries, donated outputs counted once."""
        return self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes

    def describe(self) -> str:
        return (f"arguments {gib(self.argument_bytes)}, outputs {gib(self.output_bytes)} "
                f"({gib(self.alias_bytes)} of them in donated buffers), temporaries {gib(self.temp_bytes)}, "
                f"peak {gib(self.peak_bytes)} per device")


def gib(n: int) -> str:
    """Bytes in a short human unit (KiB, MiB or GiB)."""
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n} B"


# High-bandwidth memory per TPU chip, by generation: the one place pcomp states these figures. Nominal, as
# the Cloud TPU system-architecture pages give them: v4 32 GiB HBM2, v5e 16 GiB HBM2e, v5p 95 GiB HBM2e,
# v6e (Trillium) 32 GiB. The TPU compiler (libtpu 0.0.42.1) allows a program a little less, its "available
# HBM" (the runtime keeps the rest), and refuses to compile a program whose temporaries alone exceed it:
# v5e 15.75 GiB, v6e 31.25 GiB, v5p 95.74 GiB (read from its out-of-memory errors; results/tpu_fit/).
# `TPU_AVAILABLE_BYTES` is what `pcomp compile` checks a step's peak against; v4's is not measured here,
# so v4 is checked against its nominal HBM.
TPU_HBM_BYTES = {"v4": 32 << 30, "v5e": 16 << 30, "v5p": 95 << 30, "v6e": 32 << 30}
TPU_AVAILABLE_BYTES = {**TPU_HBM_BYTES, "v5e": int(15.75 * 2**30), "v6e": int(31.25 * 2**30),
                       "v5p": int(95.74 * 2**30)}


def device_memory_bytes(device: jax.Device | None = None) -> int | None:
    """The memory one device's allocator may use (`memory_stats()["bytes_limit"]`), or None where the
    backend does not say (CPU). Tests replace this function to simulate a small device."""
    device = device or jax.local_devices()[0]
    try:
        stats = device.memory_stats()
    except (NotImplementedError, RuntimeError):
        return None
    limit = (stats or {}).get("bytes_limit")
    return int(limit) if limit else None


class DoesNotFit(ConfigError):
    """A step that needs more device memory than the device has (`check_fits`, `out_of_memory`)."""


def out_of_memory(error: Exception, what: str) -> ConfigError | None:
    """The one-line ConfigError for a compile that XLA itself refused for want of device memory (the TPU
    compiler stops with RESOURCE_EXHAUSTED when the temporaries alone exceed the HBM), else None."""
    text = str(error)
    if "RESOURCE_EXHAUSTED" not in text:
        return None
    detail = text.split("RESOURCE_EXHAUSTED:", 1)[1].strip().splitlines()[0].rstrip(".")
    return DoesNotFit(f"{what} does not fit in device memory: the compiler reports: {detail}; {_remedy(what)}")


def _remedy(what: str) -> str:
    """What lowers a step's memory (remat=full only when `what` does not say it is on already)."""
    remat = "" if "model.remat=full" in what else "set model.remat=full "
    return (f"lower training.batch_size, raise training.grad_accum, {remat}or shard over more devices "
            "(mesh.fsdp)").replace(", or", " or")


def check_fits(use: MemoryUse | None, available: int | None, what: str) -> None:
    """ConfigError naming the needed and the available bytes when `use` does not fit in `available`
    (nothing to check when either is unknown)."""
    if use is None or available is None or use.peak_bytes <= available:
        return
    raise DoesNotFit(
        f"{what} needs {use.peak_bytes:,} bytes ({gib(use.peak_bytes)}) per device at its peak but the device has "
        f"{available:,} bytes ({gib(available)}) (arguments {use.argument_bytes:,}, outputs {use.output_bytes:,} "
        f"of which {use.alias_bytes:,} donated, temporaries {use.temp_bytes:,}); {_remedy(what)}"
    )
