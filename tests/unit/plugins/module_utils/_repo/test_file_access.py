# -*- coding: utf-8 -*-
# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

"""The VHD engine, repository and operation layers touch files only through a Storage (plugins/module_utils/_storage)."""

from __future__ import annotations

import ast
import pathlib

import pytest

MODULE_UTILS = pathlib.Path(__file__).resolve().parents[5] / 'plugins' / 'module_utils'
SCANNED = ('_vhd', '_repo', '_ops')
# os functions that are not file access (process identity and liveness, CPU count).
OS_ALLOWED = {'getpid', 'kill', 'cpu_count', 'environ', 'getenv'}
FILE_MODULES = {'shutil', 'pathlib', 'io', 'tempfile', 'glob'}
# (file, function, call): the local folders a user names are compared before any storage exists; the VHD
# engine's path-taking forms turn a local path into a LocalStorage and a name (path arithmetic, no access).
ALLOWED = {
    ('_repo/store.py', 'same_local_folder', 'os.path.realpath'),
    ('_vhd/check.py', 'check_file', 'os.fspath'),
    ('_vhd/disk.py', 'parent_location', 'os.path.join'),
    ('_vhd/writer.py', 'for_parent_file', 'os.path.relpath'),
    ('_vhd/writer.py', 'for_parent_file', 'os.path.abspath'),
    ('_vhd/writer.py', 'for_parent_file', 'os.path.dirname'),
}


def dotted(node) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return '.'.join(reversed(parts))
    return ''


def file_access(source: str) -> list[tuple[int, str, str]]:
    """(line, enclosing function, what) of every direct file access in ``source``."""
    found = []
    tree = ast.parse(source)
    # A call on a file module counts only where the file imports it (a local variable may share the name).
    imported = {alias.asname or alias.name.split('.', maxsplit=1)[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}

    def visit(node, function):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            function = node.name
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else [node.module or '']
            found.extend((node.lineno, function, 'import %s' % name) for name in names if name.split('.', maxsplit=1)[0] in FILE_MODULES)
            if isinstance(node, ast.ImportFrom) and node.module == 'os':
                found.append((node.lineno, function, 'from os import ...'))
        if isinstance(node, ast.Call):
            name = dotted(node.func)
            if name == 'open':
                found.append((node.lineno, function, name))
            elif name.startswith('os.path.') or (name.startswith('os.') and name.split('.')[1] not in OS_ALLOWED):
                found.append((node.lineno, function, name))
            elif name.split('.', maxsplit=1)[0] in FILE_MODULES and name.split('.', maxsplit=1)[0] in imported:
                found.append((node.lineno, function, name))
        for child in ast.iter_child_nodes(node):
            visit(child, function)

    visit(tree, '<module>')
    return found


def test_the_scan_finds_every_kind_of_direct_file_access():
    source = ('import shutil\nimport os\nfrom os import path\n'
              'def f(p, io):\n    open(p)\n    os.unlink(p)\n    os.path.join(p, "x")\n    shutil.rmtree(p)\n    os.getpid()\n    io.unlink(p)\n')
    assert [(line, what) for line, _function, what in file_access(source)] == [
        (1, 'import shutil'), (3, 'from os import ...'), (5, 'open'), (6, 'os.unlink'), (7, 'os.path.join'), (8, 'shutil.rmtree')]


@pytest.mark.parametrize('path', sorted(str(path.relative_to(MODULE_UTILS)) for layer in SCANNED for path in (MODULE_UTILS / layer).glob('*.py')))
def test_no_file_access_outside_the_storage(path):
    problems = ['%s:%d in %s: %s' % (path, line, function, what) for line, function, what in file_access((MODULE_UTILS / path).read_text())
                if (path, function, what) not in ALLOWED]
    assert not problems, 'file access must go through the repository storage (Storage): %s' % '; '.join(problems)


def test_the_scanned_layers_exist():
    assert all((MODULE_UTILS / layer / '__init__.py').is_file() for layer in SCANNED)
