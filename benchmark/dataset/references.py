"""Reference methods that label GMD-26 frames, all as ASE calculators (eV, Å, eV/Å).

========  ===========================================  ==========================================
name      method                                       use
========  ===========================================  ==========================================
``xtb``   GFN2-xTB through tblite (default)            the shipped dataset
``mmff``  MMFF94 through RDKit (needs the molecule)    smoke builds, tests, cheap MD sampling
``dft``   PySCF, B3LYP/def2-SVP by default (optional)  relabelling subsets
========  ===========================================  ==========================================

Any other ``ase.calculators.calculator.Calculator`` object (ORCA, CP2K, ...) is accepted as is.
"""

from __future__ import annotations

import numpy as np
from ase import units
from ase.calculators.calculator import Calculator, all_changes
from rdkit import Chem
from rdkit.Chem import AllChem

REFERENCE_NAMES: tuple[str, ...] = ("xtb", "mmff", "dft")

XTB_DEFAULTS: dict[str, object] = {
    "method": "GFN2-xTB",
    "accuracy": 0.1,
    "electronic_temperature": 300.0,
    "max_iterations": 250,
    "verbosity": 0,
}
"""Fixed tblite settings, so that every label of a dataset is computed the same way.
``accuracy=0.1`` (10x tighter SCF than tblite's default) makes a label reproducible from a cold
start to ~1e-4 eV/Å whatever the SCF guess (MD steps restart from the previous step's
wavefunction), for ~10% more time."""

DFT_DEFAULTS: dict[str, object] = {"xc": "B3LYP", "basis": "def2-SVP"}


class MMFFCalculator(Calculator):
    """MMFF94 energy and forces from RDKit for one molecule topology.

    Args:
        molecule: RDKit molecule with explicit hydrogens; the ``Atoms`` given to the calculator
            must list the same elements in the same (RDKit) order.
        variant: ``"MMFF94"`` or ``"MMFF94s"``.

    RDKit works in kcal/mol and kcal/mol/Å; results are converted to eV and eV/Å.
    """

    implemented_properties = ("energy", "forces")

    def __init__(self, molecule: Chem.Mol, variant: str = "MMFF94", **kwargs) -> None:
        super().__init__(**kwargs)
        self.molecule = Chem.Mol(molecule)
        if self.molecule.GetNumConformers() == 0:
            AllChem.Compute2DCoords(self.molecule)  # a force field needs a conformer to exist
        properties = AllChem.MMFFGetMoleculeProperties(self.molecule, mmffVariant=variant)
        if properties is None:
            raise ValueError(
                f"MMFF94 has no parameters for {Chem.MolToSmiles(Chem.RemoveHs(molecule))}"
            )
        self._force_field = AllChem.MMFFGetMoleculeForceField(self.molecule, properties)
        self._numbers = np.array([a.GetAtomicNum() for a in self.molecule.GetAtoms()])

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        if not np.array_equal(self.atoms.numbers, self._numbers):
            raise ValueError(
                "MMFFCalculator: atoms do not match the RDKit molecule "
                f"({self.atoms.get_chemical_formula()} vs {len(self._numbers)} RDKit atoms)"
            )
        coordinates = self.atoms.positions.ravel().tolist()
        energy = self._force_field.CalcEnergy(coordinates) * units.kcal / units.mol
        gradient = np.asarray(self._force_field.CalcGrad(coordinates)).reshape(-1, 3)
        self.results["energy"] = energy
        self.results["forces"] = -gradient * units.kcal / units.mol


class PySCFCalculator(Calculator):
    """Kohn-Sham DFT energy and analytic forces from PySCF (restricted, closed shell by default).

    Args:
        xc: exchange-correlation functional (PySCF name).
        basis: basis set (PySCF name).
        charge: total charge.
        spin: 2S (number of unpaired electrons); 0 uses RKS, otherwise UKS.
        conv_tol: SCF energy convergence, Hartree.
        max_cycle: SCF iteration limit.

    PySCF works in Hartree and Bohr; results are converted with ``ase.units``. A calculation
    whose SCF does not converge raises ``RuntimeError`` rather than returning its energy.
    """

    implemented_properties = ("energy", "forces")

    def __init__(
        self,
        xc: str = "B3LYP",
        basis: str = "def2-SVP",
        charge: int = 0,
        spin: int = 0,
        conv_tol: float = 1e-9,
        max_cycle: int = 100,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        try:
            import pyscf  # noqa: F401
        except ImportError as error:
            raise ImportError(
                "the 'dft' reference needs PySCF: pip install 'deepset-moe[dft]' (or pyscf)"
            ) from error
        self.settings = {
            "xc": xc,
            "basis": basis,
            "charge": charge,
            "spin": spin,
            "conv_tol": conv_tol,
            "max_cycle": max_cycle,
        }

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes) -> None:
        from pyscf import dft, gto

        super().calculate(atoms, properties, system_changes)
        s = self.settings
        molecule = gto.M(
            atom=[(symbol, tuple(xyz)) for symbol, xyz in
                  zip(self.atoms.get_chemical_symbols(), self.atoms.positions)],
            basis=s["basis"],
            charge=s["charge"],
            spin=s["spin"],
            unit="Angstrom",
            verbose=0,
        )
        solver = dft.RKS(molecule) if s["spin"] == 0 else dft.UKS(molecule)
        solver.xc = s["xc"]
        solver.conv_tol = s["conv_tol"]
        solver.max_cycle = s["max_cycle"]
        energy = solver.kernel()
        if not solver.converged:
            raise RuntimeError(
                f"PySCF SCF did not converge for {self.atoms.get_chemical_formula()}"
            )
        gradient = solver.nuc_grad_method().kernel()  # Hartree/Bohr, [n, 3]
        self.results["energy"] = float(energy) * units.Hartree
        self.results["forces"] = -np.asarray(gradient) * units.Hartree / units.Bohr


def xtb_calculator(**options) -> Calculator:
    """GFN2-xTB through tblite with :data:`XTB_DEFAULTS` (options override them). Energy in eV."""
    from tblite.ase import TBLite

    return TBLite(**{**XTB_DEFAULTS, **options})


def get_calculator(
    reference: str | Calculator, molecule: Chem.Mol | None = None, **options
) -> Calculator:
    """An ASE calculator for a reference name (see module table) or a calculator object.

    Args:
        reference: ``"xtb"``, ``"mmff"``, ``"dft"`` or an ASE ``Calculator`` (returned as is).
        molecule: RDKit molecule with explicit hydrogens; required by ``"mmff"`` only.
        **options: passed to the calculator (e.g. ``basis="def2-TZVP"`` for ``"dft"``).
    """
    if isinstance(reference, Calculator):
        if options:
            raise ValueError("options cannot be applied to a calculator object")
        return reference
    if reference == "xtb":
        return xtb_calculator(**options)
    if reference == "mmff":
        if molecule is None:
            raise ValueError("the 'mmff' reference needs the RDKit molecule (molecule=...)")
        return MMFFCalculator(molecule, **options)
    if reference == "dft":
        return PySCFCalculator(**{**DFT_DEFAULTS, **options})
    raise ValueError(
        f"unknown reference {reference!r}: use one of {REFERENCE_NAMES} or an ASE Calculator"
    )


def reference_name(reference: str | Calculator) -> str:
    """The name stored with every frame: the reference string, or the calculator's class name."""
    if isinstance(reference, Calculator):
        return type(reference).__name__
    if reference not in REFERENCE_NAMES:
        raise ValueError(f"unknown reference {reference!r}: use one of {REFERENCE_NAMES}")
    return reference
