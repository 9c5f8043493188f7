"""Checks the paper's reported numbers transcribed under results/paper/.

Every JSON file there must follow the small schema described in results/paper/README.md,
and every number must really appear in the paper text, inside the region of the table
(or, for Fig. 3(a), the prose paragraph) it was transcribed from. For Tables 1-4 the
tab-separated table in the paper text is also parsed, and each JSON row is compared with
its own cell (model row x optimizer / eval-set column), so a mistyped or misplaced number
fails, and so does a table cell that was left out.

The paper text lives in the shared folder beside the checkout (../shared/paper/); the
paper-text checks skip only when that folder is absent.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "results" / "paper"
PAPER_DIR = REPO.parent / "shared" / "paper"
PAPER_NAME = "000_5d97b38d8ea9e3a9.txt"
PAPER_TITLE = "Random Sharpness-Aware Minimization"

EXPECTED_FILES = {
    "table1_cifar10.json": "1",
    "table2_cifar100.json": "2",
    "table3_imagenet_vit.json": "3",
    "table4_robustness.json": "4",
    "fig3a_gsam_comparison.json": "fig3a",
}

KNOWN_MODELS = {"resnet18", "resnet50", "wrn28_10", "vit_b16", "vit_s16"}
KNOWN_OPTIMIZERS = {"sgd", "sgd_momentum", "rmsprop", "adamw", "lpf_sgd", "sam", "rsam", "gsam", "rgsam"}
KNOWN_EVAL_SETS = {"imagenet", "real", "v2", "r", "c"}
KNOWN_DATASETS = {"cifar10", "cifar100", "imagenet"}

REQUIRED_TOP = {
    "table": str,
    "caption": str,
    "dataset": str,
    "metric": str,
    "source": str,
    "decimals": int,
    "models": list,
    "optimizers": list,
    "labels": dict,
    "notes": list,
    "rows": list,
}
REQUIRED_ROW = {"model", "optimizer", "mean", "std"}
# Extra per-row keys a table may carry, with their types.
OPTIONAL_ROW = {"eval_set": str, "resolution": int, "mixup": bool, "randaug": bool}
# Keys that, with model and optimizer, identify one cell of a table.
CELL_KEYS = ("model", "optimizer", "eval_set", "resolution", "mixup", "randaug")


def _json_files() -> list[Path]:
  return sorted(RESULTS.glob("*.json"))


def _load(path: Path) -> dict:
  with path.open(encoding="utf-8") as f:
    return json.load(f)


def _fmt(x: float, decimals: int) -> str:
  return f"{x:.{decimals}f}"


def _is_number(x) -> bool:
  return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


# --------------------------------------------------------------------------- paper text


@pytest.fixture(scope="module")
def paper_text() -> str:
  if not PAPER_DIR.is_dir():
    pytest.skip(f"shared paper folder absent: {PAPER_DIR} (paper-text checks need ../shared/paper beside the checkout)")
  path = PAPER_DIR / PAPER_NAME
  if not path.is_file():
    # Same folder, other file name: fall back to the text file that carries the title.
    candidates = [p for p in sorted(PAPER_DIR.glob("*.txt")) if PAPER_TITLE in p.read_text(encoding="utf-8", errors="replace")[:2000]]
    assert candidates, f"no paper text titled {PAPER_TITLE!r} in {PAPER_DIR}"
    path = candidates[0]
  text = path.read_text(encoding="utf-8")
  assert PAPER_TITLE in text[:2000], f"{path} does not look like the R-SAM paper"
  return text


def table_region(text: str, number: str) -> str:
  """The caption line 'Table N: ...' plus the tab-separated table block that follows it."""
  m = re.search(rf"^Table {re.escape(number)}:.*$", text, flags=re.M)
  assert m, f"caption 'Table {number}:' not found in the paper text"
  lines = text[m.end():].split("\n")[1:]
  block: list[str] = []
  skipped = 0
  for line in lines:
    if "\t" in line:
      block.append(line)
    elif block:
      break  # the first non-table line after the table ends it
    elif line.startswith(("Table ", "Figure ")) or skipped >= 3:
      break  # never run on into another table's block
    elif line.strip():
      skipped += 1  # a caption wrapped over more than one line
  assert block, f"no tab-separated table block after caption 'Table {number}:'"
  return m.group(0) + "\n" + "\n".join(block)


def section_region(text: str, start: str, end: str) -> str:
  i = text.find(start)
  assert i >= 0, f"heading {start!r} not found in the paper text"
  j = text.find(end, i + len(start))
  assert j >= 0, f"heading {end!r} not found after {start!r}"
  return text[i:j]


def region_for(text: str, table: str) -> str:
  if table == "fig3a":
    # Fig. 3(a) numbers are only given in the prose of Sec. 4.5.
    assert "(a) **Comparison with GSAM.**" in text, "Figure 3(a) caption not found"
    return section_region(text, "4.5 Compared with Algorithms in the Literature", "4.6 Sensitivity Analysis")
  return table_region(text, table)


def parse_table(region: str) -> tuple[list[str], list[list[str]]]:
  """Header cells and data rows of a tab-separated table; a blank first cell repeats the row label above."""
  lines = [l for l in region.split("\n")[1:] if "\t" in l]
  header = [c.strip() for c in lines[0].split("\t")]
  rows, last = [], ""
  for line in lines[1:]:
    cells = [c.strip() for c in line.split("\t")]
    cells += [""] * (len(header) - len(cells))
    if cells[0]:
      last = cells[0]
    else:
      cells[0] = last
    rows.append(cells)
  return header, rows


def paper_cells(text: str, table: str, labels: dict) -> dict[tuple, str]:
  """Map a cell key (same shape as _cell_key of a JSON row) to the cell's text in the paper."""
  inv = {v: k for k, v in labels.items()}
  header, rows = parse_table(table_region(text, table))
  cells: dict[tuple, str] = {}
  if table in ("1", "2"):
    assert header[0] == "Model"
    for r in rows:
      for col, cell in zip(header[1:], r[1:]):
        cells[(inv[r[0]], inv[col], None, None, None, None)] = cell
  elif table == "3":
    assert header[:4] == ["Model", "Resolution", "Mixup", "RandAug"]
    for r in rows:
      model, res, mixup, randaug = inv[r[0]], int(r[1]), bool(r[2]), bool(r[3])
      for col, cell in zip(header[4:], r[4:]):
        cells[(model, inv[col], None, res, mixup, randaug)] = cell
  elif table == "4":
    assert header[:2] == ["Model", "Training"]
    for r in rows:
      for col, cell in zip(header[2:], r[2:]):
        cells[(inv[r[0]], inv[r[1]], inv[col], None, None, None)] = cell
  else:
    raise AssertionError(f"no parser for table {table!r}")
  return cells


