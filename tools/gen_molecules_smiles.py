"""Generate rmdata/data/molecules_smiles.txt (kept out of the package on purpose).

Recipe: a hand-written base list of small neutral closed-shell molecules by chemical
class, plus single and double substitutions of H on carbon atoms of those molecules by a
small set of substituents; filtered (sanitisable, <= 7 heavy atoms from C N O S Cl,
neutral, no radicals, no unstable motifs), canonically de-duplicated, ETKDG-embeddable;
then a diverse subset of the generated ones chosen by RDKit's MaxMinPicker on Morgan
fingerprints (fixed seed). Base molecules are all kept.

Usage: python gen_smiles.py OUT.txt [N_GENERATED]
"""

from __future__ import annotations

import sys

from rdkit import Chem, DataStructs, RDLogger
from rdkit.Chem import AllChem, rdFingerprintGenerator
from rdkit.SimDivFilters.rdSimDivPickers import MaxMinPicker

RDLogger.DisableLog("rdApp.*")

BASE = {
    "alkanes": "C CC CCC CCCC CC(C)C CCCCC CC(C)CC CC(C)(C)C CCCCCC CC(C)CCC CCC(C)CC CC(C)C(C)C "
               "CC(C)(C)CC CCCCCCC CC(C)CCCC CCC(CC)CC CC(C)(C)C(C)C",
    "alkenes": "C=C CC=C C=CC=C CC=CC C=C(C)C CCC=C C/C=C/C C/C=C\\C C=CC=CC C=CCC=C CC(C)=C(C)C "
               "C=CC(C)=C CCCCC=C",
    "alkynes": "C#C CC#C CC#CC CCC#C C#CC#C C=CC#C CC(C)C#C CCCC#C",
    "small_rings": "C1CC1 C1CCC1 C1CCCC1 C1CCCCC1 C1CCCCCC1 CC1CC1 C1=CC1 C1=CCC1 C1=CCCC1 C1=CCCCC1 "
                   "C1=CC=CC1 C1=CCC=CC1 C1CC2CC12 C1C2CC1C2 C1CC2CCC1C2 C1CC2CC1C2 CC1CCCC1 C=C1CC1 "
                   "C12CC1C2 C1CC11CC1",
    "aromatics": "c1ccccc1 Cc1ccccc1 Oc1ccccc1 Nc1ccccc1 Clc1ccccc1 Sc1ccccc1",
    "alcohols": "CO CCO CCCO CC(C)O CCCCO CC(C)(C)O OCCO CC(O)CO OCC(O)CO C=CCO C#CCO OC1CC1 "
                "OC1CCCC1 OC1CCCCC1 CC(O)CC(C)O",
    "ethers": "COC CCOC CCOCC COCOC C1CO1 CC1CO1 C1COC1 C1CCOC1 C1CCOCC1 C1COCCO1 C1COCO1 COC=C "
              "COCCOC C=COC=C",
    "carbonyls": "C=O CC=O CCC=O CC(C)=O CCC(C)=O O=CC=O CC(=O)C(C)=O O=C1CC1 O=C1CCC1 O=C1CCCC1 "
                 "O=C1CCCCC1 C=CC=O CC=CC=O C=C=O CC(=O)CC(C)=O O=CCC=O",
    "acids_esters": "OC=O CC(=O)O CCC(=O)O OC(=O)C(=O)O C=CC(=O)O COC=O CC(=O)OC CCOC(C)=O "
                    "COC(=O)OC O=C1CCO1 O=C1CCCO1 O=C1OCCO1 OC(=O)CC(=O)O CC(O)C(=O)O",
    "amines": "CN CCN CNC CN(C)C CCCN CC(C)N CCNCC NCCN C1CN1 C1CNC1 C1CCNC1 C1CCNCC1 C1CNCCN1 "
              "C1COCCN1 C1CSCCN1 NCCO CN1CCCC1 C=CCN",
    "amides": "NC=O CNC=O CC(N)=O CN(C)C=O CC(=O)NC NC(N)=O CNC(=O)NC O=C1CCN1 O=C1CCCN1 "
              "O=C1CCCCN1 NC(=O)C(N)=O CC(=O)N(C)C NC(=O)O COC(N)=O",
    "nitriles": "C#N CC#N CCC#N C=CC#N N#CC#N N#CCC#N COCC#N NCC#N OCC#N CC(C)C#N N#CC1CC1",
    "imines_other_n": "C=N CC=N CN=C CC(C)=N C1=NCC1 C1=NCCC1 C1=NCCCC1 CC=NC NC=N CN=CN NC(N)=N "
                      "CON CC=NO CC(C)=NO NN CNN CN(C)N N=C=O CN=C=O N#CO CC=NN",
    "heterocycles": "c1ccoc1 c1cc[nH]c1 c1ccsc1 c1cocn1 c1cnoc1 c1cscn1 c1cnsc1 c1c[nH]cn1 c1cn[nH]c1 "
                    "c1ccncc1 c1cncnc1 c1cnccn1 c1ccnnc1 c1ncncn1 c1nc[nH]n1 c1cn[nH]n1 c1nnn[nH]1 "
                    "c1nnco1 c1ncon1 c1nonc1 c1nncs1 c1ncsn1 Cc1ccco1 Cc1ccc[nH]1 Cc1cccs1 Cc1ccccn1 "
                    "Cc1cccnc1 Cc1ccncc1 O=c1cc[nH]cc1 O=c1cccc[nH]1 O=C1C=COC1 Cn1cccc1 Cc1ncco1 "
                    "Cc1cnco1 O=c1[nH]cc[nH]1 Oc1ccccn1 Nc1ccccn1 Clc1ccccn1 O=Cc1ccco1 "
                    "Clc1ccncc1",
    "sulfur": "S CS CCS CSC CCSC CSSC CS(C)=O CS(C)(=O)=O C1CS1 C1CSC1 C1CCSC1 C1CCSCC1 SCCS OCCS "
              "NCCS CC(S)C S=C=S CSC=C CC(N)=S NC(N)=S O=C=S CSC#N C1CSCS1 CCS(=O)CC",
    "chlorides": "CCl ClCCl ClC(Cl)Cl ClC(Cl)(Cl)Cl CCCl CC(C)Cl CC(C)(C)Cl ClCCCl C=CCl ClC=CCl "
                 "ClC(Cl)=C(Cl)Cl C=CCCl ClCC=O CC(=O)Cl ClC1CC1 ClC1CCCCC1 OCCCl ClCC#N ClCOC "
                 "NCCCl ClC=C(Cl)Cl CC(Cl)Cl ClCC(Cl)Cl ClC#N",
}

