"""
BehaviorTree.CPP for the tests: built once from the pinned source, cached under .cache/btcpp.

:func:`skill_runner` returns the path of ``test/btcpp/skill_runner.cpp`` compiled against
BehaviorTree.CPP 4.8.2. The source is the sdist of behaviortreepy 0.1.4 (it vendors
BehaviorTree.CPP), which ``make btcpp-source`` downloads with the hash pinned in
requirements-btcpp.txt; nothing is downloaded here. The library is built (no tools, examples,
tests, Groot2 or SQLite) into ``.cache/btcpp/prefix-<hash>`` the first time, about two
minutes on two cores; later runs reuse it, and the runner is rebuilt only when its source
changes.
"""

import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import tarfile
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE = os.path.join(ROOT, '.cache', 'btcpp')
REQUIREMENTS = os.path.join(ROOT, 'requirements-btcpp.txt')
RUNNER_SOURCE = os.path.join(ROOT, 'test', 'btcpp', 'skill_runner.cpp')
# The library alone; build type None: no optimization flags, the quickest build.
CMAKE_OPTIONS = ['-DBTCPP_SHARED_LIBS=ON', '-DBTCPP_BUILD_TOOLS=OFF', '-DBTCPP_EXAMPLES=OFF',
                 '-DBUILD_TESTING=OFF', '-DBTCPP_GROOT_INTERFACE=OFF',
                 '-DBTCPP_SQLITE_LOGGING=OFF', '-DCMAKE_BUILD_TYPE=None']


def _pinned():
    """Return (sdist file name, sha256) from requirements-btcpp.txt."""
    with open(REQUIREMENTS, encoding='utf-8') as stream:
        text = stream.read()
    match = re.search(r'^(\S+)==(\S+) --hash=sha256:([0-9a-f]{64})$', text, re.M)
    assert match, 'requirements-btcpp.txt must pin name==version --hash=sha256:...'
    return '%s-%s.tar.gz' % (match.group(1), match.group(2)), match.group(3)


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, 'rb') as stream:
        for block in iter(lambda: stream.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()


def _run(command, log, **kwargs):
    with open(log, 'a', encoding='utf-8') as out:
        out.write('$ %s\n' % ' '.join(command))
        out.flush()
        result = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, **kwargs)
    if result.returncode != 0:
        with open(log, encoding='utf-8', errors='replace') as stream:
            tail = stream.read()[-4000:]
        pytest.fail('%s failed (exit %d); log %s:\n%s' % (command[0], result.returncode, log,
                                                          tail))


def _extract(sdist, directory):
    """Extract the vendored BehaviorTree.CPP tree of the sdist into ``directory``."""
    with tarfile.open(sdist) as archive:
        members = [m for m in archive.getmembers() if '/BehaviorTree.CPP/' in m.name + '/']
        if not members:
            pytest.fail('%s has no BehaviorTree.CPP directory' % sdist)
        if hasattr(tarfile, 'data_filter'):
            archive.extractall(directory, members, filter='data')
        else:  # pragma: no cover - Pythons without extraction filters
            archive.extractall(directory, members)
    top = os.path.commonpath([m.name for m in members]).split('/BehaviorTree.CPP')[0]
    return os.path.join(directory, top, 'BehaviorTree.CPP')


def _library(sdist, digest):
    """Return the install prefix of BehaviorTree.CPP, building it unless it is cached."""
    prefix = os.path.join(CACHE, 'prefix-%s' % digest[:12])
    if os.path.exists(os.path.join(prefix, '.built')):
        return prefix
    work = os.path.join(CACHE, 'work-%s' % digest[:12])
    shutil.rmtree(work, ignore_errors=True)
    shutil.rmtree(prefix, ignore_errors=True)
    os.makedirs(work)
    log = os.path.join(CACHE, 'build-%s.log' % digest[:12])
    started = time.monotonic()
    source = _extract(sdist, work)
    build = os.path.join(work, 'build')
    _run(['cmake', '-S', source, '-B', build, '-DCMAKE_INSTALL_PREFIX=' + prefix]
         + CMAKE_OPTIONS, log)
    _run(['cmake', '--build', build, '--parallel', str(os.cpu_count() or 1)], log)
    _run(['cmake', '--install', build], log)
    with open(os.path.join(prefix, '.built'), 'w', encoding='utf-8') as stream:
        stream.write('built in %.0f s\n' % (time.monotonic() - started))
    shutil.rmtree(work, ignore_errors=True)
    return prefix


def skill_runner():
    """Return the path of test/btcpp/skill_runner.cpp compiled (see the module docstring)."""
    missing = [tool for tool in ('c++', 'cmake') if shutil.which(tool) is None]
    if missing:
        pytest.skip('no %s on this machine: BehaviorTree.CPP cannot be built here'
                    % ' or '.join(missing))
    name, digest = _pinned()
    sdist = os.path.join(CACHE, name)
    if not os.path.exists(sdist):
        pytest.fail('%s is missing: run `make btcpp-source` (or `make test`), which downloads '
                    'the pinned BehaviorTree.CPP source' % sdist)
    if _sha256(sdist) != digest:
        pytest.fail('%s does not have the sha256 pinned in requirements-btcpp.txt' % sdist)
    os.makedirs(CACHE, exist_ok=True)
    with open(os.path.join(CACHE, '.lock'), 'w') as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build at a time, whoever runs the tests
        prefix = _library(sdist, digest)
        with open(RUNNER_SOURCE, 'rb') as stream:
            key = hashlib.sha256(stream.read() + prefix.encode()).hexdigest()[:12]
        runner = os.path.join(CACHE, 'skill_runner-%s' % key)
        if not os.path.exists(runner):
            lib = os.path.join(prefix, 'lib')
            _run(['c++', '-std=c++17', '-I', os.path.join(prefix, 'include'), RUNNER_SOURCE,
                  '-o', runner + '.tmp', '-L', lib, '-lbehaviortree_cpp',
                  '-Wl,-rpath,' + lib], os.path.join(CACHE, 'skill_runner.log'))
            os.replace(runner + '.tmp', runner)
    return runner