def _cell_key(row: dict) -> tuple:
  return tuple(row.get(k) for k in CELL_KEYS)


def _cell_text(row: dict, decimals: int) -> str:
  s = _fmt(row["mean"], decimals)
  if row["std"] is not None:
    s += "±" + _fmt(row["std"], decimals)
  return s


# --------------------------------------------------------------------------- schema


def test_expected_files_present():
  assert RESULTS.is_dir(), f"{RESULTS} missing"
  names = {p.name for p in _json_files()}
  missing = set(EXPECTED_FILES) - names
  assert not missing, f"missing transcription files: {sorted(missing)}"
  assert (RESULTS / "README.md").is_file(), "results/paper/README.md missing"
  readme = (RESULTS / "README.md").read_text(encoding="utf-8")
  for name in names:
    assert name in readme, f"README.md does not describe {name}"


@pytest.mark.parametrize("path", _json_files(), ids=lambda p: p.name)
def test_schema(path: Path):
  d = _load(path)
  for key, typ in REQUIRED_TOP.items():
    assert key in d, f"{path.name}: missing top-level key {key!r}"
    assert isinstance(d[key], typ), f"{path.name}: {key!r} should be {typ.__name__}"
  if path.name in EXPECTED_FILES:
    assert d["table"] == EXPECTED_FILES[path.name], f"{path.name}: table id {d['table']!r}"
  assert d["dataset"] in KNOWN_DATASETS, f"{path.name}: unknown dataset {d['dataset']!r}"
  assert d["source"].startswith("paper text"), f"{path.name}: source should say where in the paper text"
  assert 0 <= d["decimals"] <= 3
  assert all(isinstance(n, str) and n.strip() for n in d["notes"]), f"{path.name}: notes must be non-empty strings"
  assert set(d["models"]) <= KNOWN_MODELS, f"{path.name}: unknown models {set(d['models']) - KNOWN_MODELS}"
  assert set(d["optimizers"]) <= KNOWN_OPTIMIZERS, f"{path.name}: unknown optimizers {set(d['optimizers']) - KNOWN_OPTIMIZERS}"
  if "eval_sets" in d:
    assert set(d["eval_sets"]) <= KNOWN_EVAL_SETS, f"{path.name}: unknown eval sets"
  assert d["rows"], f"{path.name}: no rows"

  seen = set()
  for i, row in enumerate(d["rows"]):
    where = f"{path.name} row {i} {row}"
    assert REQUIRED_ROW <= set(row), f"{where}: missing {REQUIRED_ROW - set(row)}"
    extra = set(row) - REQUIRED_ROW
    assert extra <= set(OPTIONAL_ROW), f"{where}: unknown keys {extra - set(OPTIONAL_ROW)}"
    for k in extra:
      assert isinstance(row[k], OPTIONAL_ROW[k]), f"{where}: {k!r} should be {OPTIONAL_ROW[k].__name__}"
    assert row["model"] in d["models"], f"{where}: model not in the file's models list / known names"
    assert row["optimizer"] in d["optimizers"], f"{where}: optimizer not in the file's optimizers list / known names"
    if "eval_set" in row:
      assert row["eval_set"] in d.get("eval_sets", []), f"{where}: eval_set not in eval_sets"
    for k in ("mean", "std"):
      v = row[k]
      if v is None:
        continue
      assert _is_number(v), f"{where}: {k} must be a number or null"
      assert 0 <= v <= 100, f"{where}: {k} out of 0..100"
      assert round(v, d["decimals"]) == v, f"{where}: {k} has more than {d['decimals']} decimals"
    if row["mean"] is None:
      assert row["std"] is None, f"{where}: std without mean"
      assert any("null" in n for n in d["notes"]), f"{where}: null cell must be explained in notes"
    key = _cell_key(row)
    assert key not in seen, f"{where}: duplicate cell"
    seen.add(key)
  used = ({r["model"] for r in d["rows"]} | {r["optimizer"] for r in d["rows"]} | {r.get("eval_set") for r in d["rows"]}) - {None}
  assert used <= set(d["labels"]), f"{path.name}: labels missing for {used - set(d['labels'])}"