SUBSTITUENTS = ["C", "O", "N", "Cl", "S", "C#N", "C=O", "OC", "C=C", "C(=O)O", "C(N)=O"]
# Second-round substituents (applied to first-round products): alkyl branching only.
SUBSTITUENTS_2 = ["C"]

ALLOWED = {1, 6, 7, 8, 16, 17}
MAX_HEAVY = 7

# Unstable or implausible motifs rejected in *generated* molecules (the base list is curated).
BAD = [Chem.MolFromSmarts(s) for s in (
    "[CX4](-[OX2H1])-[O,N,S,Cl]",          # gem-diol, hemiacetal, hemiaminal, ...
    "[CX4](-[NX3;H1,H2;!$(NC=O)])-[N,O,S,Cl]",  # aminals
    "[OX2H1]-[CX3]=[CX3]",                 # enols
    "[OX2H1]-[CX3]=[NX2]",                 # imidic acids
    "[NX3;H1,H2;!$(NC=O)]-[CX3]=[CX3]",    # primary/secondary enamines
    "[SX2H1]-[CX3]=[CX3,NX2]",             # enethiols
    "[O,N,S,Cl]-[O,N,S,Cl]",               # heteroatom-heteroatom single bonds (non-aromatic)
    "[O,N,S,Cl]-C#[C,N]",                  # ynols, ynamines, haloalkynes, cyanates
    "[#6]=[#6]=[#6]",                      # allenes/cumulenes
    "[#6]=[#6]=[#7,#8,#16]",               # ketenes, ketenimines
    "[CX3;H1,H2]=S",                       # thioaldehydes
    "[CX3](=S)([#6])[#6]",                 # thioketones
    "C(=O)[Cl,S]",                         # acyl chlorides, thioacids
    "[Cl]-[CX3]=[#7,#8,#16]",              # acyl/imidoyl chlorides
    "[#7]=C=[#8,#16]",                     # isocyanates, isothiocyanates
    "[CX3]=[NX2;H1]",                      # N-H imines (hydrolyse)
    "[CX4](Cl)-[OX2,NX3,SX2]",             # alpha-chloro ethers/amines (alkylating)
    "C(=O)-C(=O)-C=O",
    "[r3]=[!r3]",                          # exocyclic double bonds on three-membered rings
    "[CX3](=O)[OX2H1].[CX3](=O)[OX2H1]",   # diacids beyond the base list
)]


