"""Molecule families and the four task rules (split manifests: ``test_splits.py``)."""

from __future__ import annotations

import re

import pytest
from rdkit import Chem

from benchmark.dataset.molecules import (
    analyse_structure,
    branched_alkane,
    di,
    mixed,
    mono,
    secondary,
)
from benchmark.dataset.tasks import (
    TASK_NAMES,
    TaskRuleError,
    all_molecules,
    check_task_rule,
    define_task,
)
from deepset_moe.fragments import FRAGMENT_INDEX, FRAGMENT_NAMES, fragments_from_smiles

PRESET_NAMES = ("smoke", "standard")
ACID, OH, NH2, CHO = "carboxylic_acid", "hydroxyl", "primary_amine", "aldehyde"
GROUP_CORE = {ACID: "C", OH: "O", NH2: "N", CHO: "C"}
ALKYL = {FRAGMENT_INDEX[n] for n in ("CH3", "CH2", "CH", "C")}
X_ON_CH = Chem.MolFromSmarts(
    "[CX4H1]-[$([OX2H1]),$([NX3H2]),$([CX3](=O)[OX2H1]),$([CX3H1]=O)]"
)


def group_counts(smiles: str) -> dict[str, int]:
    """Functional groups of a molecule, counted on the fragment labels (core atom per group)."""
    mol, labels = fragments_from_smiles(smiles)
    counts = {}
    for group, element in GROUP_CORE.items():
        n = sum(
            1
            for a in mol.GetAtoms()
            if a.GetSymbol() == element and labels[a.GetIdx()] == FRAGMENT_INDEX[group]
        )
        if n:
            counts[group] = n
    return counts


def alkyl_carbons(smiles: str) -> int:
    """Carbons labelled CH3/CH2/CH/C: n of X-(CH2)n-Y."""
    mol, labels = fragments_from_smiles(smiles)
    return sum(1 for a in mol.GetAtoms() if a.GetAtomicNum() == 6 and labels[a.GetIdx()] in ALKYL)


def fragment_set(smiles: str) -> set[str]:
    return {FRAGMENT_NAMES[i] for i in fragments_from_smiles(smiles)[1]}


def is_branched(smiles: str) -> bool:
    mol = Chem.MolFromSmiles(smiles)
    return any(
        sum(n.GetAtomicNum() == 6 for n in a.GetNeighbors()) >= 3
        for a in mol.GetAtoms()
        if a.GetAtomicNum() == 6
    )


# --- molecule families ---------------------------------------------------------------------


def test_builders_follow_the_chain_length_convention():
    assert mono(OH, 3).smiles == "CCCO"
    assert mono(ACID, 3).smiles == "CCCC(=O)O"  # the acid carbon is not counted in n
    assert mono(CHO, 1).smiles == "CC=O"
    assert mono(NH2, 1).smiles == "CN"
    assert di(OH, 4).smiles == "OCCCCO"
    assert di(ACID, 2).smiles == "O=C(O)CCC(=O)O"
    assert mixed(CHO, NH2, 3).smiles == "NCCCC=O"
    assert mixed(CHO, NH2, 3).molecule_id == mixed(NH2, CHO, 3).molecule_id == "nh2-c3-cho"
    assert secondary(OH, 1, 2).smiles == Chem.CanonSmiles("CC(O)CC")
    assert secondary(ACID, 1, 1).smiles == Chem.CanonSmiles("CC(C)C(=O)O")
    assert branched_alkane("22dm-propane").smiles == "CC(C)(C)C"
    for spec in (mono(ACID, 3), di(CHO, 5), mixed(OH, ACID, 4), secondary(NH2, 2, 3)):
        assert spec.chain_length == alkyl_carbons(spec.smiles)
    assert mono(ACID, 3).chain_length == 3
    assert secondary(NH2, 2, 3).chain_length == 6