# --------------------------------------------------------------------------- against the paper


@pytest.mark.parametrize("path", _json_files(), ids=lambda p: p.name)
def test_numbers_occur_in_table_region(path: Path, paper_text: str):
  d = _load(path)
  region = region_for(paper_text, d["table"])
  dec = d["decimals"]
  for row in d["rows"]:
    if row["mean"] is None:
      continue
    mean = _fmt(row["mean"], dec)
    assert mean in region, f"{path.name}: {mean} ({row}) not found in the region of table {d['table']}"
    if row["std"] is not None:
      cell = _cell_text(row, dec)
      assert cell in region, f"{path.name}: {cell} ({row}) not found in the region of table {d['table']}"


@pytest.mark.parametrize("name", [n for n, t in EXPECTED_FILES.items() if t != "fig3a"])
def test_cells_match_paper_table(name: str, paper_text: str):
  """Each JSON row equals its own cell in the parsed paper table, and no table cell is left out."""
  d = _load(RESULTS / name)
  cells = paper_cells(paper_text, d["table"], d["labels"])
  rows = {_cell_key(r): r for r in d["rows"]}
  assert set(rows) == set(cells), (
      f"{name}: cells differ from the paper table; missing {sorted(map(str, set(cells) - set(rows)))}, "
      f"extra {sorted(map(str, set(rows) - set(cells)))}"
  )
  for key, cell in cells.items():
    row = rows[key]
    if row["mean"] is None:
      continue  # recorded as unreadable (explained in notes)
    assert _cell_text(row, d["decimals"]) == cell, f"{name}: {key} is {_cell_text(row, d['decimals'])!r}, paper says {cell!r}"


def test_table_regions_are_tight(paper_text: str):
  """A region holds only its own table: Table 2's cells must not be found in Table 1's region, etc."""
  r1, r2 = table_region(paper_text, "1"), table_region(paper_text, "2")
  assert "78.0±0.1" not in r1 and "95.4±0.1" not in r2
  r3, r4 = table_region(paper_text, "3"), table_region(paper_text, "4")
  assert "75.7" not in r4 and "61.3" not in r3
  # a deliberately mistyped cell is rejected
  assert "95.3±0.1" not in r1


def test_fig3a_numbers_match_prose(paper_text: str):
  d = _load(RESULTS / "fig3a_gsam_comparison.json")
  got = {(r["model"], r["optimizer"]): r["mean"] for r in d["rows"]}
  region = region_for(paper_text, "fig3a")
  m = re.search(r"accuracy of R-SAM and GSAM are ([\d.]+)% and ([\d.]+)%", region)
  assert m, "sentence with R-SAM and GSAM accuracies not found in Sec. 4.5"
  n = re.search(r"R-GSAM, we can observe that the accuracy increase from ([\d.]+)% to ([\d.]+)%", region)
  assert n, "sentence with the R-GSAM accuracy not found in Sec. 4.5"
  assert "ViT-B-16" in region
  assert got == {
      ("vit_b16", "rsam"): float(m.group(1)),
      ("vit_b16", "gsam"): float(m.group(2)),
      ("vit_b16", "rgsam"): float(n.group(2)),
  }
  assert float(n.group(1)) == float(m.group(2)), "prose: R-GSAM improves on GSAM's own number"


def test_wrn_name_discrepancy_recorded(paper_text: str):
  """Tables 1/2 say WRN-28-10 while parts of the prose say WRN-28-20; the files must record the table's name and say so."""
  assert "WRN-28-20" in paper_text
  for name in ("table1_cifar10.json", "table2_cifar100.json"):
    d = _load(RESULTS / name)
    assert "WRN-28-10" in table_region(paper_text, d["table"])
    assert d["labels"].get("wrn28_10") == "WRN-28-10"
    assert any("WRN-28-20" in n for n in d["notes"]), f"{name}: WRN-28-20 vs WRN-28-10 discrepancy not noted"
