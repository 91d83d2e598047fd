# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The import rule between the layers of plugins/module_utils, checked on the source (ast), not by importing.

    _vhd  <-  _repo  <-  _ops  ->  _xapi        (an arrow points at what may be imported)

plus the leaves: ``_errors`` (the exception root, imported by anyone, importing nothing of ours) and
``_storage`` (imported by _vhd, _repo and _ops, importing only _errors). Modules import only _ops and
module_runner; module_runner sits on top of _ops and _xapi; the inventory plugin reads the pool
through _xapi and _ops.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

COLLECTION = pathlib.Path(__file__).resolve().parents[4]
PREFIX = 'ansible_collections.xapi.delta_backup.plugins'
MODULE_UTILS = PREFIX + '.module_utils'
MODULE_UTILS_LAYERS = ('_errors', '_storage', '_vhd', '_repo', '_xapi', '_ops', 'module_runner')

# What each layer may import besides itself.
ALLOWED = {
    '_errors': set(),
    '_storage': {'_errors'},
    '_vhd': {'_errors', '_storage'},
    '_xapi': {'_errors'},
    '_repo': {'_errors', '_storage', '_vhd'},
    '_ops': {'_errors', '_storage', '_vhd', '_repo', '_xapi'},
    'module_runner': {'_errors', '_xapi', '_ops'},
    'modules': {'_ops', 'module_runner'},
    'inventory': {'_errors', '_xapi', '_ops'},
    # Other controller-side plugins (filters...) use the operations like the inventory does.
    'other plugins': {'_errors', '_xapi', '_ops'},
}

# Imports allowed against the rule, each as (importer, layer pair) with a comment saying why.
# Empty: every import follows the rule; an entry no longer needed fails a test below.
KNOWN_EXCEPTIONS: set[tuple[str, str]] = set()


def layer_of_file(relative: pathlib.PurePath) -> str:
    """The layer of a file given relative to the collection root (plugins/...)."""
    parts = relative.parts
    if parts[1] == 'module_utils':
        name = parts[2][:-3] if parts[2].endswith('.py') else parts[2]
        if name not in MODULE_UTILS_LAYERS:
            raise AssertionError('%s belongs to no layer: place it in one and give the layer its place in ALLOWED' % relative)
        return name
    if parts[1] == 'modules':
        return 'modules'
    if parts[1] == 'inventory':
        return 'inventory'
    return 'other plugins'


def package_of_file(relative: pathlib.PurePath) -> list[str]:
    """The dotted package a file's relative imports start from."""
    dotted = PREFIX.split('.') + list(relative.parts[1:])
    dotted[-1] = dotted[-1][:-3]
    return dotted[:-1]


def imported_names(tree: ast.AST, package: list[str]):
    """Every dotted name a file imports (``from X import y`` yields X.y: y may be a submodule), with its line."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                module = '.'.join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ''
            for alias in node.names:
                yield '%s.%s' % (module, alias.name), node.lineno


def layer_of_import(name: str) -> str | None:
    """The module_utils layer a dotted import name lands in, or None for anything not in module_utils."""
    if not name.startswith(MODULE_UTILS + '.'):
        return None
    first = name[len(MODULE_UTILS) + 1:].split('.')[0]
    if first not in MODULE_UTILS_LAYERS:
        raise AssertionError('import of %s: module_utils.%s belongs to no layer' % (name, first))
    return first


def violations(root: pathlib.Path, known: set[tuple[str, str]] = frozenset()) -> list[str]:
    """Every import under root/plugins that the rule forbids, as 'file:line: layer imports layer (name)'."""
    found = []
    for path in sorted((root / 'plugins').rglob('*.py')):
        relative = path.relative_to(root)
        importer = layer_of_file(relative)
        tree = ast.parse(path.read_text(encoding='utf-8'), filename=str(path))
        for name, line in imported_names(tree, package_of_file(relative)):
            imported = layer_of_import(name)
            if imported is None or imported == importer or imported in ALLOWED[importer]:
                continue
            if (importer, imported) in known:
                continue
            found.append('%s:%d: %s imports %s (%s)' % (relative, line, importer, imported, name))
    return found


def test_the_collection_keeps_the_import_rule():
    assert violations(COLLECTION, KNOWN_EXCEPTIONS) == []


def test_known_exceptions_are_still_needed():
    # An exception that no import needs any more must go, so the rule does not stay loosened.
    for pair in KNOWN_EXCEPTIONS:
        assert any(' %s imports %s ' % pair in found for found in violations(COLLECTION)), pair


def test_the_checker_sees_the_real_imports():
    # A checker that finds no imports at all would pass the rule trivially.
    tree = ast.parse((COLLECTION / 'plugins' / 'modules' / 'delta_export.py').read_text(encoding='utf-8'))
    layers = {layer_of_import(name) for name, _line in imported_names(tree, package_of_file(pathlib.PurePath('plugins/modules/delta_export.py')))}
    assert {'_ops', 'module_runner'} <= layers


def write(root: pathlib.Path, relative: str, text: str) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding='utf-8')


@pytest.mark.parametrize('relative, text, expected', [
    ('plugins/module_utils/_vhd/bad.py', 'from %s._repo.store import open_repository\n' % MODULE_UTILS,
     'plugins/module_utils/_vhd/bad.py:1: _vhd imports _repo'),
    ('plugins/module_utils/_vhd/bad.py', 'from .._repo import store\n', 'plugins/module_utils/_vhd/bad.py:1: _vhd imports _repo'),
    ('plugins/module_utils/_xapi/bad.py', 'import %s._ops.pool\n' % MODULE_UTILS, 'plugins/module_utils/_xapi/bad.py:1: _xapi imports _ops'),
    ('plugins/module_utils/_errors.py', 'def late():\n    from %s._vhd import VhdError\n' % MODULE_UTILS,
     'plugins/module_utils/_errors.py:2: _errors imports _vhd'),
    ('plugins/module_utils/_storage/local.py', 'from %s import _repo\n' % MODULE_UTILS,
     'plugins/module_utils/_storage/local.py:1: _storage imports _repo'),
    ('plugins/modules/bad.py', 'from %s._repo.store import job_id_for\n' % MODULE_UTILS, 'plugins/modules/bad.py:1: modules imports _repo'),
    ('plugins/modules/bad.py', 'from %s._xapi.session import NULL_REF\n' % MODULE_UTILS, 'plugins/modules/bad.py:1: modules imports _xapi'),
])
def test_the_checker_reports_a_synthetic_violation(tmp_path, relative, text, expected):
    write(tmp_path, 'plugins/modules/good.py', 'from %s._ops.export import export_vm\nfrom %s import module_runner\n' % (MODULE_UTILS, MODULE_UTILS))
    write(tmp_path, 'plugins/module_utils/_ops/good.py', 'from %s._repo.store import open_repository\nfrom .._xapi import session\n' % MODULE_UTILS)
    assert violations(tmp_path) == []
    write(tmp_path, relative, text)
    found = violations(tmp_path)
    assert len(found) == 1 and found[0].startswith(expected), found
    assert violations(tmp_path, known={tuple(expected.split(': ', 1)[1].split(' imports '))}) == []


def test_a_file_outside_every_layer_is_reported(tmp_path):
    write(tmp_path, 'plugins/module_utils/helpers.py', '')
    with pytest.raises(AssertionError, match='belongs to no layer'):
        violations(tmp_path)
