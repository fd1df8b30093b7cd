"""Seeded Langevin NVT dynamics in ASE, shared by data generation and MD stability tests."""

from __future__ import annotations

import numpy as np
from ase import Atoms, units
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import Stationary, ZeroRotation, thermalize_momenta


def seeded_langevin(
    atoms: Atoms,
    *,
    temperature_K: float,
    timestep_fs: float,
    friction_per_fs: float,
    rng: np.random.Generator,
    zero_rotation: bool = False,
) -> Langevin:
    """Maxwell-Boltzmann momenta at ``temperature_K`` (K) drawn from ``rng``, net momentum
    (and, with ``zero_rotation``, angular momentum) removed, and a Langevin integrator with
    time step ``timestep_fs`` (fs) and friction ``friction_per_fs`` (1/fs) using the same
    ``rng``: the same generator state gives the same trajectory."""
    thermalize_momenta(atoms, temperature_K, rng=rng)
    Stationary(atoms)
    if zero_rotation:
        ZeroRotation(atoms)
    return Langevin(
        atoms,
        timestep=timestep_fs * units.fs,
        temperature_K=temperature_K,
        friction=friction_per_fs / units.fs,
        fixcm=False,
        rng=rng,
    )