def ok_composition(mol: Chem.Mol) -> bool:
    """Neutral, closed shell, heavy atoms <= 7 from C N O S Cl."""
    heavy = 0
    for atom in mol.GetAtoms():
        if atom.GetAtomicNum() not in ALLOWED or atom.GetFormalCharge() != 0 or atom.GetNumRadicalElectrons():
            return False
        heavy += atom.GetAtomicNum() != 1
    return heavy <= MAX_HEAVY


def embeds(smiles: str) -> bool:
    mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    params = AllChem.ETKDGv3()
    params.randomSeed = 0
    return AllChem.EmbedMolecule(mol, params) == 0


def substitute(mol: Chem.Mol, sub: str) -> set[str]:
    """All products of replacing one H on a carbon of ``mol`` by ``sub`` (attached through its first atom)."""
    out = set()
    sub_mol = Chem.MolFromSmiles(sub)
    for atom in mol.GetAtoms():
        if atom.GetAtomicNum() != 6 or atom.GetTotalNumHs() == 0:
            continue
        combo = Chem.RWMol(Chem.CombineMols(mol, sub_mol))
        combo.AddBond(atom.GetIdx(), mol.GetNumAtoms(), Chem.BondType.SINGLE)
        a = combo.GetAtomWithIdx(atom.GetIdx())
        a.SetNoImplicit(False)
        a.SetNumExplicitHs(max(0, a.GetNumExplicitHs() - 1))
        try:
            new = combo.GetMol()
            Chem.SanitizeMol(new)
        except Exception:  # noqa: BLE001 - invalid valence etc.: skip
            continue
        out.add(Chem.MolToSmiles(new))
    return out


def acceptable(smiles: str) -> bool:
    mol = Chem.MolFromSmiles(smiles)
    if mol is None or not ok_composition(mol):
        return False
    if any(mol.HasSubstructMatch(p) for p in BAD):
        return False
    ring_sizes = [len(r) for r in mol.GetRingInfo().AtomRings()]
    if any(n <= 4 for n in ring_sizes) and mol.HasSubstructMatch(UNSAT_SMALL_RING):
        return False
    for atom in mol.GetAtoms():
        # sp3 carbon with two or more heteroatom neighbours: allowed only as a polychloride or acetal
        if atom.GetAtomicNum() == 6 and atom.GetHybridization() == Chem.HybridizationType.SP3:
            het = [n.GetAtomicNum() for n in atom.GetNeighbors() if n.GetAtomicNum() in (7, 8, 16, 17)]
            if len(het) >= 2 and not (set(het) == {17} or (set(het) == {8} and len(het) == 2
                                                            and not mol.HasSubstructMatch(GEM_OH))):
                return False
    return True


UNSAT_SMALL_RING = Chem.MolFromSmarts("[r3,r4]=*")
GEM_OH = Chem.MolFromSmarts("[CX4][OX2H1]")


