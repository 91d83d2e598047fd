# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Report the line and branch coverage of plugins/ from the data `ansible-test units --coverage` wrote.

Run from the collection root. `ansible-test coverage report` would do, but it maps recorded paths back
to the collection by the first ``/ansible_collections/<namespace>/<name>/`` in them, and a checkout that
itself sits under such a path (as the layout under .build/ then does twice) gets every path wrong. This
reads the same data files with the same coverage version. Every Python file of plugins/ is reported,
those no unit test imported (the modules, which run in ansible-playbook subprocesses) at 0%.
The last line is the total, as ``coverage of plugins/ by the unit suites: NN%``.
"""

from __future__ import annotations

import argparse
import glob
import os
import sys

import coverage


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--data', default='tests/output/coverage', help='folder of the data files ansible-test wrote')
    parser.add_argument('--combined', required=True, help='where to write the combined data file')
    options = parser.parse_args()

    data_files = sorted(glob.glob(os.path.join(options.data, '*=coverage.*')))
    if not data_files:
        print('no coverage data in %s: run `make units` first' % options.data, file=sys.stderr)
        return 1
    if os.path.exists(options.combined):
        os.remove(options.combined)
    measured = coverage.Coverage(data_file=options.combined, branch=True)
    measured.combine(data_files, keep=True)
    plugin_files = sorted(os.path.abspath(path) for path in glob.glob('plugins/**/*.py', recursive=True))
    measured.get_data().touch_files(plugin_files)
    measured.save()
    total = measured.report(include=['plugins/*'], skip_empty=False, show_missing=False)
    print('coverage of plugins/ by the unit suites: %.0f%%' % total)
    return 0


if __name__ == '__main__':
    sys.exit(main())
