# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""`make demo`: a whole backup lifecycle, run by the collection's own playbooks against the bundled XAPI simulator.

Steps: start the simulator with demo/pool.yml (or the pool given with --pool, on the XAPI version given with
--xapi-profile: XCP-ng 8.2 LTS, 8.3 or XenServer 8, as the simulator's profiles describe them); a full backup of
the demo VMs (a [NOBAK] disk left out, a VM tagged xo:no-bak skipped); guest writes and three delta backups, the
last one applying retention (the oldest point is merged into the full); a seed of a far repository (verified copy,
then a delta there); a restore of an earlier point to another SR; a health check; a verification of both
repositories. Every restored disk is compared byte for byte (sha256 from the simulator) with the source disk as it
was at that point. The hash of each snapshot VDI is recorded right after its backup, because the next run prunes
that snapshot.

Each playbook runs as `ansible-playbook xapi.delta_backup.<name>` with ANSIBLE_COLLECTIONS_PATH set to the laid-out
collection (.build/collections, made by `make layout`). Logs go to .build/demo/logs. Exit code 0 only when every
step and every check passed. The simulator is stopped in every case.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
JOB = 'demo-nightly'
PASSWORD = 'demo-secret'
BACKED_UP = ('web01', 'db01')
MIB = 1024 * 1024
# Guest writes between backups: (disk, offset MiB, length MiB, pattern seed).
WRITES = [
    [('web01-root', 8, 2, 101), ('db01-root', 100, 3, 102)],
    [('web01-root', 8, 1, 111), ('web01-data', 64, 2, 112), ('db01-root', 0, 1, 113)],
    [('web01-root', 300, 2, 121), ('db01-root', 200, 1, 123)],
    [('web01-data', 0, 1, 131), ('web01-root', 0, 1, 132)],
]


class DemoFailure(Exception):
    """A step or a check failed."""


class Demo:
    def __init__(self, args):
        self.args = args
        self.work = os.path.abspath(args.work_dir)
        self.logs = os.path.join(self.work, 'logs')
        self.near = os.path.join(self.work, 'repo-near')
        self.far = os.path.join(self.work, 'repo-far')
        self.collections = os.path.abspath(args.collections_root)
        self.started = time.monotonic()
        self.sim = None
        self.control = None
        self.env = None
        self.live = {}          # disk name -> live VDI uuid
        self.truth = {}         # (vm name, timestamp) -> {live vdi uuid: sha256 of the snapshot VDI}
        self.lines = []         # the final summary
        self.step_number = 0

    # -- output ----------------------------------------------------------------------------------
    def say(self, text=''):
        print(text, flush=True)

    def step(self, title):
        self.step_number += 1
        self.say('\n[%5.1fs] %d. %s' % (time.monotonic() - self.started, self.step_number, title))

    def check(self, condition, message):
        if not condition:
            raise DemoFailure(message)
        self.say('        ok: ' + message)

    # -- simulator -------------------------------------------------------------------------------
    def pool_file(self) -> str:
        """The pool description the simulator starts with: --pool, with the --xapi-profile applied to it."""
        import yaml  # pylint: disable=import-outside-toplevel
        with open(self.args.pool, encoding='utf-8') as handle:
            pool = yaml.safe_load(handle)
        missing = sorted(set(BACKED_UP) - {vm.get('name') for vm in pool.get('vms') or []})
        if missing:
            raise DemoFailure('the pool file %s lacks the demo VMs %s (start from demo/pool.yml)' % (self.args.pool, ', '.join(missing)))
        if self.args.xapi_profile:
            pool['xapi'] = {'profile': self.args.xapi_profile}
        self.say('pool %s, XAPI profile %s' % (os.path.relpath(self.args.pool, ROOT), (pool.get('xapi') or {}).get('profile', 'default')))
        path = os.path.join(self.work, 'pool.yml')
        with open(path, 'w', encoding='utf-8') as handle:
            yaml.safe_dump(pool, handle)
        return path

    def start_simulator(self):
        sys.path.insert(0, os.path.join(ROOT, 'tests'))
        from xapisim.control import SimulatorControl  # pylint: disable=import-outside-toplevel
        env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, 'tests'))
        log = open(os.path.join(self.logs, 'xapisim.log'), 'w', encoding='utf-8')  # pylint: disable=consider-using-with
        self.sim = subprocess.Popen(  # pylint: disable=consider-using-with
            [sys.executable, '-m', 'xapisim', '--config', self.pool_file(), '--port', '0', '--slave-port', '-1',
             '--data-dir', os.path.join(self.work, 'sim-data'), '--cert-dir', os.path.join(self.work, 'sim-tls'),
             '--parent-pid', str(os.getpid())],
            stdout=subprocess.PIPE, stderr=log, text=True, env=env)
        info = {}
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            line = self.sim.stdout.readline()
            if not line:
                raise DemoFailure('the simulator exited early (see %s)' % log.name)
            words = line.split()
            if len(words) >= 3 and words[0] == 'XAPISIM':
                info[words[1]] = words[2]
                if words[1] == 'READY':
                    break
        if 'READY' not in info:
            raise DemoFailure('the simulator did not start in 20 s')
        threading.Thread(target=self.sim.stdout.read, daemon=True).start()
        self.control = SimulatorControl(info['READY'], cafile=info.get('CA'))
        # The connection exactly as an AWX credential of awx/credential_type.yml would inject it.
        self.env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=self.collections, ANSIBLE_COLLECTIONS_SCAN_SYS_PATH='false',
                        ANSIBLE_LOCALHOST_WARNING='false', ANSIBLE_INVENTORY_UNPARSED_WARNING='false', ANSIBLE_NOCOLOR='1',
                        ANSIBLE_RETRY_FILES_ENABLED='false', ANSIBLE_SHOW_CUSTOM_STATS='true', ANSIBLE_PIPELINING='true',
                        XENSERVER_HOST=info['READY'], XENSERVER_USER='root', XENSERVER_PASSWORD=PASSWORD,
                        XENSERVER_VALIDATE_CERTS='true', XENSERVER_CA_PATH=info['CA'])
        for vm in ('web01', 'db01', 'app01', 'scratch01'):
            for disk in self.control.record('VM', vm)['VBDs']:
                vbd = self.control.record('VBD', disk)
                if vbd['type'] == 'Disk':
                    vdi = self.control.record('VDI', vbd['VDI'])
                    self.live[vdi['name_label']] = vdi['uuid']
        self.say('        simulator at %s (pool demo-pool: %s)' % (info['READY'], ', '.join(BACKED_UP + ('scratch01',))))

    def stop_simulator(self):
        if self.sim and self.sim.poll() is None:
            self.sim.send_signal(signal.SIGTERM)
            try:
                self.sim.wait(15)
            except subprocess.TimeoutExpired:
                self.sim.kill()
                self.sim.wait()

    # -- ansible ---------------------------------------------------------------------------------
    def playbook(self, name, extra_vars, label):
        """Run `ansible-playbook xapi.delta_backup.<name>`; return its custom stats (set_stats of the roles)."""
        log_path = os.path.join(self.logs, '%02d-%s.log' % (self.step_number, label))
        command = [os.path.join(os.path.dirname(sys.executable), 'ansible-playbook'), 'xapi.delta_backup.%s' % name,
                   '-e', json.dumps(extra_vars)]
        began = time.monotonic()
        completed = subprocess.run(command, env=self.env, cwd=self.work, capture_output=True, text=True, check=False, timeout=600)
        with open(log_path, 'w', encoding='utf-8') as log:
            log.write('$ %s\n\n%s%s' % (' '.join(command), completed.stdout, completed.stderr))
        if completed.returncode != 0:
            tail = '\n'.join((completed.stdout + completed.stderr).splitlines()[-30:])
            raise DemoFailure('ansible-playbook xapi.delta_backup.%s failed (rc %d), log %s:\n%s' % (name, completed.returncode, log_path, tail))
        stats = {}
        for line in completed.stdout.splitlines():
            if line.strip().startswith('RUN:'):
                stats = json.loads(line.strip()[len('RUN:'):])
        self.say('        ansible-playbook xapi.delta_backup.%s: %.1f s (log %s)' % (name, time.monotonic() - began, os.path.relpath(log_path, ROOT)))
        return stats

    def backup(self, label, repositories, retention=0, vms=None):
        extra = {'backup_job': JOB, 'backup_repositories': repositories, 'backup_retention': retention}
        extra.update({'backup_vms': vms} if vms else {'backup_tags': ['demo']})
        results = self.playbook('backup', extra, label)['xapi_delta_backup_backup']['results']
        self.record_truth(results)
        for result in results:
            self.say('        %-6s %-5s %9s in %4.1f s  %s' % (
                result['vm'], result['mode'], human(result['size']), result['duration'], result['reason']))
        return {result['vm']: result for result in results}

    def record_truth(self, results):
        """Hash each exported snapshot VDI now: the next backup prunes that snapshot."""
        for result in results:
            self.truth[(result['vm'], result['timestamp'])] = {
                disk['vdi_uuid']: self.control.vdi_sha256(disk['snapshot_vdi_uuid']) for disk in result['disks']}

    def guest_writes(self, round_number):
        for disk, offset, length, seed in WRITES[round_number]:
            self.control.write_vdi(self.live[disk], offset * MIB, length=length * MIB, seed=seed)
        self.say('        guest writes: ' + ', '.join('%s %d MiB at %d MiB' % (d, n, o) for d, o, n, _s in WRITES[round_number]))

    def compare_restored(self, vm, timestamp, restored):
        """Every restored disk hashes like the source disk at that point."""
        truth = self.truth[(vm, timestamp)]
        for disk in restored['disks']:
            actual = self.control.vdi_sha256(disk['vdi_uuid'])
            self.check(actual == truth.get(disk['source_vdi_uuid']),
                       '%s restored from %s is byte for byte the disk at %s (sha256 %s...)' % (disk['name_label'], vm, timestamp, actual[:16]))
        self.check(len(restored['disks']) == len(truth), '%s: %d disk(s) restored, as backed up' % (vm, len(truth)))

    # -- the lifecycle ---------------------------------------------------------------------------
    def run(self):
        self.step('Start the XAPI simulator with the demo pool')
        self.start_simulator()

        self.step('Full backup of the VMs tagged "demo" to the near repository')
        first = self.backup('full', [self.near])
        self.check(sorted(first) == sorted(BACKED_UP), 'backed up %s; scratch01 (tagged xo:no-bak) skipped, app01 not tagged demo'
                   % ', '.join(sorted(first)))
        self.check(all(r['mode'] == 'full' for r in first.values()), 'every first backup is a full')
        db_disks = [d['name_label'] for d in first['db01']['disks']]
        self.check(db_disks == ['db01-root'], 'db01: only db01-root exported, "db01-scratch [NOBAK]" left out')
        points = {'full': first}
        self.lines.append('full     %s' % ', '.join('%s %s' % (vm, human(r['size'])) for vm, r in sorted(first.items())))

        for number in range(1, 4):
            retention = 3 if number == 3 else 0
            self.step('Guest writes, then delta backup %d%s' % (number, ' with retention 3 (merge the oldest point)' if retention else ''))
            self.guest_writes(number - 1)
            result = self.backup('delta%d' % number, [self.near], retention=retention)
            self.check(all(r['mode'] == 'delta' for r in result.values()), 'every VM exported a delta')
            points['delta%d' % number] = result
            self.lines.append('delta %d  %s' % (number, ', '.join('%s %s' % (vm, human(r['size'])) for vm, r in sorted(result.items()))))
            if retention:
                removed = sum(r['removed_points'] for r in result.values())
                self.check(removed == len(BACKED_UP), 'retention: the oldest point of each VM merged into its full (%d removed)' % removed)
                self.lines.append('merge    oldest point retired: each full absorbed delta 1; 3 points kept per VM')

        self.step('Seed the far repository: backup to near, verified copy to far, then a delta to far')
        self.guest_writes(3)
        seed = self.playbook('seed', {'seed_job': JOB, 'seed_vms': ['web01', 'db01'], 'seed_near_repository': self.near,
                                      'seed_far_repository': self.far}, 'seed')['xapi_delta_backup_seed']
        # The near point's snapshot is already pruned (the far backup took the next one): only the far points are checked.
        self.record_truth(seed['far'])
        self.check(seed['copy']['copied_points'] > 0, 'seed_copy: %d backup(s), %s copied and verified' % (
            seed['copy']['copied_points'], human(seed['copy']['bytes_copied'])))
        self.check(all(r['mode'] == 'delta' for r in seed['far']), 'the first backup to the far repository is a delta: ' +
                   '; '.join('%s %s' % (r['vm'], r['reason']) for r in seed['far']))
        self.lines.append('seed     %d file(s) copied to far, then %s' % (seed['copy']['copied_files'], ', '.join(
            '%s %s %s' % (r['vm'], r['mode'], human(r['size'])) for r in seed['far'])))

        earlier = points['delta2']['web01']['timestamp']
        self.step('Restore web01 as it was at delta 2 (%s) from the near repository, to another SR, and start it' % earlier)
        restored = self.playbook('restore', {'restore_repository': self.near, 'restore_vm': 'web01', 'restore_job': JOB,
                                             'restore_point': earlier, 'restore_sr': 'Restore SR', 'restore_name': 'web01 (restored)',
                                             'restore_start': True}, 'restore')['xapi_delta_backup_restore']
        self.check(restored['backup']['timestamp'] == earlier, 'the point restored is %s' % earlier)
        self.check(self.control.record('VM', restored['vm']['uuid'])['power_state'] == 'Running', 'the restored VM is running')
        self.compare_restored('web01', earlier, restored)
        self.lines.append('restore  web01 at %s: %d disk(s) identical to the source at that point' % (earlier, len(restored['disks'])))

        latest = seed['far'][[r['vm'] for r in seed['far']].index('db01')]['timestamp']
        self.step('Restore db01 from the far (seeded) repository, latest point (%s)' % latest)
        restored_db = self.playbook('restore', {'restore_repository': self.far, 'restore_vm': 'db01', 'restore_job': JOB,
                                                'restore_name': 'db01 (restored from far)'}, 'restore-far')['xapi_delta_backup_restore']
        self.compare_restored('db01', latest, restored_db)
        self.lines.append('restore  db01 latest from far: %d disk(s) identical, [NOBAK] disk not restored' % len(restored_db['disks']))

        self.step('Health check of the far repository: newest backup of each VM to a temporary VM, started, then destroyed')
        vms_before = self.control.info()['counts']['VM']
        health = self.playbook('health_check', {'health_check_repository': self.far, 'health_check_vms': list(BACKED_UP),
                                                'health_check_job': JOB}, 'health')['xapi_delta_backup_health_check']
        self.check(not health['failed'] and len(health['results']) == len(BACKED_UP), 'every VM restored, started and ran')
        self.check(self.control.info()['counts']['VM'] == vms_before, 'the temporary VMs and their disks are gone')
        self.lines.append('health   %s: restored, running, destroyed' % ', '.join(BACKED_UP))

        self.step('Verify both repositories: every block of every VHD checked against its block checksum, every chain checked')
        verify = self.playbook('verify', {'verify_repositories': [self.near, self.far]}, 'verify')['xapi_delta_backup_verify']
        self.check(not verify['problems'], '%d VHD file(s) verified, no problem' % verify['files_verified'])
        self.lines.append('verify   near and far: %d VHD file(s) re-hashed and checked, no problem' % verify['files_verified'])

        self.check(self.control.session_count() == 0, 'every XAPI session was logged out')