@pytest.mark.parametrize(
    "build",
    [
        lambda: di(OH, 1),  # geminal diol
        lambda: mixed(OH, NH2, 1),  # hemiaminal
        lambda: di(NH2, 1),  # aminal
        lambda: di(CHO, 1),  # malondialdehyde
        lambda: mono(OH, 0),
        lambda: mono("thiol", 2),
        lambda: mixed(OH, OH, 3),
        lambda: secondary(OH, 3, 1),
        lambda: branched_alkane("cyclohexane"),
    ],
)
def test_builders_reject_odd_or_unknown_molecules(build):
    with pytest.raises(ValueError, match=r"must be >=|unknown|different|1 <= a <= b"):
        build()


@pytest.mark.parametrize(
    ("smiles", "family"),
    [
        ("CCC(C)O", "secondary"),
        ("CC(C)C(=O)O", "secondary"),
        ("CCCCO", "mono"),
        ("OCCCO", "di"),
        ("NCCC=O", "mixed"),
        ("CC(C)CC", "branched_alkane"),
        ("CCCC", None),  # linear alkane: no family
        ("CC(C)CCO", None),  # X terminal on a branched chain
        ("CC(C)(C)O", None),  # X on a quaternary carbon
        ("OCO", None),  # geminal diol
        ("OCC(O)CO", None),  # three groups
        ("CCO.CCO", None),  # two molecules
    ],
)
def test_structure_classifier(smiles, family):
    assert analyse_structure(smiles).family == family


@pytest.mark.parametrize("preset", PRESET_NAMES)
def test_all_molecules_are_unique_canonical_and_safe(preset):
    molecules = all_molecules(preset)
    smiles = [m.smiles for m in molecules]
    ids = [m.molecule_id for m in molecules]
    assert len(set(smiles)) == len(smiles)
    assert len(set(ids)) == len(ids)
    for m in molecules:
        assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", m.molecule_id), m.molecule_id
        assert Chem.CanonSmiles(m.smiles) == m.smiles
        assert group_counts(m.smiles) == {g: m.groups.count(g) for g in set(m.groups)}
        assert m.chain_length == alkyl_carbons(m.smiles)
    task_smiles = {
        s.smiles
        for name in TASK_NAMES
        for s in define_task(name, preset).id_molecules + define_task(name, preset).ood_molecules
    }
    assert task_smiles == set(smiles)


def test_standard_and_smoke_sizes():
    standard = all_molecules("standard")
    assert 110 <= len(standard) <= 150
    assert max(m.n_atoms for m in standard) <= 40
    assert max(Chem.MolFromSmiles(m.smiles).GetNumAtoms() - _hetero(m.smiles)
               for m in standard) <= 12  # at most 12 carbons
    smoke = all_molecules("smoke")
    assert 10 <= len(smoke) <= 14
    # the one exception to "small" is the elongation OOD molecule (n >= 8 needs >= 27 atoms)
    big = [m for m in smoke if m.n_atoms > 14]
    assert [m.molecule_id for m in big] == ["oh-c8"]
    assert set(FRAGMENT_NAMES) - {"C"} <= set().union(*(fragment_set(m.smiles) for m in smoke))


def _hetero(smiles: str) -> int:
    return sum(a.GetAtomicNum() != 6 for a in Chem.MolFromSmiles(smiles).GetAtoms())


def test_no_chemically_odd_molecules():
    odd = {
        "two heteroatom groups on one carbon": "[CX4]([O,N])[O,N]",
        "1,3-dicarbonyl": "O=C[CX4]C=O",
        "aldehyde hydrate": "[CX4]([OH])[OH]",
    }
    for m in all_molecules("standard"):
        mol = Chem.MolFromSmiles(m.smiles)
        for what, smarts in odd.items():
            assert not mol.HasSubstructMatch(Chem.MolFromSmarts(smarts)), (m.molecule_id, what)


# --- task rules ----------------------------------------------------------------------------


@pytest.mark.parametrize("preset", PRESET_NAMES)
@pytest.mark.parametrize("name", TASK_NAMES)
def test_task_common_rules(name, preset):
    task = define_task(name, preset)
    assert task.name == name and task.preset == preset and task.rule
    assert task.id_molecules and task.ood_molecules
    id_smiles = {m.smiles for m in task.id_molecules}
    assert not id_smiles & {m.smiles for m in task.ood_molecules}
    seen = set().union(*(fragment_set(s) for s in id_smiles))
    for m in task.ood_molecules:
        assert fragment_set(m.smiles) <= seen, m.molecule_id


