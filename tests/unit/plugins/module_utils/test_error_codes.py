# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""One exception root, one documented error_code per kind of failure, one exit path for module bodies."""

from __future__ import annotations

import ast
import importlib
import inspect
import pathlib
import re

import pytest

from ansible_collections.xapi.delta_backup.plugins.module_utils import module_runner
from ansible_collections.xapi.delta_backup.plugins.module_utils._errors import DeltaBackupError
from ansible_collections.xapi.delta_backup.plugins.module_utils._xapi.errors import TaskTimeoutError, VmNotFoundError, XapiError

COLLECTION = pathlib.Path(__file__).resolve().parents[4]
MODULE_UTILS = COLLECTION / 'plugins' / 'module_utils'
PACKAGE = 'ansible_collections.xapi.delta_backup.plugins.module_utils'
ERROR_CODE = re.compile(r'^[a-z][a-z_]*[a-z]$')


def module_utils_modules():
    for path in sorted(MODULE_UTILS.rglob('*.py')):
        relative = path.relative_to(MODULE_UTILS).with_suffix('')
        parts = [part for part in relative.parts if part != '__init__']
        yield importlib.import_module('.'.join([PACKAGE] + parts))


def exception_classes():
    found = {}
    for module in module_utils_modules():
        for _name, value in inspect.getmembers(module, inspect.isclass):
            if issubclass(value, BaseException) and value.__module__ == module.__name__:
                found['%s.%s' % (value.__module__, value.__qualname__)] = value
    return found


def error_codes_given_in_modules() -> set[str]:
    """error_code='...' keywords in the modules (a ModuleFailure of another kind than invalid_input)."""
    codes = set()
    for path in (COLLECTION / 'plugins' / 'modules').glob('*.py'):
        for node in ast.walk(ast.parse(path.read_text(encoding='utf-8'))):
            if isinstance(node, ast.keyword) and node.arg == 'error_code' and isinstance(node.value, ast.Constant):
                codes.add(node.value.value)
    return codes


def all_error_codes() -> set[str]:
    codes = {cls.error_code for cls in exception_classes().values()}
    codes |= {module_runner.OS_ERROR_CODE, module_runner.UNEXPECTED_ERROR_CODE, module_runner.INVALID_OPTION_CODE}
    return codes | error_codes_given_in_modules()


def documented_error_codes() -> set[str]:
    text = (COLLECTION / 'docs' / 'errors.md').read_text(encoding='utf-8')
    return set(re.findall(r'^\| `([a-z_]+)` \|', text, re.MULTILINE))


def test_every_exception_of_the_collection_derives_from_the_root():
    classes = exception_classes()
    assert len(classes) >= 20, sorted(classes)  # the scan found the collection's exceptions
    outside = sorted(name for name, cls in classes.items() if not issubclass(cls, DeltaBackupError))
    assert outside == []


def test_error_codes_are_stable_lowercase_names():
    for name, cls in exception_classes().items():
        assert ERROR_CODE.match(cls.error_code), (name, cls.error_code)
    assert ERROR_CODE.match(module_runner.OS_ERROR_CODE) and ERROR_CODE.match(module_runner.UNEXPECTED_ERROR_CODE)


def test_each_kind_of_error_has_its_own_code():
    by_code = {}
    for name, cls in exception_classes().items():
        by_code.setdefault(cls.error_code, []).append(name)
    shared = {code: sorted(names) for code, names in by_code.items() if len(names) > 1}
    assert shared == {}


def test_docs_list_every_error_code_and_no_other():
    assert documented_error_codes() == all_error_codes()


def test_failure_result_of_an_error_of_ours():
    result = module_runner.failure_result(VmNotFoundError("no VM named or with uuid 'x' exists in the pool", ['x']))
    assert result == {'msg': "no VM named or with uuid 'x' exists in the pool", 'error_code': 'vm_not_found'}


def test_failure_result_of_a_xapi_error_carries_what_xapi_returned():
    result = module_runner.failure_result(XapiError('VDI.destroy failed', 'VDI_IN_USE', ['OpaqueRef:1', 'destroy']))
    assert result['error_code'] == 'xapi_error' and result['xapi_error'] == {'code': 'VDI_IN_USE', 'params': ['OpaqueRef:1', 'destroy']}


def test_failure_result_of_a_module_failure_keeps_its_details_and_code():
    failure = module_runner.ModuleFailure('2 problem(s) found', error_code='integrity_check_failed', problems=['a', 'b'])
    assert module_runner.failure_result(failure) == {'msg': '2 problem(s) found', 'error_code': 'integrity_check_failed',
                                                     'problems': ['a', 'b']}
    assert module_runner.failure_result(module_runner.ModuleFailure('bad'))['error_code'] == 'invalid_input'


def test_failure_result_of_an_os_error_names_the_file():
    result = module_runner.failure_result(PermissionError(13, 'Permission denied', '/backups/xo-vm-backups'))
    assert result == {'msg': 'Permission denied: /backups/xo-vm-backups', 'error_code': 'os_error'}


def test_an_unexpected_exception_still_leaves_with_an_error_code():
    class Module:
        def __init__(self):
            self.failed = None

        def fail_json(self, **kwargs):
            self.failed = kwargs
            raise SystemExit(1)

        def exit_json(self, **kwargs):
            raise AssertionError('exit_json after a failure: %r' % kwargs)

    def body(_module):
        raise ValueError('a chain needs at least one VHD file')

    module = Module()
    with pytest.raises(SystemExit):
        module_runner.run(module, body)
    assert module.failed['error_code'] == 'unexpected_error'
    assert 'unexpected ValueError: a chain needs at least one VHD file' in module.failed['msg'] and 'report it' in module.failed['msg']
    assert 'Traceback' in module.failed['exception']


@pytest.mark.parametrize('error', [
    XapiError('VDI.destroy failed', 'VDI_IN_USE', ['OpaqueRef:1']),
    TaskTimeoutError('VM.start did not finish within 1 seconds', 'OpaqueRef:task'),
    VmNotFoundError("no VM named 'x'", ['x']),
])
def test_a_reworded_xapi_error_keeps_its_class_and_details(error):
    reworded = error.reworded('restore failed: %s' % error.message)
    assert type(reworded) is type(error) and reworded.__dict__ == dict(error.__dict__, message='restore failed: %s' % error.message)
    assert str(reworded) == 'restore failed: %s' % error.message and reworded.error_code == error.error_code
    assert module_runner.failure_result(reworded)['msg'] == 'restore failed: %s' % error.message