def human(size):
    if size is None:
        return '-'
    for unit in ('B', 'KiB', 'MiB', 'GiB'):
        if size < 1024 or unit == 'GiB':
            return ('%d %s' % (size, unit)) if unit == 'B' else ('%.1f %s' % (size, unit))
        size /= 1024.0
    return str(size)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n', maxsplit=1)[0])
    parser.add_argument('--work-dir', default=os.path.join(ROOT, '.build', 'demo'), help='repositories, simulator data and logs (emptied first)')
    parser.add_argument('--collections-root', default=os.path.join(ROOT, '.build', 'collections'),
                        help='the folder holding ansible_collections/xapi/delta_backup (made by make layout)')
    parser.add_argument('--pool', default=os.path.join(HERE, 'pool.yml'), help='pool description for the simulator (needs the VMs of demo/pool.yml)')
    parser.add_argument('--xapi-profile', default='', help='XAPI version profile of the simulated pool, e.g. xcp-ng-8.2 (default: the pool file\'s)')
    args = parser.parse_args()
    collection = os.path.join(args.collections_root, 'ansible_collections', 'xapi', 'delta_backup')
    if not os.path.isdir(os.path.join(collection, 'playbooks')):
        print('the collection is not laid out under %s: run make layout (make demo does)' % args.collections_root)
        return 2
    shutil.rmtree(args.work_dir, ignore_errors=True)
    os.makedirs(os.path.join(args.work_dir, 'logs'))
    demo = Demo(args)
    print('xapi.delta_backup demo: the whole backup lifecycle on a simulated XCP-ng pool, through the real playbooks')
    status = 0
    try:
        demo.run()
    except Exception as error:  # pylint: disable=broad-except
        # Any failure ends the demo with a message and status 1.
        print('\nDEMO FAILED: %s: %s' % (type(error).__name__, error))
        status = 1
    finally:
        demo.stop_simulator()
    elapsed = time.monotonic() - demo.started
    print('\nSummary (%s job "%s", repositories in %s)' % ('passed' if status == 0 else 'FAILED', JOB, os.path.relpath(demo.work, ROOT)))
    for line in demo.lines:
        print('  ' + line)
    print('  %.0f s in all; simulator stopped%s' % (elapsed, '' if status == 0 else '; logs in %s' % os.path.relpath(demo.logs, ROOT)))
    return status


if __name__ == '__main__':
    sys.exit(main())