@pytest.mark.parametrize("preset", PRESET_NAMES)
def test_duplication_rule(preset):
    task = define_task("duplication", preset)
    seen_once = set()
    for m in task.id_molecules:
        counts = group_counts(m.smiles)
        assert list(counts.values()) == [1] and not is_branched(m.smiles)
        seen_once |= set(counts)
    for m in task.ood_molecules:
        counts = group_counts(m.smiles)
        assert len(counts) == 1 and list(counts.values()) == [2] and not is_branched(m.smiles)
        assert set(counts) <= seen_once


@pytest.mark.parametrize("preset", PRESET_NAMES)
def test_combination_rule(preset):
    task = define_task("combination", preset)
    id_groups = {}
    for m in task.id_molecules:
        counts = group_counts(m.smiles)
        assert len(counts) == 1 and not is_branched(m.smiles)
        id_groups.setdefault(next(iter(counts)), set()).update(counts.values())
    for group in {m.groups[0] for m in task.ood_molecules}:
        assert id_groups[group] == {1, 2}  # X-(CH2)n-H and X-(CH2)n-X for every X used
    for m in task.ood_molecules:
        counts = group_counts(m.smiles)
        assert len(counts) == 2 and set(counts.values()) == {1}
        assert set(counts) <= set(id_groups)


@pytest.mark.parametrize("preset", PRESET_NAMES)
def test_elongation_rule(preset):
    task = define_task("elongation", preset)
    for m in task.id_molecules:
        assert alkyl_carbons(m.smiles) <= 5 and sum(group_counts(m.smiles).values()) == 1
    for m in task.ood_molecules:
        assert alkyl_carbons(m.smiles) >= 8 and sum(group_counts(m.smiles).values()) == 1
        assert not is_branched(m.smiles)
    assert {m.groups for m in task.ood_molecules} <= {m.groups for m in task.id_molecules}


@pytest.mark.parametrize("preset", PRESET_NAMES)
def test_substitution_rule(preset):
    task = define_task("substitution", preset)
    alkanes = 0
    for m in task.id_molecules:
        mol = Chem.MolFromSmiles(m.smiles)
        assert not mol.HasSubstructMatch(X_ON_CH), m.molecule_id
        if not group_counts(m.smiles):
            alkanes += 1
            assert is_branched(m.smiles)
    assert alkanes >= 1
    for m in task.ood_molecules:
        mol = Chem.MolFromSmiles(m.smiles)
        assert len(mol.GetSubstructMatches(X_ON_CH)) == 1, m.molecule_id
        assert sum(group_counts(m.smiles).values()) == 1
    butan_2_ol = Chem.CanonSmiles("CCC(C)O")
    assert butan_2_ol in {m.smiles for m in define_task("substitution", "standard").ood_molecules}


def test_check_task_rule_rejects_violations():
    with pytest.raises(TaskRuleError, match=r"OOD molecule CCCO .*breaks the rule"):
        check_task_rule("duplication", ["CCO"], ["OCCO", "CCCO"])
    with pytest.raises(TaskRuleError, match=r"never seen in training.*primary_amine"):
        check_task_rule("duplication", ["CCO"], ["NCCN"])
    with pytest.raises(TaskRuleError, match="ID molecule CCCCCCO"):
        check_task_rule("elongation", ["CCCCCCO"], ["CCCCCCCCO"])
    with pytest.raises(TaskRuleError, match=r"never seen.*CH"):
        check_task_rule("substitution", ["CCCO"], ["CC(C)O"])
    with pytest.raises(TaskRuleError, match="unknown task"):
        check_task_rule("rotation", ["CCO"], ["OCCO"])
    with pytest.raises(ValueError, match="unknown preset"):
        define_task("duplication", "huge")