def main(out_path: str, n_generated: int) -> None:
    base = []
    for klass, block in BASE.items():
        for smi in block.split():
            mol = Chem.MolFromSmiles(smi)
            if mol is None:
                raise SystemExit(f"bad base SMILES {smi} ({klass})")
            if not ok_composition(mol):
                raise SystemExit(f"base SMILES outside the rules {smi} ({klass})")
            base.append(Chem.MolToSmiles(mol))
    base_unique = list(dict.fromkeys(base))
    dupes = len(base) - len(base_unique)
    for smi in base_unique:
        if not embeds(smi):
            raise SystemExit(f"base SMILES does not embed: {smi}")
    seen = set(base_unique)
    generated: set[str] = set()
    frontier = [Chem.MolFromSmiles(s) for s in base_unique]
    for subs in (SUBSTITUENTS, SUBSTITUENTS_2):
        new_frontier = []
        for mol in frontier:
            if subs is SUBSTITUENTS and any(len(r) <= 4 for r in mol.GetRingInfo().AtomRings()):
                continue  # do not decorate strained rings
            for sub in subs:
                for smi in substitute(mol, sub):
                    if smi in seen or smi in generated or not acceptable(smi):
                        continue
                    generated.add(smi)
                    new_frontier.append(Chem.MolFromSmiles(smi))
        frontier = new_frontier
    candidates = sorted(generated)
    fpgen = rdFingerprintGenerator.GetMorganGenerator(radius=2, fpSize=2048)
    fps = [fpgen.GetFingerprint(Chem.MolFromSmiles(s)) for s in candidates]
    picker = MaxMinPicker()
    picked: list[str] = []
    order = list(picker.LazyBitVectorPick(fps, len(fps), min(len(fps), 3 * n_generated), seed=42))
    for idx in order:
        if embeds(candidates[idx]):
            picked.append(candidates[idx])
        if len(picked) == n_generated:
            break
    header = [
        "# rmdata 'molecules' dataset: small neutral closed-shell molecules, <= 7 heavy atoms from C N O S Cl (+ H).",
        "# One canonical RDKit SMILES per line; line order defines source_id (mol-0000 = first molecule).",
        f"# Made with RDKit {Chem.rdBase.rdkitVersion} by a generator script kept outside the package:",
        f"# 1. {len(base_unique)} hand-written molecules by class: alkanes, alkenes, alkynes, small rings,",
        "#    aromatics, alcohols, ethers, aldehydes/ketones, acids/esters, amines, amides, nitriles, imines,",
        "#    heterocycles (furan, pyrrole, thiophene, azoles, oxazoles, pyridine, diazines, ...), sulfur compounds,",
        f"#    chlorides (molecules mol-0000 to mol-{len(base_unique) - 1:04d}, in that order);",
        f"# 2. {n_generated} molecules chosen by RDKit MaxMinPicker (seed 42, Morgan radius 2, 2048 bits) among the",
        f"#    {len(candidates)} products of replacing one H on a carbon of a class-1 molecule (3- and 4-rings not",
        "#    decorated) by " + " ".join(SUBSTITUENTS) + ", and optionally one more H by a methyl group,",
        "#    kept if sanitisable, neutral, closed-shell, <= 7 heavy atoms, free of unstable motifs (enols,",
        "#    hemiacetals, aminals, hetero-hetero single bonds, allenes, ketenes, acyl/imidoyl chlorides, isocyanates,",
        "#    N-H imines, thio-aldehydes/ketones, sp3 C with two heteroatoms unless acetal or polychloride),",
        "#    canonically unique and embeddable by ETKDGv3 (seed 0).",
        f"# Total: {len(base_unique) + len(picked)} molecules. Nothing is held out.",
    ]
    with open(out_path, "w") as fh:
        fh.write("\n".join(header) + "\n")
        for smi in base_unique + picked:
            fh.write(smi + "\n")
    print(f"base {len(base_unique)} (duplicates dropped {dupes}), generated pool {len(candidates)}, "
          f"picked {len(picked)}", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 250)
